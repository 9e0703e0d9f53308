"""Log-probabilities of given targets: per token, and summed over the completion only."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_btv, targets_bt):
  """log softmax(logits)[targets], (B, T), in float32."""
  logits = logits_btv.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)                                           # (B, T)
  picked = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]      # (B, T)
  return picked - lse


def sequence_logps(logits_btv, targets_bt, loss_mask_bt):
  """Per-sequence sums over the completion (prompt and padding excluded).

  Returns:
    (logps [B], lengths [B] float, token_logps [B, T] masked to 0 outside the completion).
  """
  mask = loss_mask_bt.astype(jnp.float32)
  tok = token_logprobs(logits_btv, targets_bt) * mask
  return tok.sum(-1), mask.sum(-1), tok


def forward_logps(model, batch, prefix: str = ""):
  """Runs ``model`` on a packed batch and returns completion log-prob sums and lengths.

  ``batch`` holds ``{prefix}input_ids, {prefix}target_ids, {prefix}loss_mask,
  {prefix}positions, {prefix}segment_ids`` of shape [..., T]; leading axes are flattened
  for the forward pass and restored after (so [B, K, T] groups work unchanged).
  """
  ids = batch[prefix + "input_ids"]
  lead, t = ids.shape[:-1], ids.shape[-1]
  flat = lambda k: batch[prefix + k].reshape(-1, t)
  logits, _ = model(flat("input_ids"), flat("positions"), flat("segment_ids"))
  logps, lengths, tok = sequence_logps(logits, flat("target_ids"), flat("loss_mask"))
  return logps.reshape(lead), lengths.reshape(lead), tok.reshape(*lead, t)
