"""Objectives: a registered loss plus the forward pass that produces its inputs.

The shared train step (step.py) is the same for every objective; only this differs:
  * ``forward(model, batch)`` -> the loss's policy-side keyword inputs (one model call);
  * ``reference(model, batch)`` -> the reference-side inputs (``ref_*``), run outside the
    gradient, and only when the loss needs a reference (``reference_inputs`` reads them from
    the batch instead when it carries them: the reference cache, ref_cache.py);
  * the loss function and its hyper-parameters, looked up by name in the registry.

Forward passes are registered per batch kind (``register_forward``); a new kind of data
(groups, unpaired examples, reward heads) is one function here, not a new trainer.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax import losses
from prefjax.errors import ConfigError
from prefjax.models.logprobs import entropy_from_logits, forward_logps, slot_logps, token_logprobs
from prefjax.rl import shared_rows

_FORWARDS: dict[str, Callable] = {}


def register_forward(kind: str):
  def deco(fn):
    if kind in _FORWARDS:
      raise ValueError(f"a forward pass for batch kind {kind!r} is already registered")
    _FORWARDS[kind] = fn
    return fn
  return deco


def is_rows_batch(batch) -> bool:
  """True for prefix-shared / packed batches (prefjax/data/layout.py), False for plain."""
  return "rows_input_ids" in batch


def _slots(model, batch, chunk_size):
  """[B, S] completion log-prob sums and lengths of a rows_* batch."""
  b, s = batch["slot_source"].shape
  return slot_logps(model, batch, b, s, chunk_size=chunk_size)


@register_forward("sft")
def forward_sft(model, batch, chunk_size=None):
  if is_rows_batch(batch):
    logps, lengths = _slots(model, batch, chunk_size)
    return {"policy_logps": logps[:, 0], "lengths": lengths[:, 0]}
  logps, lengths, _ = forward_logps(model, batch, chunk_size=chunk_size)
  return {"policy_logps": logps, "lengths": lengths}


def _two_sided(model, batch, a: str, b: str, chunk_size=None, grouped: bool = False):
  """One forward pass over both sides: rows ``a_*`` and ``b_*`` concatenated on axis 0.

  A rows_* batch holds both sides in its slots: side a = slots [0, S/2), b = [S/2, S);
  ``grouped`` keeps the [B, K] axis (K = S/2), else each side is [B].
  """
  if is_rows_batch(batch):
    logps, lengths = _slots(model, batch, chunk_size)
    h = logps.shape[1] // 2
    pick = (lambda x, j: x[:, j * h:(j + 1) * h]) if grouped else (lambda x, j: x[:, j])
    return pick(logps, 0), pick(logps, 1), pick(lengths, 0), pick(lengths, 1)
  keys = ("input_ids", "target_ids", "loss_mask", "positions", "segment_ids")
  joint = {k: jnp.concatenate([batch[f"{a}_{k}"], batch[f"{b}_{k}"]], axis=0) for k in keys}
  logps, lengths, _ = forward_logps(model, joint, chunk_size=chunk_size)
  n = batch[f"{a}_input_ids"].shape[0]
  return logps[:n], logps[n:], lengths[:n], lengths[n:]


@register_forward("pairwise")
def forward_pairwise(model, batch, chunk_size=None, grouped=False):
  c, r, lc, lr = _two_sided(model, batch, "chosen", "rejected", chunk_size, grouped)
  return {"policy_chosen_logps": c, "policy_rejected_logps": r,
          "chosen_lengths": lc, "rejected_lengths": lr}


@register_forward("multi")
def forward_multi(model, batch, chunk_size=None):
  """Groups: chosen_* / rejected_* rows of shape [B, K, T]; masks [B, K]."""
  out = forward_pairwise(model, batch, chunk_size, grouped=True)
  out.update(chosen_mask=batch["chosen_mask"], rejected_mask=batch["rejected_mask"])
  return out


@register_forward("unpaired")
def forward_unpaired(model, batch, chunk_size=None):
  """KTO: one response per example plus a mismatched (prompt, response) row for z0."""
  p, kl, lp, _ = _two_sided(model, batch, "response", "kl", chunk_size)
  return {"policy_logps": p, "policy_kl_logps": kl, "lengths": lp, "labels": batch["labels"]}


@register_forward("reward")
def forward_reward(model, batch):
  """Reward models (``prefjax.rewards.model.RewardModel``): scalar rewards of both sides.

  The graphdef is a reward model's, not a Transformer's; one call over chosen and rejected
  rows concatenated (or one call over prefix-shared / packed rows, ``slot_rewards``). A
  batch field ``margin`` [B] becomes the loss's per-pair ``margins``.
  """
  if is_rows_batch(batch):
    r = model.slot_rewards(batch, *batch["slot_source"].shape)                     # (B, 2)
    chosen, rejected = r[:, 0], r[:, 1]
  else:
    keys = ("input_ids", "loss_mask", "positions", "segment_ids")
    joint = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
             for k in keys}
    rewards = model.rewards(joint)
    n = batch["chosen_input_ids"].shape[0]
    chosen, rejected = rewards[:n], rewards[n:]
  out = {"chosen_rewards": chosen, "rejected_rewards": rejected}
  if "margin" in batch:
    out["margins"] = batch["margin"]
  return out


def batch_reference(batch) -> dict:
  """The reference's ``ref_*`` loss inputs carried as batch fields (the reference cache,
  prefjax/train/ref_cache.py), or {} when the batch carries none."""
  return {k: v for k, v in batch.items() if k.startswith("ref_")}


def reference_inputs(graphdef, objective: "Objective", ref_params, batch):
  """The ``ref_*`` loss inputs, detached; {} for reference-free objectives.

  Read from the batch when it carries them (cached reference log-probs; ``ref_params`` may
  then be None), else one forward pass of ``merge(graphdef, ref_params)``.
  """
  if not objective.needs_reference:
    return {}
  cached = batch_reference(batch)
  if cached:
    return jax.lax.stop_gradient(cached)
  return jax.lax.stop_gradient(objective.reference(nnx.merge(graphdef, ref_params), batch))


def _as_reference(inputs: Mapping[str, Any]) -> dict:
  """policy_* log-probs renamed ref_*; lengths, masks and labels are not repeated."""
  return {"ref_" + k[len("policy_"):]: v for k, v in inputs.items() if k.startswith("policy_")}


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the shared step optimises. Build with ``make_objective``."""
  spec: losses.LossSpec
  hparams: tuple[tuple[str, Any], ...] = ()
  per_token: bool = False   # divide by completion tokens instead of examples (SFT)
  logps_chunk: int | None = None   # chunked vocabulary log-probs (forwards that take chunk_size)

  @property
  def needs_reference(self) -> bool:
    return self.spec.needs_reference

  def forward(self, model, batch):
    fn = _FORWARDS[self.spec.kind]
    if self.logps_chunk and "chunk_size" in inspect.signature(fn).parameters:
      return fn(model, batch, chunk_size=self.logps_chunk)
    return fn(model, batch)

  def reference(self, model, batch):
    return _as_reference(self.forward(model, batch))

  def loss(self, inputs, ref_inputs):
    return self.spec.fn(**inputs, **ref_inputs, **dict(self.hparams))

  def denominator_weights(self, inputs, example_mask):
    if self.per_token:
      return example_mask * inputs["lengths"]
    return example_mask


