"""Sharded (data=2, fsdp=2, tensor=2) DPO equals single-device DPO over 20 steps (plain rows,
and packed prefix-shared rows with chunked vocabulary log-probs)."""
import json
import os
import subprocess
import sys

import jax
import pytest

from prefjax import sharding

HERE = os.path.dirname(__file__)


def test_sharded_dpo_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, os.path.join(HERE, "sharded_dpo_check.py")],
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  print(f"max relative drift over 20 DPO steps: {res['max_rel_drift']:.2e}")
  assert res["devices"] == 8
  assert res["example_param_spec"] != "PartitionSpec()"   # really sharded
  assert res["max_rel_drift"] < 1e-3, res
  assert res["single"][-1] < res["single"][0]             # and it trained
  # packed prefix-shared rows + chunked completion-only log-probs (the real-model default)
  print(f"packed + chunked: {res['packed_max_rel_drift']:.2e}")
  assert res["packed_max_rel_drift"] < 1e-3, res
  assert res["packed_single"][-1] < res["packed_single"][0]


def test_rules_map_logical_axes_and_fall_back_to_replication():
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  assert sharding.logical_to_spec(("embed", "mlp"), (16, 24), mesh) == jax.sharding.PartitionSpec(None, None)
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh(data=3, fsdp=1, tensor=1, devices=jax.devices()[:1])
