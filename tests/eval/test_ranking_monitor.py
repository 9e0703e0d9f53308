"""Training-time ranking metrics: a tiny SFT -> DPO run logs them to metrics.jsonl.

The logged held-out accuracy at the last step is checked against an independent numpy
computation on log-probs from ``prefjax.eval.completion_scoring.score_completions`` (no buckets).
"""
import json

import numpy as np
import pytest

from prefjax.data import pipeline
from prefjax.eval import pair_scoring
from prefjax.eval.completion_scoring import score_completions
from prefjax.testbed import tokenizer as tb_tokenizer
from prefjax.testbed import world
from prefjax.train import config as config_lib
from prefjax.train.data_source import world_config
from prefjax.train.finished_run import checkpoint_params
from prefjax.train.run import run
from prefjax.train.model_source import build_model


def _tiny():
  c = config_lib.base_config()
  c.stages = ("sft", "dpo")
  c.model.overrides.update(dict(n_layers=1, dim=32, mlp_dim=64, n_heads=2, n_kv_heads=1,
                                head_dim=16))
  c.testbed.n_sft, c.testbed.n_pairs, c.testbed.n_eval_pairs = 64, 64, 16
  c.sft.steps, c.sft.batch_size, c.dpo.steps, c.dpo.batch_size = 2, 8, 4, 8
  c.log_every, c.checkpoint.every, c.ranking.n_train = 1, 2, 16
  c.progress, c.tensorboard = False, False
  return c


def test_ranking_metrics_in_metrics_jsonl(tmp_path):
  c = _tiny()
  run(c, str(tmp_path))
  recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  dpo = {r["step"]: r for r in recs if r["stage"] == "dpo"}
  assert sorted(dpo) == [1, 2, 3, 4]
  scored = [s for s, r in dpo.items() if "ranking/train_accuracy" in r]
  assert scored == [2, 4]  # every = checkpoint interval (config.ranking.every = 0)
  keys = [f"ranking/{s}_{k}" for s in ("train", "heldout")
          for k in ("accuracy", "accuracy_normalized", "ref_accuracy",
                    "flips/wrong_to_right", "flips/right_to_wrong")]
  for k in keys:
    assert 0.0 <= dpo[4][k] <= 1.0, k
  assert not any(k.startswith("ranking/") for k in dpo[3])
  assert dpo[2]["ranking/train_ref_accuracy"] == dpo[4]["ranking/train_ref_accuracy"]

  # Independent check of the last held-out accuracy and flips.
  tok = tb_tokenizer.TestbedTokenizer()
  _, graphdef, _ = build_model(c, tok)
  pol = checkpoint_params(tmp_path / "checkpoints" / "dpo" / "4")
  ref = checkpoint_params(tmp_path / "checkpoints" / "sft" / "2")
  pairs = world.preference_pairs(world_config(c, "testbed"), 16, split="eval")
  prompts = [tok.encode_prompt(p["prompt"]) for p in pairs]
  def correct(params):
    s = {side: score_completions(graphdef, params, prompts,
                                 [tok.encode_completion(p[side]) for p in pairs],
                                 max_len=c.data.max_len)[0] for side in ("chosen", "rejected")}
    return s["chosen"] >= s["rejected"]
  pol_ok, ref_ok = correct(pol), correct(ref)
  assert dpo[4]["ranking/heldout_accuracy"] == pytest.approx(pol_ok.mean())
  assert dpo[4]["ranking/heldout_ref_accuracy"] == pytest.approx(ref_ok.mean())
  if (~ref_ok).any():
    assert dpo[4]["ranking/heldout_flips/wrong_to_right"] == pytest.approx(
        (pol_ok & ~ref_ok).sum() / (~ref_ok).sum())


def test_bucketed_scores_match_one_shape():
  """Length buckets change the padding only: scores equal the single-shape scorer's."""
  c = _tiny()
  tok = tb_tokenizer.TestbedTokenizer()
  _, graphdef, params = build_model(c, tok)
  rng = np.random.default_rng(0)
  prompts = [tok.encode_prompt("sort: " + "1" * int(n)) for n in rng.integers(1, 60, 9)]
  comps = [tok.encode_completion("2" * int(n)) for n in rng.integers(1, 30, 9)]
  got = pair_scoring.score_sequences(graphdef, params, prompts, comps, max_len=128,
                                     batch_size=4, smallest_bucket=16, layout="plain")
  packed = pair_scoring.score_sequences(graphdef, params, prompts, comps, max_len=128,
                                        batch_size=4, smallest_bucket=16)
  np.testing.assert_allclose(packed.sums, got.sums, rtol=1e-5, atol=1e-5)
  want, lengths = score_completions(graphdef, params, prompts, comps, max_len=128)
  assert got.num_shapes >= 2
  np.testing.assert_allclose(got.sums, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(got.lengths, lengths)
  assert pipeline.bucket_lengths(100, 16, per_octave=1) == (16, 32, 64, 100)
