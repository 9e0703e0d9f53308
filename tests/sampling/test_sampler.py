"""The KV-cache sampler on a tiny random HF Llama: greedy rows of mixed lengths equal full
forwards and transformers' generate, stop ids end rows, sampler log-probs equal the trainer's
full-forward log-probs, top-k / top-p / temperature draw from the right sets, determinism."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax.models import Transformer, init_cache, make_config
from prefjax.models.logprobs import token_logprobs
from prefjax.sampling.sampler import (_join_prefix, bucket_width, generate, left_pad,
                                      prompt_copies, sample_batch, sample_token,
                                      shared_prefix_len)

V = 64
N = 12
# Mixed lengths, one of a single token: left padding, several prefill row groups and chunks.
PROMPTS = [[5, 17, 40, 3], [9] * 3 + list(range(10, 24)), [33], [7, 8, 9, 10, 11, 12],
           [50, 1, 60, 2, 61, 3, 62, 4, 63, 5, 6]]
# Small prefill tiles so the tests cross tile borders, skip all-padding tiles and start the
# cache with empty slots (widths not a multiple of the chunk).
TILES = [dict(prefill_rows=8, prefill_chunk=32), dict(prefill_rows=1, prefill_chunk=4),
         dict(prefill_rows=3, prefill_chunk=7)]        # 5 rows: the last group overlaps


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  """(transformers model, prefjax graphdef, params): a random 2-layer Llama, GQA 4/2 heads."""
  torch = pytest.importorskip("torch", reason="the reference model needs torch")
  transformers = pytest.importorskip("transformers", reason="the reference model needs "
                                     "transformers")
  from prefjax.models.loading import load_model
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64,
                                 rope_theta=10000.0)
  cfg.pad_token_id = cfg.bos_token_id = cfg.eos_token_id = None
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
  with torch.no_grad():      # norms start at 1: randomise them so a mix-up shows
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  model.eval()
  path = str(tmp_path_factory.mktemp("llama"))
  model.save_pretrained(path)
  _, graphdef, params, _ = load_model(path)
  return model, graphdef, params


def _batch(prompts, pad_id=0):
  tokens, seg = left_pad(prompts, bucket_width(max(map(len, prompts))), pad_id)
  return jnp.asarray(tokens), jnp.asarray(seg)


def _sample(graphdef, params, prompts=PROMPTS, *, seed=0, n=N, temperature=0.0, top_p=1.0,
            top_k=0, stop_ids=(), pad_id=0, **tiles):
  tokens, seg = _batch(prompts, pad_id)
  out = sample_batch(graphdef, params, tokens, seg, jax.random.key(seed), max_new_tokens=n,
                     temperature=temperature, top_p=top_p, top_k=top_k, stop_ids=stop_ids,
                     pad_id=pad_id, **tiles)
  return tuple(np.asarray(x) for x in out)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens_bt, segment_bt):
  logits, _ = nnx.merge(graphdef, params)(tokens_bt, jnp.arange(tokens_bt.shape[1])[None],
                                          segment_bt)
  return logits


def _full_logits(graphdef, params, ids, width=48):
  """Logits [len(ids), V] of one full forward (no cache) over ``ids`` (right-padded to one
  width, so one compile serves every call: a causal row's logits ignore what follows)."""
  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(ids)] = ids
  seg = (np.arange(width) < len(ids)).astype(np.int32)[None]
  return _forward(graphdef, params, jnp.asarray(tokens), jnp.asarray(seg))[0, :len(ids)]


def _full_greedy(graphdef, params, prompt, n=N):
  ids = list(prompt)
  for _ in range(n):
    ids.append(int(jnp.argmax(_full_logits(graphdef, params, ids)[-1])))
  return ids[len(prompt):]


@pytest.fixture(scope="module")
def greedy(llama):
  _, graphdef, params = llama
  return [_full_greedy(graphdef, params, p) for p in PROMPTS]


# ----------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("tiles", TILES, ids=["default", "1x4", "3x7"])
def test_greedy_rows_equal_full_forward_decoding(llama, greedy, tiles):
  _, graphdef, params = llama
  out, logps, stopped = _sample(graphdef, params, **tiles)
  assert out.tolist() == greedy
  assert not stopped.any() and (logps < 0).all()


