"""Run by tests/test_distributed.py: one process of a (possibly multi-process) DPO run.

  python tests/distributed_check.py WORKDIR     (env: PREFJAX_COORDINATOR, PREFJAX_NUM_PROCESSES,
                                                PREFJAX_PROCESS_ID; XLA_FLAGS device count)

12 DPO steps of the tiny testbed model on a (data=2, fsdp=2, tensor=2) mesh over every
process's devices, through make_train_step + run_stage, with Orbax checkpoints every 4
steps. The last process sends itself SIGTERM during step 4: every process must agree to
stop after it, checkpoint step 4 together and raise Preempted; a second run_stage resumes
from that checkpoint. Prints one JSON line per process.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prefjax import distributed  # noqa: E402

INITIALIZED = distributed.initialize()   # before any other JAX call

import jax  # noqa: E402
import numpy as np  # noqa: E402

from prefjax import sharding  # noqa: E402
from prefjax.train.checkpoint import Checkpointer  # noqa: E402
from prefjax.train.loop import Preempted, run_stage  # noqa: E402
from prefjax.train.metrics_writer import MetricsWriter  # noqa: E402
from tests.train import helpers  # noqa: E402

STEPS, SIGNAL_AT = 12, 3


class SignalAt:

  def __init__(self, batches, at):
    self.batches, self.at = batches, at

  def __getitem__(self, i):
    if i == self.at and jax.process_index() == jax.process_count() - 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return self.batches[i]


def main(workdir):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  step, state, ref, batches, batch_sh = helpers.setup("dpo", mesh=mesh, batch_size=8,
                                                      steps=STEPS, lr=3e-3)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  writer = MetricsWriter(workdir, tensorboard=False)
  ck = Checkpointer(os.path.join(workdir, "ck"), every=4, keep=3)
  common = dict(train_step=step, state_shardings=state_sh, ref_params=ref,
                batch_sharding=batch_sh, num_steps=STEPS, checkpointer=ck, writer=writer,
                log_every=1, progress=False)
  preempted = None
  try:
    run_stage("dpo", state=state, batches=SignalAt(batches, SIGNAL_AT), **common)
  except Preempted as e:
    preempted = e.step
  # A fresh state, as a re-run would build; run_stage resumes from the checkpoint.
  _, state, _, _, _ = helpers.setup("dpo", mesh=mesh, batch_size=8, steps=STEPS, lr=3e-3)
  final = run_stage("dpo", state=state, batches=batches, **common)
  ck.close()
  writer.close()
  total = jax.jit(lambda t: sum(x.sum() for x in jax.tree.leaves(t)))(final["params"])
  checksum = float(total)       # a scalar: replicated on every process
  out = {"initialized": INITIALIZED, "process": jax.process_index(), "processes": jax.process_count(),
         "devices": jax.device_count(), "local_devices": jax.local_device_count(),
         "preempted_at": preempted, "param_checksum": checksum,
         "rows": distributed.process_rows(8, batch_sh)}
  if distributed.is_main():
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    out["steps"] = [x["step"] for x in lines]
    out["losses"] = [x["loss"] for x in lines]
    out["checkpoints"] = sorted(os.listdir(os.path.join(workdir, "ck")))
  print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
