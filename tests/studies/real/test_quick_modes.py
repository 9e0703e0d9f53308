"""Every real-model study's ``--quick`` mode end to end on SmolLM2-135M-Instruct: the five run
in one process (``scripts/study_real.py --study all --quick``), once per test module, and
each test checks one study's results. Slow and alone (tests/conftest.py): ~10 GB RSS."""
import json

import pytest

from prefjax.studies.real import STUDIES
from tests.studies.real.quick import check_outputs, run_quick

pytestmark = [pytest.mark.slow, pytest.mark.alone]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
  root = tmp_path_factory.mktemp("studies")
  r = run_quick(root)
  for name in STUDIES:               # every study printed its claims and where it wrote
    assert f"wrote {root / name}/results" in r.stdout, (name, r.stdout[-2000:])
  return root


def test_every_study_ran_sharing_one_sample_cache(out):
  assert sorted(p.name for p in out.iterdir() if (p / "results.json").exists()) == sorted(
      STUDIES)
  assert (out / "samples" / "samples_seed0.json").exists()
  assert (out / "samples" / "samples_val_seed0.json").exists()


def test_mdpo_writes_accuracy_by_method_and_noise(out):
  doc = check_outputs(out / "mdpo", "mdpo", (
      "method", "noise", "seed", "accuracy", "reference_accuracy", "win_rate", "kl", "length",
      "lr", "val_accuracy"))
  assert {r["method"] for r in doc["rows"]} == {"dpo", "mdpo"}
  assert {r["noise"] for r in doc["rows"]} == {0.0, 0.4}
  assert all(0 <= r["accuracy"] <= 1 for r in doc["rows"])
  assert doc["claims"] and doc["claims"][0]["verdict"] in ("confirmed", "not confirmed",
                                                            "reversed")


def test_calibration_writes_rm_accuracy_and_policy_length(out):
  doc = check_outputs(out / "calibration", "calibration", (
      "reward", "seed", "rm_accuracy", "length_spearman"))
  assert {r["reward"] for r in doc["rows"]} == {"raw", "rc_mean", "rc_lwr"}
  for r in doc["rows"]:
    if r["reward"] != "rc_mean":
      assert {"accuracy", "length", "preamble_margin", "win_rate", "kl", "lr"} <= set(r)
  # each policy is a PPO run on the reward model's scores; the calibrated one fitted its
  # length bias on the start model's samples
  runs = {p.name.split("_seed")[0]: p for p in (out / "calibration" / "rl").iterdir()}
  assert sorted(runs) == ["ppo_raw", "ppo_rc_lwr"]
  assert (runs["ppo_raw"] / "metrics.jsonl").read_text().count("rl/iteration") >= 1
  summary = json.loads((runs["ppo_rc_lwr"] / "ppo_rc_lwr_summary.json").read_text())
  assert "calibrated:study_held:rm0/reference_length_spearman" in summary


def test_ranking_writes_ranking_accuracy_and_win_rate_by_checkpoint(out):
  doc = check_outputs(out / "ranking", "ranking", (
      "checkpoint", "step", "seed", "R_heldout", "R_norm_heldout", "R_star_heldout",
      "R_train", "accuracy", "win_rate", "kl"))
  steps = [r["step"] for r in doc["rows"]]
  assert steps == sorted(steps) and steps[0] == 0 and len(steps) == 3
  # The start judged against itself: the same answers, and a KL of zero up to the rounding
  # of the sampler's log-probs against the reference's forward.
  assert abs(doc["rows"][0]["kl"]) < 1e-4 and doc["rows"][0]["win_rate"] == 0.5
  assert "flips_wrong_to_right_by_quartile" in doc["rows"][-1]


def test_token_rm_writes_accuracy_of_each_rl_method_and_flag_precision(out):
  doc = check_outputs(out / "token_rm", "token_rm", (
      "method", "seed", "accuracy", "win_rate", "kl", "precision", "recall", "edits",
      "token_rm_accuracy", "sequence_rm_accuracy"))
  assert {r["method"] for r in doc["rows"]} == {"fine_grained_ppo", "sequence_rm_ppo",
                                                "grpo_verifier"}
  assert all(0.0 <= r["token_rm_accuracy"] <= 1.0 for r in doc["rows"])


def test_variants_writes_gain_over_each_start(out):
  doc = check_outputs(out / "variants", "variants", (
      "method", "start", "size", "seed", "accuracy", "start_accuracy", "gain", "win_rate",
      "kl", "length", "lr"))
  assert {(r["method"], r["start"]) for r in doc["rows"]} == {
      ("dpo", "instruct"), ("kto", "instruct"), ("dpo", "sft_task")}