def test_greedy_equals_transformers_generate(llama, greedy):
  torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
  model, graphdef, params = llama
  ours = generate(graphdef, params, PROMPTS, max_new_tokens=N, rng=jax.random.key(0),
                  temperature=0.0, batch_size=3)        # two batches, the last filled up
  for p, row, want in zip(PROMPTS, ours, greedy):
    with torch.no_grad():
      ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p),
                                                                        dtype=torch.long),
                           max_new_tokens=N, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    assert row == ref[0, len(p):].tolist() == want


def test_per_layer_cache_decodes_like_the_stacked_cache_and_the_scan():
  base = make_config(None, vocab_size=V, overrides=dict(dim=16, n_layers=3, n_heads=4,
                                                       n_kv_heads=2, head_dim=4, mlp_dim=24,
                                                       max_len=32))
  graphdef, state = nnx.split(Transformer(base, nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, V, (2, 9)).astype(np.int32)
  seg = np.ones((2, 9), np.int32)
  seg[0, :3] = 0
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
  full, _ = nnx.merge(graphdef, params)(tokens, pos, seg)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def decode(scan, per_layer, params):
    model = nnx.merge(graphdef, params)
    model.cfg = base.replace(scan_layers=scan)
    cache = init_cache(base, 2, 12, per_layer=per_layer)
    out, cache = model(tokens[:, :5], pos[:, :5], seg[:, :5], cache=cache)
    steps = [out]
    for i in range(5, 9):
      out, cache = model(tokens[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1], cache=cache)
      steps.append(out)
    return jnp.concatenate(steps, 1), cache

  # (the stacked cache without the scan: tests/models/test_transformer.py)
  for scan, per_layer in ((False, True), (True, True), (True, False)):
    got, cache = decode(scan, per_layer, params)
    assert isinstance(cache["k"], tuple) == per_layer
    np.testing.assert_allclose(np.asarray(got)[seg == 1], np.asarray(full)[seg == 1],
                               atol=1e-5)


# ----------------------------------------------------------------------------- shared prefix
HEAD = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
# A shared head, then rests of 1 to 7 tokens; the second prompt twice (k samples of a prompt).
PREFIXED = [HEAD + [30], HEAD + [31, 32, 33], HEAD + [31, 32, 33], HEAD + [40, 41, 42, 43, 44,
                                                                          45, 46],
            HEAD + [50, 51]]


@pytest.fixture(scope="module")
def native():
  """(graphdef, params) of a random prefjax Transformer (no torch needed), GQA 4/2 heads."""
  return _native_model()


def _native_model(**over):
  cfg = make_config(None, vocab_size=V, overrides=dict(
      dim=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, mlp_dim=24, max_len=64, **over))
  graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  return graphdef, nnx.to_pure_dict(state)


def _sample_prefixed(graphdef, params, prompts, prefix_len, width=24, seed=0, **kw):
  tokens, seg = left_pad(prompts, width, 0, prefix_len)
  out = sample_batch(graphdef, params, jnp.asarray(tokens), jnp.asarray(seg),
                     jax.random.key(seed), max_new_tokens=N, prefix_len=prefix_len, **kw)
  return tuple(np.asarray(x) for x in out)


@pytest.mark.parametrize("tiles", TILES, ids=["default", "1x4", "3x7"])
def test_a_shared_prefix_prefilled_once_decodes_like_each_whole_prompt(native, tiles):
  graphdef, params = native
  want = [_full_greedy(graphdef, params, p) for p in PREFIXED]
  plain = _sample_prefixed(graphdef, params, PREFIXED, 0, temperature=0.0, **tiles)
  for prefix in (8, 10):
    out, logps, stopped = _sample_prefixed(graphdef, params, PREFIXED, prefix, temperature=0.0,
                                           **tiles)
    assert out.tolist() == want
    np.testing.assert_allclose(logps, plain[1], atol=2e-5)
  # Drawn (temperature 1): the same tokens from the same rng, the same log-probs.
  a = _sample_prefixed(graphdef, params, PREFIXED, 0, seed=5, temperature=1.0, **tiles)
  b = _sample_prefixed(graphdef, params, PREFIXED, 10, seed=5, temperature=1.0, **tiles)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_allclose(a[1], b[1], atol=2e-5)


@pytest.mark.parametrize("prefix", [0, 8])
def test_copies_of_a_prompt_are_prefilled_once_and_drawn_independently(native, prefix):
  graphdef, params = native
  rows = [p for p in PREFIXED[1:] for _ in range(3)]          # 4 prompts x 3 samples each
  assert prompt_copies(rows) == 3

  def draw(copies, temperature):
    tokens, seg = left_pad(rows, 24, 0, prefix)
    return tuple(np.asarray(x) for x in sample_batch(
        graphdef, params, jnp.asarray(tokens), jnp.asarray(seg), jax.random.key(2),
        max_new_tokens=N, temperature=temperature, prefix_len=prefix, copies=copies,
        prefill_rows=3, prefill_chunk=7))

  greedy = draw(3, 0.0)
  assert greedy[0].tolist() == [_full_greedy(graphdef, params, p) for p in rows]
  a, b = draw(1, 1.0), draw(3, 1.0)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_allclose(a[1], b[1], atol=2e-5)
  assert len({tuple(r) for r in b[0][:3].tolist()}) > 1      # copies draw their own tokens
  with pytest.raises(ValueError, match="copies=5 must divide the batch of 12 rows"):
    draw(5, 1.0)


def test_prompt_copies():
  assert prompt_copies([[1], [1], [2], [2]]) == 2
  assert prompt_copies([[1], [1], [1], [1], [2], [2]]) == 2
  assert prompt_copies([[1], [2], [2]]) == 1
  assert prompt_copies([[1, 2], [1, 2], [1, 2]]) == 3
  assert prompt_copies([[1], [2], [1], [2]]) == 1             # not consecutive
  assert prompt_copies([]) == 1


def test_generate_shares_a_prefix_and_decodes_the_same(native):
  graphdef, params = native
  kw = dict(max_new_tokens=N, rng=jax.random.key(0), temperature=0.0, bucket=4)
  shared = generate(graphdef, params, PREFIXED, **kw)
  assert shared == generate(graphdef, params, PREFIXED, share_prefix=False, **kw)
  assert shared == [_full_greedy(graphdef, params, p) for p in PREFIXED]


def test_a_sliding_window_model_reads_the_prefix_next_to_its_rest():
  """Sliding-window attention counts cache slots, so the padding between a shared prefix and
  a row's rest would move keys out of the window: such a model decodes left-padded rows."""
  graphdef, params = _native_model(sliding_window=6)
  plain = _sample_prefixed(graphdef, params, PREFIXED, 0, temperature=0.0)
  shared = _sample_prefixed(graphdef, params, PREFIXED, 10, temperature=0.0)
  np.testing.assert_array_equal(plain[0], shared[0])
  np.testing.assert_allclose(plain[1], shared[1], atol=2e-5)
  tokens, seg = left_pad(PREFIXED, 20, 0, 10)
  joined = _join_prefix(jnp.asarray(tokens), jnp.asarray(seg), 10, 0)
  want = left_pad(PREFIXED, 20, 0)
  np.testing.assert_array_equal(np.asarray(joined[0]), want[0])
  np.testing.assert_array_equal(np.asarray(joined[1]), want[1])


def test_shared_prefix_len_and_the_prefix_layout():
  assert shared_prefix_len(PREFIXED, 1) == 10
  assert shared_prefix_len(PREFIXED, 4) == 8
  assert shared_prefix_len(PREFIXED, 16) == 0                 # shorter than one multiple
  assert shared_prefix_len([HEAD + [1]], 1) == 0              # one prompt: nothing to share
  assert shared_prefix_len([HEAD, HEAD], 1) == 9              # a prompt keeps >= 1 token
  assert shared_prefix_len([[1, 2, 3], [1, 5, 3]], 1) == 1
  assert shared_prefix_len([[1, 2, 3], [2, 2, 3]], 1) == 0
  tokens, seg = left_pad([[1, 2, 3, 4], [1, 2, 5]], 6, 9, prefix_len=2)
  np.testing.assert_array_equal(tokens, [[1, 2, 9, 9, 3, 4], [1, 2, 9, 9, 9, 5]])
  np.testing.assert_array_equal(seg, [[1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 0, 1]])
  with pytest.raises(ValueError, match="prompt 1 does not start with the shared prefix"):
    left_pad([[1, 2, 3], [1, 4, 3]], 4, 0, prefix_len=2)
  with pytest.raises(ValueError, match="prompt 1 does not start"):
    left_pad([[1, 2, 3], [1, 2]], 4, 0, prefix_len=2)          # nothing after the prefix


def test_rollouts_share_their_pool_prefix():
  from prefjax.rl.rollout import RolloutConfig, _prefix_for, fixed_width
  cfg = fixed_width(PREFIXED, RolloutConfig(max_len=40, max_new_tokens=8, bucket=4))
  assert (cfg.prompt_len, cfg.prefix_len) == (20, 8)
  assert _prefix_for(PREFIXED[:2], cfg) == 8                  # the pool's: one shape
  assert _prefix_for([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]], cfg) == 4     # the batch's own
  off = fixed_width(PREFIXED, RolloutConfig(max_len=40, max_new_tokens=8, bucket=4,
                                            share_prefix=False))
  assert off.prefix_len == 0 and _prefix_for(PREFIXED, off) == 0


