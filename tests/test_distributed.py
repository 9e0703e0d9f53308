"""2 processes x 4 CPU devices == 1 process x 8 devices: the same DPO losses (<= 1e-5
relative), Orbax checkpoints written cooperatively, a SIGTERM on one process stopping both
at the same step."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(REPO, "tests", "distributed_check.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, num_processes, devices_per_process):
  port = _free_port()
  procs = []
  for pid in range(num_processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    env.pop("PREFJAX_COORDINATOR", None)
    if num_processes > 1:
      env.update(PREFJAX_COORDINATOR=f"127.0.0.1:{port}",
                 PREFJAX_NUM_PROCESSES=str(num_processes), PREFJAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, CHECK, str(workdir)], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=900)
      assert p.returncode == 0, err[-4000:]
      results.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return sorted(results, key=lambda r: r["process"])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single = _launch(tmp_path / "single", 1, 8)
  multi = _launch(tmp_path / "multi", 2, 4)
  assert [(r["processes"], r["devices"], r["local_devices"]) for r in multi] == [(2, 8, 4)] * 2
  assert (single[0]["processes"], single[0]["devices"]) == (1, 8)
  # initialize() started jax.distributed only where a coordinator was given.
  assert [r["initialized"] for r in multi] == [True, True] and single[0]["initialized"] is False
  # Each process holds (and feeds) half of every batch.
  assert [r["rows"] for r in multi] == [[0, 4], [4, 8]] and single[0]["rows"] == [0, 8]
  # The SIGTERM sent to process 1 alone stopped both after the same step.
  assert [r["preempted_at"] for r in multi] == [4, 4] and single[0]["preempted_at"] == 4
  for r in (single[0], multi[0]):
    assert r["steps"] == list(range(1, 13))
    assert r["checkpoints"] == ["12", "4", "8"]
  a, b = np.array(single[0]["losses"]), np.array(multi[0]["losses"])
  drift = float(np.max(np.abs(a - b) / np.abs(a)))
  print(f"max relative loss drift 2x4 vs 1x8: {drift:.3g}")
  assert drift <= 1e-5, (a, b)
  assert abs(multi[0]["param_checksum"] - multi[1]["param_checksum"]) == 0
  np.testing.assert_allclose(multi[0]["param_checksum"], single[0]["param_checksum"], rtol=1e-5)


# ---------------------------------------------------------------- single-process helpers


def test_single_process_helpers_and_local_encoding():
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P

  from prefjax import distributed, sharding
  from prefjax.data import host_batches, pipeline
  from prefjax.testbed import world
  from tests.train import helpers

  assert distributed.is_main()
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  batch_sh = sharding.batch_sharding(mesh)
  assert distributed.process_rows(8, batch_sh) == (0, 8)
  assert distributed.process_rows(8, NamedSharding(mesh, P())) == (0, 8)

  pairs = world.preference_pairs(world.WorldConfig(tasks=("sort",)), 40)
  enc = pipeline.encode_pair(helpers.TOK, 32)
  full = pipeline.batched(pairs, enc, 8, seed=3, num_steps=9)
  batches, n = host_batches.local_batches(pairs, enc, 8, seed=3, num_steps=9, sharding=batch_sh)
  assert n == 8 and batches is not None
  placed = distributed.host_batch(full[6], batch_sh)
  for k, v in full[6].items():
    np.testing.assert_array_equal(np.asarray(placed[k]), v)
  # What a host holding rows [2, 6) encodes: exactly those rows of the same global batch.
  import grain
  raw = grain.MapDataset.source(list(pairs)).repeat(2).shuffle(seed=3).batch(
      8, drop_remainder=True, batch_fn=list)
  part = host_batches.LocalBatches(raw, enc, (2, 6))
  for step in (0, 4, 8):
    for k, v in full[step].items():
      np.testing.assert_array_equal(part[step][k], v[2:6])


def test_bad_distributed_settings_are_one_line(monkeypatch):
  from prefjax import distributed
  from prefjax.errors import ConfigError
  monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setenv("PREFJAX_NUM_PROCESSES", "two")
  with pytest.raises(ConfigError, match=r"\$PREFJAX_NUM_PROCESSES='two' is not an integer"):
    distributed.initialize()
  with pytest.raises(ConfigError, match=r"process_id=3 is not in \[0, 2\)"):
    distributed.initialize(num_processes=2, process_id=3)
  with pytest.raises(ConfigError, match=r"needs a port"):
    distributed.initialize(coordinator_address="10.0.0.1", num_processes=2, process_id=0)