def make_objective(loss_name: str, hparams: Mapping[str, Any] | None = None, *,
                   per_token: bool | None = None, logps_chunk: int | None = None) -> Objective:
  """An objective from a registered loss name (unknown names list the registered ones).

  ``logps_chunk``: tokens per chunk of the vocabulary log-softmax (None: full logits).
  """
  spec = losses.get_spec(loss_name)
  if spec.kind not in _FORWARDS:
    raise ConfigError(f"loss {loss_name!r} consumes {spec.kind!r} batches, for which no forward "
                     f"pass is registered ({', '.join(sorted(_FORWARDS))})")
  hparams = dict(hparams or {})
  params = inspect.signature(spec.fn).parameters
  if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
    inputs = ("policy_", "ref_", "chosen_", "rejected_", "lengths", "labels")
    valid = sorted(n for n, p in params.items()
                   if p.default is not inspect.Parameter.empty and not n.startswith(inputs))
    for k in hparams:
      if k not in valid:
        raise ConfigError(f"loss {loss_name!r} has no hyper-parameter {k!r}; "
                          f"its hyper-parameters: {', '.join(valid)}")
  if per_token is None:
    per_token = spec.kind == "sft"
  return Objective(spec=spec, hparams=tuple(sorted(hparams.items())),
                   per_token=per_token, logps_chunk=logps_chunk)