# ----------------------------------------------------------------------------- stopping
def test_a_stop_id_ends_its_row_and_is_kept(llama, greedy):
  _, graphdef, params = llama
  stop = greedy[0][3]
  first = greedy[0].index(stop)
  out, logps, stopped = _sample(graphdef, params, stop_ids=(stop,), pad_id=V - 1)
  for row, lp, s, want in zip(out.tolist(), logps, stopped, greedy):
    if stop in want:
      j = want.index(stop)
      assert s and row[:j + 1] == want[:j + 1] and row[j + 1:] == [V - 1] * (N - j - 1)
      assert (lp[:j + 1] < 0).all() and (lp[j + 1:] == 0).all()
    else:
      assert not s and row == want
  assert out[0, first] == stop and first <= 3


def test_any_of_several_stop_ids_ends_a_row(llama, greedy):
  _, graphdef, params = llama
  stops = (greedy[0][3], greedy[1][5])
  out, _, stopped = _sample(graphdef, params, stop_ids=stops)
  assert stopped[0] and stopped[1]
  for row, s, want in zip(out.tolist(), stopped, greedy):
    j = next((i for i, t in enumerate(want) if t in stops), None)
    assert s == (j is not None)
    assert row == (want if j is None else want[:j + 1] + [0] * (N - j - 1))
  # generate: eos_id joins stop_ids; rows are cut after their stop token.
  rows = generate(graphdef, params, PROMPTS, max_new_tokens=N, rng=jax.random.key(0),
                  temperature=0.0, eos_id=stops[0], stop_ids=stops[1:], batch_size=8)
  for row, want in zip(rows, greedy):
    j = next((i for i, t in enumerate(want) if t in stops), None)
    assert row == (want if j is None else want[:j + 1])


