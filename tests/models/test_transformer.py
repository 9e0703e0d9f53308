"""The model against a plain-numpy transcription, masking, packing and the KV cache."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax.models import init_cache, sequence_logps


def np_forward(params, cfg, tokens, positions, segments):
  """Llama forward pass in float64 numpy, written from the formulas."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)

  def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * w

  def rope(x, pos):
    d = x.shape[-1]
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2) / d)
    ang = pos[..., None] * inv                       # (B, T, D/2)
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  b, t = tokens.shape
  x = p["embed"][tokens]
  allowed = (np.tril(np.ones((t, t), bool))[None] & (segments[:, :, None] == segments[:, None, :])
             & (segments[:, None, :] != 0))
  rep = cfg.n_heads // cfg.n_kv_heads
  for i in range(cfg.n_layers):
    blk = p["blocks"][i]
    h = rms(x, blk["attn_norm"]["scale"])
    q = rope(np.einsum("btd,dhk->bthk", h, blk["attn"]["q"]), positions)
    k = rope(np.einsum("btd,dhk->bthk", h, blk["attn"]["k"]), positions)
    v = np.einsum("btd,dhk->bthk", h, blk["attn"]["v"])
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)   # GQA = shared kv heads
    s = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(cfg.head_dim)
    s = np.where(allowed[:, None], s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    a = np.exp(s)
    a = np.nan_to_num(a / a.sum(-1, keepdims=True))
    o = np.einsum("bhts,bshk->bthk", a, v)
    x = x + np.einsum("bthk,hkd->btd", o, blk["attn"]["o"])
    h = rms(x, blk["mlp_norm"]["scale"])
    g, u = h @ blk["mlp"]["gate"], h @ blk["mlp"]["up"]
    x = x + (g / (1 + np.exp(-g)) * u) @ blk["mlp"]["down"]
  x = rms(x, p["final_norm"]["scale"])
  return x @ p["embed"].T


def _batch(rng, b=3, t=10, vocab=13):
  tokens = rng.integers(3, vocab, (b, t)).astype(np.int32)
  seg = np.ones((b, t), np.int32)
  seg[1, 7:] = 0                       # right padding
  seg[2, 4:] = 2                       # two packed sequences
  pos = np.where(seg[2:3] == 2, np.arange(t) - 4, np.arange(t)) * np.ones((b, 1), np.int64)
  pos[1, 7:] = 0
  return tokens, pos.astype(np.int32), seg


def test_logits_match_numpy_reference(tiny_model, tiny_cfg):
  model, _, params = tiny_model
  tokens, pos, seg = _batch(np.random.default_rng(1))
  got, _ = model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg))
  want = np_forward(params, tiny_cfg, tokens, pos, seg)
  valid = seg != 0
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=2e-5, rtol=1e-4)


def test_sequence_logps_match_numpy(tiny_model, tiny_cfg):
  model, _, params = tiny_model
  tokens, pos, seg = _batch(np.random.default_rng(2))
  targets = np.roll(tokens, -1, axis=1)
  mask = np.zeros_like(tokens)
  mask[:, 3:6] = 1                      # the "completion"
  logps, lengths, _ = sequence_logps(model(tokens, pos, seg)[0], targets, mask)
  lg = np_forward(params, tiny_cfg, tokens, pos, seg)
  lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
  tok = np.take_along_axis(lg, targets[..., None], -1)[..., 0] - lse
  np.testing.assert_allclose(np.asarray(logps), (tok * mask).sum(-1), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(lengths), mask.sum(-1))


def test_prompt_and_padding_logits_do_not_touch_completion_logps():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 8, 5)).astype(np.float32)
  targets = rng.integers(0, 5, (2, 8))
  mask = np.array([[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0, 0]])
  base, _, _ = sequence_logps(logits, targets, mask)
  perturbed = logits.copy()
  perturbed[mask == 0] += rng.normal(size=perturbed[mask == 0].shape).astype(np.float32) * 50
  got, _, _ = sequence_logps(perturbed, targets, mask)
  np.testing.assert_array_equal(np.asarray(base), np.asarray(got))


def test_padding_tokens_do_not_change_the_model_output(tiny_model):
  model, _, _ = tiny_model
  tokens, pos, seg = _batch(np.random.default_rng(4))
  out1, _ = model(tokens, pos, seg)
  tokens2 = tokens.copy()
  tokens2[1, 7:] = 5                    # change the padding ids
  out2, _ = model(tokens2, pos, seg)
  np.testing.assert_array_equal(np.asarray(out1)[1, :7], np.asarray(out2)[1, :7])


def test_packed_sequences_equal_separate_ones(tiny_model):
  model, _, _ = tiny_model
  tokens, pos, seg = _batch(np.random.default_rng(5))
  packed, _ = model(tokens[2:3], pos[2:3], seg[2:3])
  second, _ = model(tokens[2:3, 4:], pos[2:3, 4:], np.ones((1, 6), np.int32))
  np.testing.assert_allclose(np.asarray(packed)[0, 4:], np.asarray(second)[0], atol=1e-5)


def test_kv_cache_decode_equals_full_forward(tiny_model, tiny_cfg):
  model, _, _ = tiny_model
  rng = np.random.default_rng(6)
  tokens = rng.integers(3, 13, (2, 9)).astype(np.int32)
  seg = np.ones((2, 9), np.int32)
  seg[0, :2] = 0                        # left padding, as the sampler does
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
  full, _ = model(tokens, pos, seg)
  cache = init_cache(tiny_cfg, 2, 12)
  pre, cache = model(tokens[:, :5], pos[:, :5], seg[:, :5], cache=cache)
  steps = [pre]
  for i in range(5, 9):
    out, cache = model(tokens[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1], cache=cache)
    steps.append(out)
  got = np.concatenate([np.asarray(s) for s in steps], 1)
  np.testing.assert_allclose(got[seg == 1], np.asarray(full)[seg == 1], atol=1e-5)


def test_params_carry_logical_axes(tiny_model):
  model, _, _ = tiny_model
  state = nnx.state(model, nnx.Param)
  axes = jax.tree.leaves(jax.tree.map(lambda v: v.logical_axes, state,
                                      is_leaf=lambda x: isinstance(x, nnx.Variable)),
                         is_leaf=lambda x: isinstance(x, tuple))
  assert axes and all(isinstance(a, tuple) and a for a in axes)
  assert ("embed", "mlp") in axes and ("vocab", "embed") in axes
