"""The one compiled train step shared by every objective (SFT, DPO and its variants,
multi-sample, unpaired, reward models; PPO reuses it for its policy update).

    state, measurements = train_step(state, batch, ref_params)

``state`` is a dict ``{"step", "params", "opt_state"}`` of arrays; ``params`` is the pure
parameter dict of an NNX model whose structure ``graphdef`` holds. With ``compose`` (e.g.
LoRA), ``params`` are only the trainable part and the model is
``merge(graphdef, compose(params, ref_params))``: the frozen ``ref_params`` are then both the
reference model and the base of the policy, so one copy of the base weights is held. The reference model's
outputs are computed once per step, under ``stop_gradient`` and outside ``value_and_grad``,
and only when the objective's loss needs a reference (reference-free losses never run it);
a batch that carries them as ``ref_*`` fields (the reference cache, ref_cache.py) is read
instead and ``ref_params`` may be None.
The loss is sum(per_example * w) / sum(w) with w = example mask (times completion lengths
for per-token objectives), so padding examples never count.

Gradient accumulation (``accum_steps=k``): the step still takes one ``[k*b, ...]`` batch and
runs the model on k micro-batches of b rows, with the loss, metrics and gradient of the whole
batch, exactly (prefjax/train/accumulation.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from prefjax import sharding
from prefjax.data.pipeline import BATCH_METRICS
from prefjax.errors import ConfigError
from prefjax.train.accumulation import make_accumulated_value_and_grad
from prefjax.train.objective import Objective, reference_inputs  # noqa: F401 (re-exported)


def reduce_metrics(metrics, weights_b):
  """Per-example metrics [B, ...] -> weighted means; scalars pass through."""
  out = {}
  b = weights_b.shape[0]
  for k, v in metrics.items():
    v = jnp.asarray(v, jnp.float32)
    if v.ndim >= 1 and v.shape[0] == b:
      w = weights_b.reshape((b,) + (1,) * (v.ndim - 1)) * jnp.ones_like(v)
      out[k] = (v * w).sum() / jnp.maximum(w.sum(), 1.0)
    else:
      out[k] = v.mean()
  return out


def reduce_loss(objective: Objective, inputs, ref_inputs, batch):
  """Forward outputs of a batch -> (loss, metrics): sum(per_example * mask) / sum(denominator)."""
  per_example, metrics = objective.loss(inputs, ref_inputs)
  mask = batch["example_mask"].astype(jnp.float32)
  denom = objective.denominator_weights(inputs, mask)
  loss = (per_example * mask).sum() / jnp.maximum(denom.sum(), 1.0)
  return loss, reduce_metrics(metrics, mask)


def make_loss_fn(graphdef: nnx.GraphDef, objective: Objective, compose=None):
  """(params, batch, ref_inputs, frozen) -> (loss, metrics); pure, differentiable in params."""

  def loss_fn(params, batch, ref_inputs, frozen=None):
    full = params if compose is None else compose(params, frozen)
    inputs = objective.forward(nnx.merge(graphdef, full), batch)
    return reduce_loss(objective, inputs, ref_inputs, batch)

  return loss_fn


def make_value_and_grad(graphdef, objective: Objective, compose=None, accum_steps: int = 1):
  """(params, batch, ref_params) -> ((loss, metrics), grads), with the reference run inside.

  ``accum_steps > 1`` splits the batch into that many micro-batches (exact; see
  accumulation.py); 1 is the plain single pass.
  """
  if accum_steps > 1:
    return make_accumulated_value_and_grad(
        graphdef, objective, lambda i, r, b: reduce_loss(objective, i, r, b), accum_steps,
        compose)
  loss_fn = make_loss_fn(graphdef, objective, compose)

  def value_and_grad(params, batch, ref_params):
    ref_inputs = reference_inputs(graphdef, objective, ref_params, batch)
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, ref_inputs, ref_params)

  return value_and_grad


def make_train_step(graphdef, objective: Objective, tx: optax.GradientTransformation, schedule,
                    *, state_shardings, batch_sharding: NamedSharding, ref_shardings=None,
                    donate: bool = True, compose=None, accum_steps: int = 1,
                    skip_nonfinite: bool = False):
  """Builds and jit-compiles ``train_step`` with explicit input/output shardings.

  ``compose(trainable, frozen) -> full params`` (optional): see the module docstring.
  ``accum_steps``: micro-batches per step; the batch is ``[accum_steps * b, ...]`` as usual.
  ``skip_nonfinite``: when the loss or the gradient norm is NaN/inf, keep the old params and
  optimizer state (the step counter still advances: the batch is consumed) and report
  ``train/skipped`` = 1.0 (else 0.0) in the measurements.
  """
  if accum_steps < 1:
    raise ConfigError(f"accum_steps must be >= 1, got {accum_steps}")
  value_and_grad = make_value_and_grad(graphdef, objective, compose, accum_steps)

  def train_step(state, batch, ref_params):
    with sharding.with_mesh(batch_sharding.mesh):   # activations sharded like the batch
      (loss, metrics), grads = value_and_grad(state["params"], batch, ref_params)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    measurements = dict(metrics)
    measurements.update(
        loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state["step"]),
        **_data_metrics(batch))
    if skip_nonfinite:
      params, opt_state = _keep_if_nonfinite(loss, measurements["grad_norm"], state,
                                             params, opt_state, measurements)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, measurements

  mesh = batch_sharding.mesh
  replicated = NamedSharding(mesh, P())
  ref_sh = ref_shardings if (objective.needs_reference or compose is not None) else None
  return jax.jit(train_step,
                 in_shardings=(state_shardings, batch_sharding, ref_sh),
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=(0,) if donate else ())


def _data_metrics(batch) -> dict:
  """Truncation fractions, real tokens, examples and the padding fraction of a batch."""
  seg = [batch[k] for k in batch if k.endswith("segment_ids")]
  out = {name: jnp.mean(batch[field]) for name, field in BATCH_METRICS.items() if field in batch}
  out["data/tokens"] = sum((s != 0).sum() for s in seg)
  out["data/padding_fraction"] = 1.0 - out["data/tokens"] / sum(s.size for s in seg)
  if "example_mask" in batch:           # packed plans take as many examples as fit
    out["data/examples"] = batch["example_mask"].sum()
  return out


def _keep_if_nonfinite(loss, grad_norm, state, params, opt_state, measurements):
  """(params, opt_state) of the update if loss and grad norm are finite, else the old ones;
  selected per leaf by ``jnp.where`` so the step stays one branch-free program."""
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  measurements["train/skipped"] = 1.0 - ok.astype(jnp.float32)
  keep = lambda new, old: jnp.where(ok, new, old)
  return (jax.tree.map(keep, params, state["params"]),
          jax.tree.map(keep, opt_state, state["opt_state"]))


def make_eval_fn(graphdef, objective: Objective, *, batch_sharding: NamedSharding,
                 param_shardings, ref_shardings=None, compose=None):
  """Jitted (params, batch, ref_params) -> (loss, metrics) without gradients."""
  loss_fn = make_loss_fn(graphdef, objective, compose)

  def eval_step(params, batch, ref_params):
    with sharding.with_mesh(batch_sharding.mesh):
      ref_inputs = reference_inputs(graphdef, objective, ref_params, batch)
      return loss_fn(params, batch, ref_inputs, ref_params)

  ref_sh = ref_shardings if (objective.needs_reference or compose is not None) else None
  return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding, ref_sh))


def init_state(params, tx, param_shardings):
  """Fresh optimizer state, placed next to the (already sharded) params.

  Returns (state, state_shardings). Every parameter-shaped part of the optimizer state (Adam's
  moments) takes its parameter's sharding (``opt_state_shardings``); counters are replicated.
  """
  params = jax.device_put(params, param_shardings)
  mesh = jax.tree.leaves(param_shardings)[0].mesh
  opt_sh = opt_state_shardings(tx, params, param_shardings)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  state = {"step": jax.device_put(jnp.int32(0), NamedSharding(mesh, P())), "params": params,
           "opt_state": opt_state}
  shardings = {"step": NamedSharding(mesh, P()), "params": param_shardings, "opt_state": opt_sh}
  return state, shardings


def opt_state_shardings(tx, params, param_shardings):
  """Shardings of ``tx.init(params)``: each copy of the parameter tree inside the state (Adam's
  mu and nu) is sharded as the parameters, everything else (step counters) replicated.

  Placement by propagation is not enough: the moments start as zeros, which depend on no
  parameter, so jit would replicate them on every device (8 bytes per parameter per device
  with float32 AdamW, whatever the mesh).
  """
  mesh = jax.tree.leaves(param_shardings)[0].mesh
  abstract = jax.eval_shape(tx.init, params)
  return optax.tree_map_params(tx, lambda _, sh: sh, abstract, param_shardings,
                               transform_non_params=lambda _: NamedSharding(mesh, P()))