def test_rollout_sample_is_the_sampler(llama):
  from prefjax.rl.rollout import sample
  _, graphdef, params = llama
  tokens, seg = _batch(PROMPTS)
  kw = dict(max_new_tokens=N, temperature=1.0, top_p=1.0, pad_id=0)
  got = sample(graphdef, params, tokens, seg, jax.random.key(3), eos_id=4, stop_ids=(9,), **kw)
  want = sample_batch(graphdef, params, tokens, seg, jax.random.key(3), stop_ids=(4, 9),
                      top_k=0, **kw)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (1.0, 5, 0.8),
                                                     (0.7, 0, 0.9)])
def test_sampler_logps_equal_the_full_forward(llama, temperature, top_k, top_p):
  """The trainer's view: one forward over prompt + completion, log softmax at each target."""
  _, graphdef, params = llama
  stop = 7
  out, logps, stopped = _sample(graphdef, params, seed=1, temperature=temperature,
                                top_k=top_k, top_p=top_p, stop_ids=(stop,))
  for p, row, lp, s in zip(PROMPTS, out.tolist(), logps, stopped):
    c = row[:row.index(stop) + 1] if s else row
    ids = p + c
    logits = _full_logits(graphdef, params, ids)[len(p) - 1:len(ids) - 1]         # [C, V]
    want = np.asarray(token_logprobs(logits[None], jnp.asarray([c]))[0])
    np.testing.assert_allclose(lp[:len(c)], want, atol=1e-5, rtol=0)
    assert (lp[len(c):] == 0).all()


# ----------------------------------------------------------------------------- drawing
def _logits(seed=0, b=4, v=V):
  return jnp.asarray(np.random.default_rng(seed).normal(0, 2, (b, v)), jnp.float32)


def test_greedy_settings_take_the_argmax():
  logits = _logits()
  logits = logits.at[0, 3].set(logits[0].max())            # a tie: the first index wins
  want = np.argmax(np.asarray(logits), -1)
  keys = jax.random.split(jax.random.key(0), 3)
  for args in ((0.0, 1.0, 0), (1.0, 1.0, 1), (1.0, 1e-6, 0), (1.0, 0.0, 0), (2.0, 1e-6, 10)):
    got = jax.vmap(lambda k: sample_token(logits, k, *args))(keys)
    np.testing.assert_array_equal(np.asarray(got), np.broadcast_to(want, got.shape),
                                  err_msg=str(args))


