"""Log-probabilities of given targets: per token, and summed over the completion only.

Two equal ways to get per-token log-probs ``log softmax(h W)[y]``:
  * plain: the model returns logits [B, T, V] in float32 and ``token_logprobs`` reads them;
  * chunked (``chunk_size=C``): the model returns its final-norm hidden state [B, T, D] and
    ``chunked_token_logprobs`` multiplies it by the unembedding C tokens at a time inside a
    ``lax.scan`` whose body is rematerialised (``jax.checkpoint``), so neither the forward
    nor the backward pass holds more than [C, V] logits (the plain path holds [B, T, V]
    float32 logits and as much again for their cotangent).

Rows in the prefix-shared / packed layouts (prefjax/data/layout.py) are reduced per
(example, response) slot with a segment sum (``slot_logps``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_btv, targets_bt):
  """log softmax(logits)[targets], (B, T), in float32."""
  logits = logits_btv.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)                                           # (B, T)
  picked = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]      # (B, T)
  return picked - lse


def chunked_token_logprobs(hidden_btd, w_dv, targets_bt, *, chunk_size: int,
                           softcap: float | None = None):
  """log softmax(softcap(h @ W))[y] per token, without materialising [B, T, V] logits.

  logits_n = float32(h_n @ W), optionally ``softcap * tanh(logits / softcap)`` (Gemma),
  exactly as ``Transformer.__call__`` computes them; tokens are flattened to N = B * T,
  padded to a multiple of ``chunk_size`` and scanned C at a time. The scan body is under
  ``jax.checkpoint``: the backward pass recomputes each chunk's logits instead of saving
  them, and accumulates dW over chunks.

  Args:
    hidden_btd: [B, T, D] final-norm hidden state (compute dtype).
    w_dv: [D, V] unembedding (cast to the hidden state's dtype, as the model does).
    targets_bt: [B, T] int target ids.
    chunk_size: tokens per chunk C (peak logits memory is C * V float32).
    softcap: the model's ``final_softcap`` or None.

  Returns:
    [B, T] float32 log-probs, equal to ``token_logprobs(model logits, targets)``.
  """
  b, t, d = hidden_btd.shape
  n = b * t
  c = max(1, min(int(chunk_size), n))
  n_chunks = -(-n // c)
  pad = n_chunks * c - n
  h_ncd = jnp.pad(hidden_btd.reshape(n, d), ((0, pad), (0, 0))).reshape(n_chunks, c, d)
  y_nc = jnp.pad(targets_bt.reshape(n), (0, pad)).reshape(n_chunks, c)
  w = w_dv.astype(hidden_btd.dtype)

  @jax.checkpoint
  def chunk(h_cd, y_c):
    logits_cv = (h_cd @ w).astype(jnp.float32)                                      # (C, V)
    if softcap is not None:
      logits_cv = softcap * jnp.tanh(logits_cv / softcap)
    lse = jax.nn.logsumexp(logits_cv, axis=-1)
    return jnp.take_along_axis(logits_cv, y_c[:, None], axis=-1)[:, 0] - lse        # (C,)

  _, out_nc = jax.lax.scan(lambda carry, xs: (carry, chunk(*xs)), None, (h_ncd, y_nc))
  return out_nc.reshape(-1)[:n].reshape(b, t)


def unembedding(model):
  """(W [D, V], final softcap or None) of a prefjax ``Transformer``."""
  w = model.embed[...].T if model.cfg.tie_embeddings else model.unembed[...]
  return w, model.cfg.final_softcap


def sequence_logps(logits_btv, targets_bt, loss_mask_bt):
  """Per-sequence sums over the completion (prompt and padding excluded).

  Returns:
    (logps [B], lengths [B] float, token_logps [B, T] masked to 0 outside the completion).
  """
  mask = loss_mask_bt.astype(jnp.float32)
  tok = token_logprobs(logits_btv, targets_bt) * mask
  return tok.sum(-1), mask.sum(-1), tok


def model_token_logps(model, ids_bt, positions_bt, segment_ids_bt, targets_bt, *,
                      chunk_size: int | None = None, branch_ids_bt=None):
  """[B, T] float32 log-probs of ``targets`` under ``model`` (plain or chunked).

  ``branch_ids_bt`` (prefix-shared rows) is passed to the model only when given, so
  models without that argument keep working on plain rows.
  """
  kw = {} if branch_ids_bt is None else {"branch_ids_bt": branch_ids_bt}
  if chunk_size:
    hidden, _ = model(ids_bt, positions_bt, segment_ids_bt, return_hidden=True, **kw)
    w, softcap = unembedding(model)
    return chunked_token_logprobs(hidden, w, targets_bt, chunk_size=chunk_size,
                                  softcap=softcap)
  logits, _ = model(ids_bt, positions_bt, segment_ids_bt, **kw)
  return token_logprobs(logits, targets_bt)


def forward_logps(model, batch, prefix: str = "", *, chunk_size: int | None = None):
  """Runs ``model`` on a packed batch and returns completion log-prob sums and lengths.

  ``batch`` holds ``{prefix}input_ids, {prefix}target_ids, {prefix}loss_mask,
  {prefix}positions, {prefix}segment_ids`` of shape [..., T]; leading axes are flattened
  for the forward pass and restored after (so [B, K, T] groups work unchanged).
  ``chunk_size``: None computes full logits; an int uses ``chunked_token_logprobs``.
  """
  ids = batch[prefix + "input_ids"]
  lead, t = ids.shape[:-1], ids.shape[-1]
  flat = lambda k: batch[prefix + k].reshape(-1, t)
  mask = flat("loss_mask").astype(jnp.float32)
  tok = model_token_logps(model, flat("input_ids"), flat("positions"), flat("segment_ids"),
                          flat("target_ids"), chunk_size=chunk_size) * mask
  return tok.sum(-1).reshape(lead), mask.sum(-1).reshape(lead), tok.reshape(*lead, t)


def slot_logps(model, batch, n_examples: int, n_slots: int, *, chunk_size: int | None = None):
  """Completion log-prob sums per (example, response slot) of a ``rows_*`` batch.

  sum_t tok[r, t] * loss_mask[r, t] grouped by slot id ``rows_slot_ids[r, t] =
  example * S + slot`` (-1 outside completions), a segment sum over all rows; slots whose
  responses are copies (padded group samples) read their source slot via
  ``slot_source`` [B, S].

  Returns:
    (logps [B, S], lengths [B, S] float).
  """
  mask = batch["rows_loss_mask"].astype(jnp.float32)                                # (R, T)
  tok = model_token_logps(model, batch["rows_input_ids"], batch["rows_positions"],
                          batch["rows_segment_ids"], batch["rows_target_ids"],
                          chunk_size=chunk_size, branch_ids_bt=batch["rows_branch_ids"])
  ids = batch["rows_slot_ids"].reshape(-1)
  n = n_examples * n_slots
  ids = jnp.where(ids < 0, n, ids)                    # non-completion tokens -> a dump slot
  sums = jax.ops.segment_sum((tok * mask).reshape(-1), ids, num_segments=n + 1)[:n]
  lens = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=n + 1)[:n]
  src = batch["slot_source"]                                                       # (B, S)
  logps = jnp.take_along_axis(sums.reshape(n_examples, n_slots), src, axis=1)
  lengths = jnp.take_along_axis(lens.reshape(n_examples, n_slots), src, axis=1)
  return logps, lengths
