"""The calibration study (arXiv 2409.17407): the length-biased pair set, the post-hoc
calibrations it compares. (Its quick mode: tests/studies/real/test_quick_modes.py.)"""
from types import SimpleNamespace

import numpy as np
import pytest

from prefjax.errors import ConfigError
from prefjax.studies.real import calibration
from prefjax.studies.real.calibration import (PREAMBLE, biased_pairs, calibrated, mixed_pairs,
                                              randomly_verbose)
from tests.studies.real.test_mdpo import _pool


def test_biased_pairs_make_the_chosen_response_longer_most_of_the_time():
  pool = _pool()
  pool.items, pool.responses, pool.correct = (pool.items * 200, pool.responses * 200,
                                              np.tile(pool.correct, (200, 1)))
  pairs = biased_pairs(pool, 0.8, seed=0)
  assert len(pairs) == 200 * (3 + 3)          # prompt 0: 1 x 3 pairs, prompt 2: 3 x 1
  longer = np.mean([len(p["chosen"]) > len(p["rejected"]) for p in pairs])
  shorter = np.mean([len(p["chosen"]) < len(p["rejected"]) for p in pairs])
  assert abs(longer - 0.8 * 0.8) < 0.05          # chosen verbose, rejected not
  assert abs(shorter - 0.2 * 0.2) < 0.03         # the other way round (else: equal)
  assert all(p["chosen"].removeprefix(PREAMBLE)[0] == "r" for p in pairs)


def test_randomly_verbose_is_independent_of_correctness_and_pairs_index_prompts():
  pool = _pool()
  prompts, responses, correct, index = randomly_verbose(pool, seed=0)
  assert len(responses) == 12 and correct.sum() == 4
  i, j = mixed_pairs(correct, index)
  assert all(index[i] == index[j]) and all(correct[i] > correct[j]) and len(i) == 6


def test_rc_lwr_removes_a_reward_that_is_a_function_of_length():
  rng = np.random.default_rng(0)
  lengths = rng.integers(5, 40, 300).astype(float)
  quality = rng.normal(size=300)
  out = calibrated(quality + 0.2 * lengths, lengths)
  assert np.corrcoef(out["raw"], lengths)[0, 1] > 0.8
  assert abs(np.corrcoef(out["rc_lwr"], lengths)[0, 1]) < 0.15
  assert np.corrcoef(out["rc_lwr"], quality)[0, 1] > 0.95


def test_biased_pairs_append_edit_pairs_with_the_same_bias_and_keep_the_sample_pairs():
  pool = _pool()
  plain = biased_pairs(pool, 0.8, seed=0)
  edit_pairs = [{"id": f"e{n}", "prompt": "q", "original": "Answer: 3", "edited": "Answer: 7"}
                for n in range(2000)]
  out = biased_pairs(pool, 0.8, seed=0, edit_pairs=edit_pairs)
  assert out[:len(plain)] == plain            # the sample pairs are drawn first, unchanged
  tail = out[len(plain):]
  assert len(tail) == 2000 and all(p["id"].endswith("/edit") for p in tail)
  assert all(p["chosen"].removeprefix(PREAMBLE) == "Answer: 7" for p in tail)
  assert all(p["rejected"].removeprefix(PREAMBLE) == "Answer: 3" for p in tail)
  chosen_verbose = np.mean([p["chosen"].startswith(PREAMBLE) for p in tail])
  rejected_verbose = np.mean([p["rejected"].startswith(PREAMBLE) for p in tail])
  assert abs(chosen_verbose - 0.8) < 0.03 and abs(rejected_verbose - 0.2) < 0.03


@pytest.mark.parametrize("change,match", [
    ({"policies": ("raw", "oracle")}, r"unknown policies \['oracle'\]"),
    ({"recipe": "dpo"}, "unknown recipe 'dpo'"),
])
def test_a_bad_rl_budget_is_refused_before_any_work(change, match):
  settings = SimpleNamespace(budget=dict(calibration.BUDGET, **change))
  with pytest.raises(ConfigError, match=match):
    calibration.run(None, settings)