def test_top_k_1_rollouts_equal_greedy(llama, greedy):
  _, graphdef, params = llama
  out, _, _ = _sample(graphdef, params, temperature=1.0, top_k=1, seed=5)
  assert out.tolist() == greedy


def _allowed(logits, top_k, top_p):
  """numpy reference: (allowed ids, their renormalised probabilities) after top-k, top-p."""
  v = logits.shape[-1]
  order = np.argsort(-logits, kind="stable")[:top_k or v]
  probs = np.exp(logits[order] - logits.max())
  probs /= np.exp(logits - logits.max()).sum() if not top_k else probs.sum()
  keep = (np.cumsum(probs) - probs) < top_p
  keep[0] = True
  return order[keep], probs[keep] / probs[keep].sum()


@pytest.mark.parametrize("top_k,top_p,v,scale", [
    (5, 1.0, V, 2.0), (5, 0.5, V, 2.0), (0, 0.5, V, 2.0), (0, 1.0, 300, 1.0),
    (200, 1.0, 300, 1.0),                      # several blocks of the inverse-CDF draw
    (0, 0.6, 1000, 3.0),                       # the nucleus within the top candidates
    (0, 0.9, 1000, 0.3)])                      # not: the cut is found by bisection
def test_draws_stay_in_the_allowed_set_with_the_renormalised_frequencies(top_k, top_p, v, scale):
  from prefjax.sampling import sampler
  logits = np.random.default_rng(2).normal(0, scale, v).astype(np.float32)
  logits[::7] = -np.inf                        # never drawn
  allowed, p_allowed = _allowed(logits, top_k, top_p)
  if not top_k and top_p < 1:
    top = np.sort(np.exp(logits - logits.max()))[::-1]
    covered = top[:sampler.NUCLEUS_CANDIDATES].sum() / top.sum() >= top_p
    assert covered == (scale > 1), "each branch of the top-p draw is tested"
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = jax.jit(jax.vmap(lambda k: sample_token(jnp.asarray(logits)[None], k, 1.0, top_p,
                                                 top_k)[0]))
  got = np.asarray(draw(keys))
  assert set(np.unique(got)) <= set(allowed.tolist())
  freq = np.array([(got == t).mean() for t in allowed])
  np.testing.assert_allclose(freq, p_allowed, atol=0.03)


def test_temperature_sharpens_the_draws():
  logits = _logits(seed=3, b=1)
  keys = jax.random.split(jax.random.key(1), 2000)
  top = int(np.argmax(np.asarray(logits)[0]))
  share = lambda t: float(np.mean(np.asarray(jax.vmap(
      lambda k: sample_token(logits, k, t, 1.0)[0])(keys)) == top))
  assert share(0.3) > share(1.0) > share(3.0)


# ----------------------------------------------------------------------------- determinism
def test_deterministic_given_the_rng(llama):
  _, graphdef, params = llama
  kw = dict(temperature=1.0, top_k=20, top_p=0.95)
  a = _sample(graphdef, params, seed=11, **kw)
  b = _sample(graphdef, params, seed=11, **kw)
  c = _sample(graphdef, params, seed=12, **kw)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  # The tiling of the prefill does not change what is drawn.
  d = _sample(graphdef, params, seed=11, prefill_rows=1, prefill_chunk=4, **kw)
  np.testing.assert_array_equal(a[0], d[0])


def test_left_pad_and_bucket_widths():
  tokens, seg = left_pad([[1, 2, 3], [4]], 5, 9)
  np.testing.assert_array_equal(tokens, [[9, 9, 1, 2, 3], [9, 9, 9, 9, 4]])
  np.testing.assert_array_equal(seg, [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
  assert tokens.dtype == seg.dtype == np.int32
  with pytest.raises(ValueError):
    left_pad([[1, 2, 3]], 2, 0)
  assert [bucket_width(n) for n in (1, 16, 17, 100, 128, 129, 348)] == [16, 16, 32, 112, 128,
                                                                        160, 384]
  assert bucket_width(13, 1) == 13
  assert all(n <= bucket_width(n) <= 1.25 * n + 16 for n in range(1, 2000))
