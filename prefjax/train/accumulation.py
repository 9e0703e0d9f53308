"""Exact gradient accumulation: k micro-batches of b give the gradient of one batch of k*b.

The step's loss is a function of the model only through the objective's forward outputs
(per-example log-probs ``[B]``, ``[B, K]`` groups, rewards ``[B]``):

    L(theta) = l(f(theta, x_1), ..., f(theta, x_k))      f = objective.forward, x_i = micro-batch i

so its gradient is the chain rule through those small outputs:

    dL/dtheta = sum_i  J_f(theta, x_i)^T  g_i          g = dl/df evaluated on the WHOLE batch

This module computes it in two passes over the micro-batches (``jax.lax.scan``, so activations
of one micro-batch are alive at a time):

  1. forward only: f(theta, x_i) and the reference outputs for every micro-batch (or the
     cached ``ref_*`` batch fields, split with the rows); these are tiny ([k, b] scalars),
     and are concatenated back into whole-batch inputs [k*b];
  2. the loss, its metrics and g = dl/df on the whole batch (no model call, cheap);
  3. one backward per micro-batch: grad of <stop_gradient(g_i), f(theta, x_i)> (a VJP).

Because the loss sees exactly the arrays of the unsplit batch, this is exact for every
objective, including the ones that couple examples across the batch (KTO's reference point
z0 is a batch mean, AOT sorts over the batch), per-token denominators (SFT), and every metric
(scalar metrics such as KTO's ``kl`` included). The price is one extra forward pass per
micro-batch (forward twice, backward once).

Batch layout: the step takes the usual ``[k*b, ...]`` batch (same pipeline, same sharding) and
micro-batch i is rows {i, i + k, i + 2k, ...} (reshape to [b, k] then swap axes): with the
batch sharded on its first axis each device keeps its own rows, no data moves. Row layouts
(``data.layout`` "prefix" / "packed", batches with ``rows_*`` fields) pack the whole batch into
shared rows and cannot be split this way: they raise a ConfigError.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.errors import ConfigError
from prefjax.train.objective import Objective, is_rows_batch, reference_inputs


def split_micro(batch, k: int):
  """[k*b, ...] leaves -> [k, b, ...]; micro-batch i holds rows i, i+k, i+2k, ..."""
  def split(x):
    n = x.shape[0]
    if n % k:
      raise ValueError(f"batch of {n} rows does not split into accum_steps={k} micro-batches")
    return jnp.swapaxes(x.reshape((n // k, k) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def merge_micro(tree):
  """Inverse of ``split_micro``: [k, b, ...] leaves -> [k*b, ...] in the original row order."""
  def merge(x):
    k, b = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape((b * k,) + x.shape[2:])
  return jax.tree.map(merge, tree)


def _inexact(x) -> bool:
  return jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)


def make_accumulated_value_and_grad(graphdef: nnx.GraphDef, objective: Objective,
                                    whole_batch_loss, accum_steps: int, compose=None):
  """(params, batch, ref_params) -> ((loss, metrics), grads) over ``accum_steps`` micro-batches.

  ``whole_batch_loss(inputs, ref_inputs, batch) -> (loss, metrics)`` reduces the objective's
  forward outputs of the whole batch (it is the step's reduction; see step.py).
  """
  k = accum_steps

  def forward(params, micro, frozen):
    full = params if compose is None else compose(params, frozen)
    return objective.forward(nnx.merge(graphdef, full), micro)

  def value_and_grad(params, batch, ref_params):
    if is_rows_batch(batch):
      raise ConfigError(f"accum_steps={k} needs data.layout='plain': prefix-shared / packed "
                        "row batches share rows across examples and cannot be split into "
                        "micro-batches")
    micro = split_micro(batch, k)

    # Pass 1: forward outputs (policy and reference) of every micro-batch, no gradient.
    def fwd_body(_, mb):
      inputs = jax.lax.stop_gradient(forward(params, mb, ref_params))
      return None, (inputs, reference_inputs(graphdef, objective, ref_params, mb))
    _, (inputs_k, ref_k) = jax.lax.scan(fwd_body, None, micro)
    inputs, ref_inputs = merge_micro(inputs_k), merge_micro(ref_k)

    # The whole-batch loss and its gradient w.r.t. the (float) forward outputs.
    floats = {n: v for n, v in inputs.items() if _inexact(v)}
    rest = {n: v for n, v in inputs.items() if not _inexact(v)}
    (loss, metrics), g_inputs = jax.value_and_grad(
        lambda f: whole_batch_loss({**f, **rest}, ref_inputs, batch), has_aux=True)(floats)
    g_k = split_micro(g_inputs, k)

    # Pass 2: one VJP per micro-batch with the whole-batch cotangents g_i.
    def bwd_body(acc, xs):
      mb, g = xs
      def surrogate(p):
        out = forward(p, mb, ref_params)
        return sum(jnp.vdot(g[n].astype(jnp.float32), out[n].astype(jnp.float32)) for n in g)
      grads = jax.grad(surrogate)(params)
      return jax.tree.map(jnp.add, acc, grads), None
    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(bwd_body, zeros, (micro, g_k))
    return (loss, metrics), grads

  return value_and_grad
