"""Token-level reward-model loss: Bradley-Terry on summed token rewards (+ token labels).

With per-token rewards r_t on completion actions (mask m_t), a response's reward is the sum

  R(x, y) = sum_t m_t r_t

and the pair (edited y_w, original y_l), the edited one preferred, costs

  loss = -log sigmoid(R(x, y_w) - R(x, y_l))
         + label_coef * mean_t over y_l [ f_t softplus(r_t / tau) + (1 - f_t) (r_t / tau)^2 ]

where f_t = 1 on the tokens of y_l that the edit changed (the "flawed" tokens, from the edit
diff). The label term is optional (``label_coef = 0`` by default): it pushes flawed tokens
below zero (a logistic loss) and keeps the others near zero (a squared loss), our choice of
how token labels enter; see ``prefjax.rewards.token_model`` for what the paper supports.

Reference: Xu et al., "Aligning Large Language Models via Fine-grained Supervision",
arXiv 2406.02756.

Example:
  >>> loss_b, m = token_bt(chosen_token_rewards=rw_bt, rejected_token_rewards=rl_bt,
  ...                      chosen_mask=mw_bt, rejected_mask=ml_bt, rejected_flaw_labels=f_bt)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.registry import register


@register("token_bt", kind="token", needs_reference=False)
def token_bt(*, chosen_token_rewards, rejected_token_rewards, chosen_mask, rejected_mask,
             rejected_flaw_labels, label_coef=0.0, label_temperature=1.0):
  """Bradley-Terry on summed token rewards, edited (chosen) over original (rejected).

  Args:
    chosen_token_rewards, rejected_token_rewards: [B, T] per-token rewards.
    chosen_mask, rejected_mask: [B, T] completion-action masks.
    rejected_flaw_labels: [B, T] 1 on the original's flawed tokens (zeros when unknown).
    label_coef, label_temperature: weight and scale tau of the token-label term.
  Returns:
    (per-example losses [B], metrics): rewards/accuracies, rewards/margins, rewards/chosen,
    rewards/rejected ([B]) and token/label_loss ([B]).
  """
  mw, ml = chosen_mask.astype(jnp.float32), rejected_mask.astype(jnp.float32)
  rw = (chosen_token_rewards * mw).sum(-1)
  rl = (rejected_token_rewards * ml).sum(-1)
  diff = rw - rl
  z = rejected_token_rewards / label_temperature
  f = rejected_flaw_labels.astype(jnp.float32)
  lab = (f * jax.nn.softplus(z) + (1.0 - f) * jnp.square(z)) * ml
  label_loss = lab.sum(-1) / jnp.maximum(ml.sum(-1), 1.0)
  losses = -jax.nn.log_sigmoid(diff) + label_coef * label_loss
  metrics = {"rewards/accuracies": (diff > 0).astype(jnp.float32), "rewards/margins": diff,
             "rewards/chosen": rw, "rewards/rejected": rl, "token/label_loss": label_loss}
  return losses, metrics
