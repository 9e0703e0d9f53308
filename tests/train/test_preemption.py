"""SIGTERM / SIGINT during a stage: the step finishes, is checkpointed, ``Preempted`` is raised
(exit code 75 from the CLI), and re-running resumes to the same result."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from prefjax.train.checkpoint import Checkpointer
from prefjax.train.loop import Preempted, run_stage
from prefjax.train.metrics_writer import MetricsWriter
from tests.train import helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8


class SignalAt:
  """batches[i], sending ``signum`` to this process while step ``at``'s batch is fetched."""

  def __init__(self, batches, at, signum):
    self.batches, self.at, self.signum = batches, at, signum

  def __getitem__(self, i):
    if i == self.at:
      os.kill(os.getpid(), self.signum)
    return self.batches[i]


@pytest.fixture(scope="module")
def setup():
  step, state, ref, batches, batch_sh = helpers.setup("dpo", steps=STEPS)
  return step, jax.device_get(state), jax.tree.map(lambda x: x.sharding, state), ref, batches, \
      batch_sh


def train_section(setup, workdir, batches=None):
  step, state0, state_sh, ref, data, batch_sh = setup
  ck = Checkpointer(os.path.join(workdir, "ck"), every=4, keep=2)
  try:
    return run_stage("dpo", train_step=step, state=jax.device_put(state0, state_sh),
                     state_shardings=state_sh, ref_params=ref, batches=batches or data,
                     batch_sharding=batch_sh, num_steps=STEPS, checkpointer=ck,
                     writer=MetricsWriter(workdir, tensorboard=False), log_every=2,
                     progress=False)
  finally:
    ck.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_the_current_step_and_resume_matches(setup, tmp_path, signum,
                                                                capsys):
  handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  full = jax.device_get(train_section(setup, str(tmp_path / "full")))
  with pytest.raises(Preempted) as info:
    train_section(setup, str(tmp_path / "cut"), SignalAt(setup[4], 2, signum))
  assert info.value.step == 3                      # step index 2 finished: 3 steps done
  assert str(info.value).startswith(f"[dpo] {signal.Signals(signum).name} received; "
                                    "checkpoint at step 3 written (")
  assert str(info.value).endswith("); re-run the same command to resume")
  assert sorted(os.listdir(tmp_path / "cut" / "ck")) == ["3"]
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers

  resumed = jax.device_get(train_section(setup, str(tmp_path / "cut")))
  assert "[dpo] resuming from checkpoint at step 3" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, full, resumed)
  lines = [json.loads(x) for x in open(tmp_path / "cut" / "metrics.jsonl")]
  ref_lines = [json.loads(x) for x in open(tmp_path / "full" / "metrics.jsonl")]
  assert [x["step"] for x in lines] == [x["step"] for x in ref_lines] == [2, 4, 6, 8]
  assert [x["loss"] for x in lines] == [x["loss"] for x in ref_lines]


class DoubleCtrlC(SignalAt):

  def __getitem__(self, i):
    if i == self.at:
      os.kill(os.getpid(), signal.SIGINT)
    return super().__getitem__(i)


def test_a_second_ctrl_c_stops_at_once(setup, tmp_path):
  with pytest.raises(KeyboardInterrupt):
    train_section(setup, str(tmp_path / "w"), DoubleCtrlC(setup[4], 2, signal.SIGINT))
  assert not os.path.exists(tmp_path / "w" / "ck" / "3")


# ---------------------------------------------------------------- the command line, end to end

CONFIG = os.path.join(REPO, "experiments", "testbed", "dpo.py") + ":quick"
ARGS = ["--config.progress=False", "--config.tensorboard=False", "--config.sft.steps=10",
        "--config.dpo.steps=40", "--config.log_every=2", "--config.checkpoint.every=20",
        "--config.eval.n_prompts=16"]


def _cmd(workdir):
  return [sys.executable, os.path.join(REPO, "scripts", "train.py"), f"--config={CONFIG}",
          f"--workdir={workdir}", *ARGS]


def _summary(workdir):
  """summary.json without timings; paths inside the workdir (exports) made relative."""
  with open(os.path.join(workdir, "summary.json")) as f:
    s = json.load(f)
  return {k: v.replace(str(workdir), "WORKDIR") if isinstance(v, str) else v
          for k, v in s.items()
          if not k.startswith(("wall", "seconds/", "timings")) and "seconds" not in k}


@pytest.mark.slow
def test_sigterm_mid_dpo_exits_75_and_rerun_gives_the_same_summary(tmp_path):
  cut = tmp_path / "cut"
  p = subprocess.Popen(_cmd(cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       cwd=REPO)
  metrics, deadline = cut / "metrics.jsonl", time.time() + 400
  while p.poll() is None and time.time() < deadline:   # wait for a DPO metrics line
    if metrics.exists() and '"stage": "dpo"' in metrics.read_text():
      break
    time.sleep(0.02)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 75, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("preempted: [dpo] SIGTERM received; checkpoint at step "), err[-2000:]
  assert last.endswith("; re-run the same command to resume") and "Traceback" not in err
  step = int(last.split("checkpoint at step ")[1].split()[0])
  assert 2 <= step < 40 and (cut / "checkpoints" / "dpo" / str(step)).is_dir()
  assert not (cut / "summary.json").exists()

  r = subprocess.run(_cmd(cut), capture_output=True, text=True, cwd=REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"[dpo] resuming from checkpoint at step {step}" in r.stdout + r.stderr
  full = tmp_path / "full"
  r = subprocess.run(_cmd(full), capture_output=True, text=True, cwd=REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert _summary(cut) == _summary(full)
