"""Run by test_sharding.py in a subprocess with 8 simulated CPU devices.

20 DPO steps on one device and on a (data=2, fsdp=2, tensor=2) mesh, with plain rows and
with the real-model path's packed prefix-shared rows + chunked (completion-only) vocabulary
log-probs; prints JSON with the loss curves and the maximum relative drifts.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from prefjax import sharding  # noqa: E402
from tests.train import helpers  # noqa: E402


def losses(mesh, **kw):
  step, state, ref, batches, batch_sh = helpers.setup("dpo", mesh=mesh, batch_size=8, steps=20,
                                                      lr=3e-3, **kw)
  out = []
  for i in range(20):
    state, m = step(state, jax.device_put(batches[i], batch_sh), ref)
    out.append(float(m["loss"]))
  leaf = jax.tree.leaves(state["params"])[0]
  return out, str(leaf.sharding.spec)


single, _ = losses(sharding.make_mesh(devices=jax.devices()[:1]))
sharded, spec = losses(sharding.make_mesh(data=2, fsdp=2, tensor=2))
drift = lambda a, b: float(np.max(np.abs(np.array(a) - np.array(b)) / np.abs(np.array(a))))
packed = dict(layout="packed", logps_chunk=16)
p_single, _ = losses(sharding.make_mesh(devices=jax.devices()[:1]), **packed)
p_sharded, _ = losses(sharding.make_mesh(data=2, fsdp=2, tensor=2), **packed)
print(json.dumps({"devices": len(jax.devices()), "single": single, "sharded": sharded,
                  "max_rel_drift": drift(single, sharded), "example_param_spec": spec,
                  "packed_single": p_single, "packed_sharded": p_sharded,
                  "packed_max_rel_drift": drift(p_single, p_sharded)}))
