"""A tiny real-format model source and data files for runner tests (CI-sized).

``tiny_hf_model(dir)`` writes what a Hugging Face model directory holds: a random Llama
that ``transformers`` builds and saves (config.json + model.safetensors) and a word-level
``tokenizer.json`` + ``tokenizer_config.json`` with a ChatML template (or none). The data
writers produce the file formats of ``prefjax.data.file_sources``.
"""
import json
import os

import numpy as np

WORDS = ("the a is it yes no good bad answer question please thanks sure sorry help "
         "cannot will do not what why how here there this that one two three four five "
         "six seven eight nine ten").split()
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<s>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(path, chat_template=True):
  from tokenizers import Tokenizer, models, pre_tokenizers, decoders
  vocab = {t: i for i, t in enumerate(SPECIAL + WORDS + ["user", "assistant", "\n"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
  tok.decoder = decoders.WordPiece(prefix="##")
  from tokenizers import AddedToken
  tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
  tok.save(os.path.join(path, "tokenizer.json"))
  cfg = {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>",
         "add_bos_token": False, "tokenizer_class": "PreTrainedTokenizerFast"}
  if chat_template:
    cfg["chat_template"] = CHATML
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f)
  return tok.get_vocab_size()


def tiny_hf_model(path, *, chat_template=True, seed=0):
  """A random 2-layer Llama + tokenizer in ``path``; returns the path."""
  import torch
  import transformers
  os.makedirs(path, exist_ok=True)
  v = _tokenizer(path, chat_template)
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True)
  cfg.pad_token_id = cfg.bos_token_id = cfg.eos_token_id = None
  model = transformers.AutoModelForCausalLM.from_config(cfg)
  model.save_pretrained(path)
  return str(path)


def _sentence(rng, lo=2, hi=6):
  return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))


def write_pairs(path, n=48, seed=0, bad_lines=()):
  """jsonl {prompt, chosen, rejected}; lines in ``bad_lines`` (1-based) are broken."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(1, n + 1):
      if i in bad_lines:
        f.write('{"prompt": "broken", "chosen": \n' if i % 2 else '{"prompt": "x"}\n')
        continue
      f.write(json.dumps({"prompt": _sentence(rng), "chosen": "yes " + _sentence(rng),
                          "rejected": "no " + _sentence(rng)}) + "\n")
  return str(path)


def write_sft(path, n=32, seed=1):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      f.write(json.dumps({"prompt": _sentence(rng), "response": _sentence(rng)}) + "\n")
  return str(path)


def write_groups(path, n=24, k=4, seed=2):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      f.write(json.dumps({"prompt": _sentence(rng),
                          "responses": [_sentence(rng) for _ in range(k)],
                          "scores": [float(s) for s in rng.normal(size=k)]}) + "\n")
  return str(path)


def write_unpaired(path, n=32, seed=3):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"prompt": _sentence(rng), "response": _sentence(rng),
                          "label": i % 2 == 0}) + "\n")
  return str(path)
