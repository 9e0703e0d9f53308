"""Tokenizers for real checkpoints: HF ``tokenizer.json`` directories and GGUF metadata.

    tok = Tokenizer.from_hf_dir("path/")            # tokenizer.json + tokenizer_config.json
    tok = Tokenizer.from_gguf_meta(meta)            # meta from prefjax.models.gguf.read_gguf
    tok.save_pretrained("out/")    # tokenizer.json + config: transformers.AutoTokenizer loads it
    prompt_ids = tok.encode_prompt([{"role": "user", "content": "Hi"}])
    completion_ids = tok.encode_completion("Hello!")   # ends with the end-of-turn token, once

The prompt/completion protocol is the testbed tokenizer's (``prefjax.testbed.tokenizer``), so
``prefjax.data.collate.pack(prompt_ids, completion_ids, ...)`` works unchanged: the prompt holds
everything the chat template writes before the assistant's text (BOS included, when the template
or the tokenizer adds one); the completion is the assistant's text followed by the template's
end-of-turn token (for templates that close turns with a special token, e.g. ``<|im_end|>``),
or by EOS when there is no template. The text the template writes after the end-of-turn token
(a newline) is not part of the completion: generation stops at end-of-turn.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Sequence

from prefjax.errors import DataError
from prefjax.extras import require

Messages = Sequence[Mapping[str, str]]
_CONTROL, _USER_DEFINED = 3, 4   # llama.cpp token types


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
  """The jinja2 template compiled once (compiling costs ~10 ms, rendering ~1 ms)."""
  jinja2 = require("jinja2", "real", "rendering a chat template")
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
      x, indent=indent, ensure_ascii=ensure_ascii)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template)


def _render(template: str, messages, *, add_generation_prompt: bool, bos_token: str,
            eos_token: str) -> str:
  """The chat template rendered with jinja2 as transformers does (trim_blocks, lstrip_blocks)."""
  return _compiled(template).render(messages=list(messages), bos_token=bos_token,
                                    eos_token=eos_token,
                                    add_generation_prompt=add_generation_prompt)


class Tokenizer:
  """A ``tokenizers.Tokenizer`` plus special ids and the chat template.

  Attributes:
    vocab_size, bos_id, eos_id, pad_id: ids (``pad_id`` falls back to EOS, then 0).
    eot_id: the id that ends an assistant turn (the template's end-of-turn token, else EOS).
    stop_ids: ids at which generation stops.
  """

  def __init__(self, backend, *, bos_token: str | None, eos_token: str | None,
               pad_token: str | None = None, chat_template: str | None = None,
               add_bos: bool = False, source: str = "tokenizer"):
    self.backend = backend
    self.source = source
    self.chat_template = chat_template
    self.add_bos = add_bos
    self.bos_token, self.eos_token = bos_token, eos_token
    tid = backend.token_to_id
    self.bos_id = tid(bos_token) if bos_token else None
    self.eos_id = tid(eos_token) if eos_token else None
    pad = tid(pad_token) if pad_token else None
    self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    self.eot_id = self._find_eot()
    self.stop_ids = tuple(sorted({i for i in (self.eot_id, self.eos_id) if i is not None}))

  # -------------------------------------------------------------------- construction
  @classmethod
  def from_hf_dir(cls, path: str) -> "Tokenizer":
    """From a HF model directory: ``tokenizer.json`` and ``tokenizer_config.json``."""
    Backend = require("tokenizers", "real", "a Hugging Face tokenizer").Tokenizer
    fn = os.path.join(path, "tokenizer.json")
    try:
      backend = Backend.from_file(fn)
    except Exception as e:
      raise DataError(f"{fn}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
    tc = {}
    cfn = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(cfn):
      with open(cfn) as f:
        tc = json.load(f)
    template = tc.get("chat_template")
    tfn = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.exists(tfn):
      with open(tfn) as f:
        template = f.read()

    def tok(v):
      return v.get("content") if isinstance(v, dict) else v
    return cls(backend, bos_token=tok(tc.get("bos_token")), eos_token=tok(tc.get("eos_token")),
               pad_token=tok(tc.get("pad_token")), chat_template=template,
               add_bos=bool(tc.get("add_bos_token", False)), source=path)

  @classmethod
  def from_gguf_meta(cls, meta: Mapping[str, Any], source: str = "gguf") -> "Tokenizer":
    """From llama.cpp tokenizer metadata (``read_gguf``'s third output).

    ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE: GPT-2, SmolLM2, Llama 3, Qwen) is built
    here with ``tokenizers`` alone; sentencepiece-style vocabularies (``"llama"``: Gemma, Llama
    2) go through transformers' GGUF tokenizer converter (``pip install transformers``).
    """
    kind = meta.get("model")
    tokens = meta.get("tokens")
    if not tokens:
      raise DataError(f"{source}: GGUF metadata has no tokenizer.ggml.tokens")
    if kind == "gpt2":
      backend = _byte_level_bpe(meta)
    elif kind in ("llama", "t5"):
      backend = _via_transformers(meta, source)
    else:
      raise DataError(f"{source}: unsupported GGUF tokenizer model {kind!r} (gpt2, llama)")

    def name(key):
      i = meta.get(key)
      return tokens[i] if i is not None and 0 <= i < len(tokens) else None
    return cls(backend, bos_token=name("bos_token_id"), eos_token=name("eos_token_id"),
               pad_token=name("pad_token_id"), chat_template=meta.get("chat_template"),
               add_bos=bool(meta.get("add_bos_token", kind == "llama")), source=source)

  # -------------------------------------------------------------------- saving
  def special_tokens(self) -> dict[str, str]:
    """{"bos_token", "eos_token", "pad_token"} for the tokens that exist."""
    pad = self.backend.id_to_token(self.pad_id) if self.pad_id is not None else None
    out = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": pad}
    return {k: v for k, v in out.items() if v is not None}

  def save_pretrained(self, directory: str, *, model_max_length: int | None = None) -> list[str]:
    """Writes an HF tokenizer directory that ``transformers.AutoTokenizer`` and
    ``Tokenizer.from_hf_dir`` load with the same ids, chat template and special tokens.

    Files: ``tokenizer.json`` (the backend; with ``add_bos`` a post-processor that prepends
    BOS, so ``tokenizer(text)`` adds it as ``encode_prompt`` does), ``tokenizer_config.json``
    (class, special tokens, ``chat_template``, ``add_bos_token``), ``special_tokens_map.json``.
    Files are mode 0644. Returns the paths written.
    """
    require("tokenizers", "real", "saving a Hugging Face tokenizer")
    from tokenizers import Tokenizer as Backend, processors
    os.makedirs(directory, exist_ok=True)
    backend = Backend.from_str(self.backend.to_str())     # a copy: the post-processor is ours
    if self.add_bos and self.bos_id is not None:
      bos = (self.bos_token, self.bos_id)
      backend.post_processor = processors.TemplateProcessing(
          single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos])
    specials = self.special_tokens()
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.add_bos,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, **specials}
    if model_max_length:
      config["model_max_length"] = int(model_max_length)
    if self.chat_template:
      config["chat_template"] = self.chat_template
    paths = [os.path.join(directory, n) for n in
             ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    backend.save(paths[0])
    for path, obj in zip(paths[1:], (config, specials)):
      with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
    for path in paths:
      os.chmod(path, 0o644)
    return paths

  # -------------------------------------------------------------------- text <-> ids
  def encode(self, text: str) -> list[int]:
    """Ids of ``text`` with no BOS/EOS added (special tokens written in the text are kept)."""
    return list(self.backend.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int], stop_at_eos: bool = True,
             skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids]
    if stop_at_eos:
      for j, i in enumerate(ids):
        if i in self.stop_ids:
          ids = ids[:j]
          break
    return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

  def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
    """The chat template applied to ``messages`` (text, not ids)."""
    if not self.chat_template:
      raise DataError(f"{self.source}: the tokenizer has no chat template")
    return _render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                   bos_token=self.bos_token or "", eos_token=self.eos_token or "")

  def _bos(self, ids: list[int]) -> list[int]:
    if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
      return [self.bos_id] + ids
    return ids

  # -------------------------------------------------------------------- the protocol
  def encode_prompt(self, prompt: str | Messages, add_generation_prompt: bool = True) -> list[int]:
    """Everything before the completion: the rendered chat (or BOS + text without a template).

    A string is one user message when the tokenizer has a chat template.
    """
    if not self.chat_template:
      if not isinstance(prompt, str):
        raise DataError(f"{self.source}: chat messages given but the tokenizer has no chat "
                        f"template")
      return self._bos(self.encode(prompt))
    if isinstance(prompt, str):
      prompt = [{"role": "user", "content": prompt}]
    return self._bos(self.encode(self.render(prompt, add_generation_prompt)))

  def encode_completion(self, text: str) -> list[int]:
    """The completion's ids followed by the end-of-turn id exactly once."""
    ids = self.encode(text)
    end = self.eot_id if self.eot_id is not None else self.eos_id
    if end is None:
      raise DataError(f"{self.source}: the tokenizer has neither an end-of-turn nor an EOS token")
    while ids and ids[-1] == end:     # a completion that already ends its turn keeps one
      ids.pop()
    return ids + [end]

  def _find_eot(self):
    """The special token the template writes right after an assistant message, else EOS."""
    if not self.chat_template:
      return self.eos_id
    marker = "\u0000MARK\u0000"
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
    try:
      full = self.render(msgs, add_generation_prompt=False)
    except Exception:
      return self.eos_id
    after = full.split(marker, 1)[-1]
    ids = self.encode(after)
    specials = {i for i in ids if self.backend.id_to_token(i) in self._special_tokens()}
    for i in ids:
      if i in specials:
        return i
    return self.eos_id

  def _special_tokens(self):
    return {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}


def _byte_level_bpe(meta):
  """Byte-level BPE (GPT-2 style) from GGUF tokens/merges, as transformers' GPT2Tokenizer."""
  require("tokenizers", "real", "a GGUF tokenizer")
  from tokenizers import AddedToken, Tokenizer as Backend, decoders, models, pre_tokenizers
  tokens = list(meta["tokens"])
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = [tuple(m.split(" ", 1)) for m in meta.get("merges", [])]
  backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  types = list(meta.get("token_type") or [])
  backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                              for t, ty in zip(tokens, types) if ty == _CONTROL])
  backend.add_tokens([AddedToken(t, special=False, normalized=False)
                      for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
  return backend


def _via_transformers(meta, source):
  """Sentencepiece-style GGUF vocabularies through transformers' converter."""
  convert_gguf_tokenizer = require(
      "transformers.integrations.gguf.gguf_tokenizer_mapping", "real",
      f"{source}: a sentencepiece GGUF tokenizer").convert_gguf_tokenizer
  d = {"tokenizer_type": meta.get("model"), "pre_tokenizer_type": meta.get("pre"),
       "tokens": list(meta["tokens"]), "token_type": list(meta.get("token_type") or [])}
  for k in ("scores", "merges"):
    if meta.get(k) is not None:
      d[k] = list(meta[k])
  if meta.get("add_space_prefix") is not None:
    d["add_prefix_space"] = meta["add_space_prefix"]
  arch = meta.get("architecture", "gemma3" if meta.get("model") == "llama" else "")
  backend, _ = convert_gguf_tokenizer(arch, d)
  return backend
