"""scripts/train.py end to end: outputs, kill -9 resume, and one-line errors on bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prefjax.data import pipeline
from prefjax.errors import DataError
from prefjax.testbed.tokenizer import TestbedTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "experiments", "testbed", "dpo.py") + ":quick"
# Smaller still than :quick, with DPO checkpoints every 5 steps.
FAST = ["--config.progress=False", "--config.tensorboard=False", "--config.sft.steps=10",
        "--config.dpo.steps=20", "--config.checkpoint.every=5", "--config.eval.n_prompts=16"]


def _cmd(workdir, *extra):
  return [sys.executable, os.path.join(REPO, "scripts", "train.py"), f"--config={CONFIG}",
          f"--workdir={workdir}", *FAST, *extra]


def _run(workdir, *extra):
  return subprocess.run(_cmd(workdir, *extra), capture_output=True, text=True, cwd=REPO,
                        timeout=600)


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    s = json.load(f)
  return {k: v for k, v in s.items()
          if not k.startswith(("wall_seconds", "seconds/", "outputs/"))}   # outputs: paths


@pytest.mark.slow
def test_run_writes_metrics_checkpoints_summary_and_resumes_after_kill9(tmp_path):
  full = tmp_path / "full"
  r = _run(full)
  assert r.returncode == 0, r.stderr[-3000:]
  s = _summary(full)
  for k in ("win_rate_vs_reference", "oracle_reward_policy", "oracle_reward_reference",
            "kl_to_reference"):
    assert np.isfinite(s[k]), k
  lines = [json.loads(x) for x in open(full / "metrics.jsonl")]
  assert {x["stage"] for x in lines} == {"sft", "dpo"}
  assert all("loss" in x and "tokens_per_sec" in x for x in lines)
  assert sorted(os.listdir(full / "checkpoints" / "dpo")) == ["15", "20"]   # keep=2

  # kill -9 in the middle of DPO (once its step-10 checkpoint exists), then re-run.
  killed = tmp_path / "killed"
  p = subprocess.Popen(_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
  target = killed / "checkpoints" / "dpo" / "10"
  deadline = time.time() + 300
  while not target.exists() and p.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.kill(p.pid, signal.SIGKILL)
  p.wait()
  assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
  r = _run(killed)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[dpo] resuming from checkpoint at step" in r.stdout + r.stderr
  assert "[sft] resuming from checkpoint at step 10" in r.stdout + r.stderr
  assert _summary(killed) == s
  steps = [(x["stage"], x["step"]) for x in map(json.loads, open(killed / "metrics.jsonl"))]
  assert len(steps) == len(set(steps))          # no duplicated lines after the resume


@pytest.mark.parametrize("args,message", [
    (["--config.dpo.loss=dpoo"], "unknown loss 'dpoo'; registered losses: "),
    (["--config.dpo.betta=0.1"], "config.dpo has no field 'betta'; valid fields: "),
    (["--config.dpo.loss_kwargs.gama=0.1"], "has no hyper-parameter 'gama'"),
    (["--config.data.truncate=error", "--config.data.max_len=16"], "exceeds max_len=16"),
    (["--config.data.max_len=8"], "does not fit max_len=8"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
  r = _run(tmp_path / "w", *args)
  assert r.returncode == 1
  err = r.stderr.strip().splitlines()
  assert err[-1].startswith("error: ") and message in err[-1], r.stderr[-2000:]
  assert "Traceback" not in r.stderr


def test_long_prompts_are_truncated_and_counted():
  tok = TestbedTokenizer()
  enc = pipeline.encode_sft(tok, max_len=16)
  row = enc({"id": "x", "prompt": "sort:1,2,3,4,5,6", "response": "1,2,3,4,5,6"})
  assert row["truncated"] == 1.0
  assert row["input_ids"][0] == tok.bos_id                  # BOS kept
  assert row["loss_mask"].sum() == len("1,2,3,4,5,6") + 1   # completion + EOS intact
  short = enc({"id": "y", "prompt": "sort:1", "response": "1"})
  assert short["truncated"] == 0.0


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_empty_response_is_a_clear_error(field):
  enc = pipeline.encode_pair(TestbedTokenizer(), max_len=32)
  ex = {"id": "pair-7", "prompt": "sort:2,1", "chosen": "1,2", "rejected": "2,1"}
  ex[field] = ""
  with pytest.raises(DataError, match=f"example pair-7: empty '{field}' response"):
    enc(ex)
