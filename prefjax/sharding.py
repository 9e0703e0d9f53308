"""Sharding as data: a (data, fsdp, tensor) mesh and a logical-axis rule table.

Layers name only logical axes (``logical_axes`` metadata on every ``nnx.Param``). A rule
maps a logical axis to a mesh axis (or a tuple of them, or None = replicated). A new
strategy is a new rule list, e.g. pure data parallelism is ``(("batch", ("data", "fsdp")),)``.

A dimension that the mapped mesh axes do not divide is replicated instead (tiny testbed
models on 8 devices), and a mesh axis is used at most once per array.

Activations: ``constrain(x, ("batch", None, None))`` pins an activation's layout when a mesh
is in context (the train step traces under its mesh, ``with_mesh``); elsewhere it returns
``x``. Without it XLA's propagation is free to keep the (fsdp-sharded) weights in place and
move the activations instead: on an fsdp=8 mesh it all-reduced the full global batch's
[B, T, mlp] activations on every device (memory_analysis of Llama-3.1-8B shapes, 2 layers,
batch 16 x 2048: 14.0 GiB of temporaries per device, 3.1 GiB with the block inputs pinned).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes, or None). Order matters only for lookups.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("lora_rank", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor); ``data=-1`` takes all remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if data == -1:
    if n % (fsdp * tensor):
      raise ValueError(f"{n} devices are not divisible by fsdp*tensor = {fsdp * tensor}")
    data = n // (fsdp * tensor)
  if data * fsdp * tensor != n:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = "
                     f"{data * fsdp * tensor} != {n} available devices")
  arr = np.asarray(devices).reshape(data, fsdp, tensor)
  return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
  """PartitionSpec for an array with logical ``axes`` and ``shape`` under ``rules``."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    target = table.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
    total = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
    if not mesh_axes or size % total:
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def param_shardings(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``, from metadata."""
  state = nnx.state(model, nnx.Param)

  def one(var):
    shape = var.get_value().shape      # also for abstract (nnx.eval_shape) models
    axes = getattr(var, "logical_axes", None) or (None,) * len(shape)
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

  specs = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(specs) if not isinstance(specs, dict) else specs


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """Leading (batch) axis split over the mesh axes that ``batch`` maps to."""
  target = dict(rules).get("batch")
  axes = (target,) if isinstance(target, str) else tuple(target or ())
  return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def with_mesh(mesh: Mesh):
  """Context in which ``constrain`` sees ``mesh`` (enter it while tracing a step)."""
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def constrain(x, axes: Sequence[str | None], rules=DEFAULT_RULES):
  """``x`` laid out by its logical ``axes`` on the mesh in context; ``x`` itself without one
  (or when no mesh axis applies, e.g. on one device)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(axes, x.shape, mesh, rules)
  if all(s is None for s in spec):
    return x
  return jax.lax.with_sharding_constraint(x, spec)
