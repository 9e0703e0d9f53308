"""The PPO model: a policy LM plus an optional critic, one NNX module for the one step.

  critic = "shared":   V_t = w . h_t(policy backbone) + b        (value head on the policy)
  critic = "separate": V_t = w . h_t(critic backbone) + b        (e.g. initialised from a
                                                                  reward model's backbone)
  critic = "none":     V_t = 0                                    (GRPO, RLOO, REINFORCE++)

V_t is read at row index t, whose input prefix is input_ids[:t+1]: the state in which the
action target_ids[t] is taken (the same grid as log-probs and rewards). The value head
starts at zero. The policy's parameters are ``params["lm"]``, a plain ``Transformer``'s, so
the KV-cache sampler and the reference model use them unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.errors import ConfigError
from prefjax.models.config import ModelConfig
from prefjax.models.layers import param
from prefjax.models.logprobs import entropy_from_logits, hidden_token_logps, token_logprobs
from prefjax.models.transformer import Transformer

CRITICS = ("shared", "separate", "none")


class ActorCritic(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, critic: str = "shared"):
    if critic not in CRITICS:
      raise ConfigError(f"config.rl.critic: unknown critic {critic!r}; valid: {', '.join(CRITICS)}")
    self.critic = critic
    self.lm = Transformer(cfg, rngs)
    if critic == "separate":
      self.critic_backbone = Transformer(cfg, rngs)
    if critic != "none":
      pd = jnp.dtype(cfg.param_dtype)
      self.value_head = param(rngs, (cfg.dim,), ("embed",), init="zeros", dtype=pd)
      self.value_bias = param(rngs, (), (), init="zeros", dtype=pd)

  def _values(self, h_btd, tokens_bt, positions_bt, segment_ids_bt, branch_ids_bt=None):
    """[B, T] float32 values from the policy's hidden states (shared) or the critic's."""
    if self.critic == "none":
      return jnp.zeros(tokens_bt.shape, jnp.float32)
    if self.critic == "separate":
      h_btd, _ = self.critic_backbone(tokens_bt, positions_bt, segment_ids_bt,
                                      return_hidden=True, branch_ids_bt=branch_ids_bt)
    values = (h_btd.astype(jnp.float32) * self.value_head[...].astype(jnp.float32)).sum(-1)
    return values + self.value_bias[...].astype(jnp.float32)

  def __call__(self, tokens_bt, positions_bt, segment_ids_bt, branch_ids_bt=None):
    """(logits [B, T, V] float32, values [B, T] float32); ``branch_ids_bt``: prefix-shared
    rows (prefjax/data/layout.py)."""
    h, _ = self.lm(tokens_bt, positions_bt, segment_ids_bt, return_hidden=True,
                   branch_ids_bt=branch_ids_bt)
    return (self.lm.head(h),
            self._values(h, tokens_bt, positions_bt, segment_ids_bt, branch_ids_bt))

  def logps_and_values(self, batch, chunk_size=None):
    """Per-token log-probs of ``target_ids`` and values, [B, T] float32; with ``chunk_size``
    the vocabulary head runs in chunks on the ``loss_mask`` tokens only (no [B, T, V]).
    A ``branch_ids`` field marks prefix-shared rows."""
    args = (batch["input_ids"], batch["positions"], batch["segment_ids"])
    branch = batch.get("branch_ids")
    h, _ = self.lm(*args, return_hidden=True, branch_ids_bt=branch)
    lp = hidden_token_logps(self.lm, h, batch["target_ids"], chunk_size=chunk_size,
                            mask_bt=batch["loss_mask"].astype(jnp.float32))
    return lp, self._values(h, *args, branch)

  def evaluate(self, batch):
    """Per-token log-probs of ``target_ids``, entropies and values, each [B, T] float32."""
    logits, values = self(batch["input_ids"], batch["positions"], batch["segment_ids"],
                          batch.get("branch_ids"))
    return (token_logprobs(logits, batch["target_ids"]), entropy_from_logits(logits), values)


def with_policy(ac_params: dict, lm_params: dict) -> dict:
  """ActorCritic params with the policy LM replaced (e.g. by SFT params)."""
  out = dict(ac_params)
  out["lm"] = lm_params
  return out


def with_critic_backbone(ac_params: dict, backbone_params: dict, where: str = "critic") -> dict:
  """ActorCritic params whose critic backbone is ``backbone_params`` (a reward model's).

  A backbone whose structure, shapes or vocabulary differ from the critic's raises one
  ``ConfigError`` naming the first mismatching parameter.
  """
  if "critic_backbone" not in ac_params:
    raise ConfigError(f"{where}: the model has no separate critic (config.rl.critic='separate')")
  want = jax.tree_util.tree_flatten_with_path(ac_params["critic_backbone"])[0]
  got = dict(jax.tree_util.tree_flatten_with_path(backbone_params)[0])
  for path, x in want:
    y = got.get(path)
    if y is None or tuple(y.shape) != tuple(x.shape):
      raise ConfigError(
          f"{where}: backbone parameter {jax.tree_util.keystr(path)} has shape "
          f"{None if y is None else tuple(y.shape)}, the policy needs {tuple(x.shape)} "
          f"(vocabulary or model shape mismatch)")
  out = dict(ac_params)
  out["critic_backbone"] = backbone_params
  return out
