"""Sequence reward model: the LM backbone plus a scalar head read at the last completion token.

  r(x, y) = w . h_T(x, y)

where h_T is the backbone's final-norm hidden state (``Transformer(..., return_hidden=True)``)
at the last position t of the packed row with ``loss_mask[t] = 1``: the input there is the
last completion token (its target is EOS), so h_T has read the prompt and the whole response.
Tokens after it (the EOS target, padding) cannot change the reward (causal attention).

Reference: Ouyang et al., "Training language models to follow instructions with human
feedback", arXiv 2203.02155 (the reward model of RLHF); Stiennon et al., arXiv 2009.01325.

Example:
  >>> rm = RewardModel(make_config("testbed-tiny", vocab_size=64), nnx.Rngs(0))
  >>> rewards_b = rm.rewards(batch)        # packed rows input_ids, positions, ... [B, T]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.models.config import ModelConfig, make_config
from prefjax.models.layers import param
from prefjax.models.transformer import Transformer


def last_completion_index(loss_mask_bt):
  """[B, T] 0/1 mask -> [B] index of the last 1 (0 for a row without any)."""
  t = loss_mask_bt.shape[-1]
  flipped = jnp.flip(loss_mask_bt.astype(jnp.int32), axis=-1)
  return (t - 1 - jnp.argmax(flipped, axis=-1)) * (loss_mask_bt.sum(-1) > 0)


class RewardModel(nnx.Module):
  """``backbone`` (a Transformer; its LM head is unused) and a scalar ``head`` [D].

  The head starts at zero, so a fresh reward model scores everything 0 and the first BT
  gradient is the same for every backbone initialisation (e.g. an SFT checkpoint).
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.backbone = Transformer(cfg, rngs)
    self.head = param(rngs, (cfg.dim,), ("embed",), init="zeros",
                      dtype=jnp.dtype(cfg.param_dtype))

  def __call__(self, tokens_bt, positions_bt, segment_ids_bt, loss_mask_bt):
    """Rewards [B] (float32) of packed rows [B, T]."""
    h_btd, _ = self.backbone(tokens_bt, positions_bt, segment_ids_bt, return_hidden=True)
    idx_b = last_completion_index(loss_mask_bt)
    h_bd = jnp.take_along_axis(h_btd, idx_b[:, None, None], axis=1)[:, 0]        # (B, D)
    return self._head(h_bd)

  def rewards_at(self, rows, idx_bw):
    """Rewards [B, W] read at row slots ``idx_bw`` of prefix-shared / packed rows
    (``rows``: input_ids, positions, segment_ids, branch_ids [B, T]; prefjax/data/layout.py):
    the reward of a response is the value at its last completion slot."""
    h_bwd = jnp.take_along_axis(self._rows_hidden(rows), idx_bw[..., None], axis=1)
    return self._head(h_bwd)

  def _rows_hidden(self, rows):
    """Final-norm hidden states [B, T, D] of prefix-shared rows (branch ids honoured)."""
    h_btd, _ = self.backbone(rows["input_ids"], rows["positions"], rows["segment_ids"],
                             return_hidden=True, branch_ids_bt=rows["branch_ids"])
    return h_btd

  def _head(self, h):
    return (h.astype(jnp.float32) * self.head[...].astype(jnp.float32)).sum(-1)

  def slot_rewards(self, batch, n_examples: int, n_slots: int):
    """Rewards [B, S] of a ``rows_*`` batch (one per example and response slot).

    Each slot's reward is read at its last completion position (the largest flat index
    with ``rows_slot_ids == example * S + slot`` and ``rows_loss_mask`` set), where its
    hidden state has seen the prompt and the whole response, as in its own plain row.
    Slots without tokens read position 0; ``slot_source`` maps copies to their source.
    """
    r, t = batch["rows_input_ids"].shape
    n = n_examples * n_slots
    rows = {k: batch["rows_" + k] for k in ("input_ids", "positions", "segment_ids",
                                           "branch_ids")}
    ids = batch["rows_slot_ids"].reshape(-1)
    ids = jnp.where((ids >= 0) & (batch["rows_loss_mask"].reshape(-1) > 0), ids, n)
    last = jax.ops.segment_max(jnp.arange(r * t), ids, num_segments=n + 1)[:n]
    last = jnp.clip(last, 0, r * t - 1)                  # empty slots: -inf -> position 0
    h_nd = jnp.take(self._rows_hidden(rows).reshape(r * t, -1), last, axis=0)
    rew = self._head(h_nd)
    return jnp.take_along_axis(rew.reshape(n_examples, n_slots), batch["slot_source"], axis=1)

  def rewards(self, batch, prefix: str = ""):
    """Rewards of a packed batch ``{prefix}input_ids, ...`` of shape [..., T] -> [...]."""
    ids = batch[prefix + "input_ids"]
    lead, t = ids.shape[:-1], ids.shape[-1]
    flat = lambda k: batch[prefix + k].reshape(-1, t)
    r = self(flat("input_ids"), flat("positions"), flat("segment_ids"), flat("loss_mask"))
    return r.reshape(lead)


def reward_params_from_backbone(reward_params: dict, backbone_params: dict) -> dict:
  """A reward model's pure params with the backbone replaced (e.g. by SFT params)."""
  out = dict(reward_params)
  out["backbone"] = backbone_params
  return out


def build_reward_model(c, tokenizer, model_cfg=None):
  """(model, graphdef, pure params) of a fresh ``RewardModel`` (``model_cfg`` or preset)."""
  mcfg = model_cfg or make_config(c.model.preset, vocab_size=tokenizer.vocab_size,
                                  overrides=c.model.overrides.to_dict())
  model = RewardModel(mcfg, nnx.Rngs(c.seed))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)