# ---------------------------------------------------------------------------------------------
# RL and token-level reward models (prefjax.rl, prefjax.rewards.token_model).

@register_forward("ppo")
def forward_ppo(model, batch, chunk_size=None):
  """PPO minibatches: per-token log-probs, entropies and values of the current model.

  ``model`` is a ``prefjax.rl.actor_critic.ActorCritic`` (or a plain Transformer: values 0).
  Rollout fields travel as batch fields [B, T]: ``old_token_logps``, ``old_values``,
  ``ref_token_logps`` (reference log-probs computed once at rollout, outside the gradient),
  ``advantages``, ``returns``; ``kl_coefs`` [B] is the KL-in-loss coefficient.
  ``chunk_size`` (an objective built with ``logps_chunk``, only without an entropy bonus):
  completion-only chunked log-probs, no [B, T, V] logits; the entropy then reads 0.
  A minibatch of whole groups may carry its tokens as group rows (``rows_*``, each prompt
  once, ``prefjax.rl.shared_rows``): the model runs on those and its outputs are gathered
  back onto the [B, T] grid of the rollout fields.
  """
  rows = shared_rows.unit_view(batch) if shared_rows.is_grouped(batch) else batch
  if chunk_size and hasattr(model, "logps_and_values"):
    logps, values = model.logps_and_values(rows, chunk_size=chunk_size)
    entropy = jnp.zeros(logps.shape, jnp.float32)
  elif hasattr(model, "evaluate"):
    logps, entropy, values = model.evaluate(rows)
  else:
    kw = {"branch_ids_bt": rows["branch_ids"]} if "branch_ids" in rows else {}
    logits, _ = model(rows["input_ids"], rows["positions"], rows["segment_ids"], **kw)
    logps, entropy = token_logprobs(logits, rows["target_ids"]), entropy_from_logits(logits)
    values = jnp.zeros(logps.shape, jnp.float32)
  if rows is not batch:        # group rows (prefjax/rl/shared_rows.py) -> the plain rows' grid
    logps, entropy, values = (shared_rows.to_plain(x, batch["rows_gather"])
                              for x in (logps, entropy, values))
  mask = batch["loss_mask"].astype(jnp.float32)
  return {"policy_token_logps": logps * mask, "policy_values": values * mask,
          "policy_entropy": entropy * mask, "old_token_logps": batch["old_token_logps"],
          "old_values": batch["old_values"], "ref_token_logps": batch["ref_token_logps"],
          "advantages": batch["advantages"], "returns": batch["returns"],
          "completion_mask": mask, "kl_coefs": batch["kl_coefs"], "lengths": mask.sum(-1)}


@register_forward("token")
def forward_token(model, batch):
  """Token-level reward model (``TokenRewardModel``) on edited (chosen_*) and original
  (rejected_*) rows, one call over both; ``rejected_flaw_labels`` [B, T] (zeros if absent)."""
  n = batch["chosen_input_ids"].shape[0]
  if shared_rows.is_grouped(batch):     # each pair one prefix-shared row (edit_pair_rows)
    rows = shared_rows.unit_view(batch)
    r_rt = model(rows["input_ids"], rows["positions"], rows["segment_ids"], rows["target_ids"],
                 rows["branch_ids"])
    r = shared_rows.to_plain(r_rt, batch["rows_gather"])          # [c_0, o_0, c_1, o_1, ...]
    r = jnp.concatenate([r[0::2] * batch["chosen_loss_mask"],
                         r[1::2] * batch["rejected_loss_mask"]], axis=0)
  else:
    keys = ("input_ids", "target_ids", "loss_mask", "positions", "segment_ids")
    joint = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
             for k in keys}
    r = model.token_rewards(joint)
  labels = batch.get("rejected_flaw_labels")
  if labels is None:
    labels = jnp.zeros_like(r[n:])
  return {"chosen_token_rewards": r[:n], "rejected_token_rewards": r[n:],
          "chosen_mask": batch["chosen_loss_mask"], "rejected_mask": batch["rejected_loss_mask"],
          "rejected_flaw_labels": labels}
