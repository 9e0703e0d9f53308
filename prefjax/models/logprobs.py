"""Log-probabilities of given targets: per token, and summed over the completion only.

Two equal ways to get per-token log-probs ``log softmax(h W)[y]``:
  * plain: the model returns logits [B, T, V] in float32 and ``token_logprobs`` reads them;
  * chunked (``chunk_size=C``): the model returns its final-norm hidden state [B, T, D] and
    ``chunked_token_logprobs`` multiplies it by the unembedding C tokens at a time inside a
    ``lax.scan`` with a custom VJP that recomputes each chunk's logits in the backward pass,
    so neither pass holds more than [C, V] logits (the plain path holds [B, T, V] float32
    logits and as much again for their cotangent).

Rows in the prefix-shared / packed layouts (prefjax/data/layout.py) are reduced per
(example, response) slot with a segment sum (``slot_logps``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from prefjax.models.layers import transposed


def token_logprobs(logits_btv, targets_bt):
  """log softmax(logits)[targets], (B, T), in float32."""
  logits = logits_btv.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)                                           # (B, T)
  picked = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]      # (B, T)
  return picked - lse


def entropy_from_logits(logits_btv):
  """H(softmax(logits)) per position, [B, T]."""
  logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
  return -(jnp.exp(logp) * logp).sum(-1)


def _chunk_logits(h_cd, w, vocab_major: bool, softcap):
  """float32 [C, V] logits as the model computes them (W cast to the hidden dtype)."""
  spec = "cd,vd->cv" if vocab_major else "cd,dv->cv"
  logits = jnp.einsum(spec, h_cd, w.astype(h_cd.dtype)).astype(jnp.float32)
  return logits if softcap is None else softcap * jnp.tanh(logits / softcap)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked(h_ncd, w, y_nc, active_n, vocab_major, softcap):
  return _chunked_fwd(h_ncd, w, y_nc, active_n, vocab_major, softcap)[0]


def _skippable(active, compute, skipped):
  """``compute()``, or ``skipped()`` for a chunk that holds no wanted token (a real branch:
  the chunk's [C, V] logits are never computed)."""
  return compute() if active is None else jax.lax.cond(active, compute, skipped)


def _chunked_fwd(h_ncd, w, y_nc, active_n, vocab_major, softcap):
  def body(_, xs):
    h_cd, y_c, active = xs

    def compute():
      logits = _chunk_logits(h_cd, w, vocab_major, softcap)                       # (C, V)
      lse = jax.nn.logsumexp(logits, axis=-1)
      return jnp.take_along_axis(logits, y_c[:, None], axis=-1)[:, 0] - lse, lse

    zeros = lambda: (jnp.zeros(y_c.shape, jnp.float32),) * 2
    return None, _skippable(active, compute, zeros)

  _, (out_nc, lse_nc) = jax.lax.scan(body, None, (h_ncd, y_nc, active_n))
  return out_nc, (h_ncd, w, y_nc, active_n, lse_nc)


def _chunked_bwd(vocab_major, softcap, res, g_nc):
  """d/dlogits (logits[y] - lse) = onehot(y) - softmax; the chunk's logits are recomputed."""
  h_ncd, w, y_nc, active_n, lse_nc = res
  dtype = h_ncd.dtype
  wc = w.astype(dtype)

  def body(dw, xs):
    h_cd, y_c, lse_c, g_c, active = xs

    def compute():
      logits = _chunk_logits(h_cd, w, vocab_major, softcap)                       # (C, V)
      g_cv = -g_c[:, None] * jnp.exp(logits - lse_c[:, None])
      g_cv = g_cv.at[jnp.arange(y_c.shape[0]), y_c].add(g_c)
      if softcap is not None:                 # d/dx softcap*tanh(x/softcap) = 1 - tanh^2
        g_cv = g_cv * (1.0 - jnp.square(logits / softcap))
      g_cv = g_cv.astype(dtype)
      dh = jnp.einsum("cv,vd->cd" if vocab_major else "cv,dv->cd", g_cv, wc)
      # dW as [D, V] = h^T g: a canonical dot on CPU (layers.transposed); transposed once at
      # the end for a vocab-major (tied) table
      return dw + (transposed(h_cd) @ g_cv).astype(jnp.float32), dh

    return _skippable(active, compute, lambda: (dw, jnp.zeros_like(h_cd)))

  d, v = h_ncd.shape[-1], w.shape[0 if vocab_major else 1]
  dw_dv, dh_ncd = jax.lax.scan(body, jnp.zeros((d, v), jnp.float32),
                               (h_ncd, y_nc, lse_nc, g_nc, active_n))
  return dh_ncd, (dw_dv.T if vocab_major else dw_dv).astype(w.dtype), None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_token_logprobs(hidden_btd, w, targets_bt, *, chunk_size: int,
                           softcap: float | None = None, vocab_major: bool = False,
                           mask_bt=None):
  """log softmax(softcap(h @ W))[y] per token, without materialising [B, T, V] logits.

  logits_n = float32(h_n @ W), optionally ``softcap * tanh(logits / softcap)`` (Gemma),
  exactly as ``Transformer.__call__`` computes them; tokens are flattened to N = B * T,
  padded to a multiple of ``chunk_size`` and scanned C at a time. A custom VJP saves only
  h, W and the per-token log-sum-exp; the backward pass recomputes each chunk's logits and
  accumulates dW = sum_n h_n (g_n (onehot(y_n) - softmax_n)) in one float32 buffer.

  With ``mask_bt`` only the wanted tokens' log-probs are computed: each row's wanted tokens
  are moved to its front (a stable per-row sort, so the batch axis keeps its sharding) and
  a chunk with none of them is skipped in both passes (``lax.cond``). In prefix-shared and
  packed DPO rows most positions are prompt or padding, whose logits the loss never reads.

  Args:
    hidden_btd: [B, T, D] final-norm hidden state (compute dtype).
    w: the unembedding, [D, V], or [V, D] with ``vocab_major=True`` (a tied embedding table,
      used without a transposed copy); cast to the hidden state's dtype, as the model does.
    targets_bt: [B, T] int target ids.
    chunk_size: tokens per chunk C (peak logits memory is a few C * V float32).
    softcap: the model's ``final_softcap`` or None.
    mask_bt: optional [B, T] (nonzero = wanted, e.g. the loss mask).

  Returns:
    [B, T] float32 log-probs, equal to ``token_logprobs(model logits, targets)``; with
    ``mask_bt``, 0 where the mask is 0.
  """
  b, t, d = hidden_btd.shape
  if mask_bt is not None:
    wanted = jnp.asarray(mask_bt) != 0
    order = jnp.argsort(~wanted, axis=-1, stable=True)                # wanted tokens first
    hidden_btd = jnp.take_along_axis(hidden_btd, order[..., None], axis=1)
    targets_bt = jnp.take_along_axis(jnp.asarray(targets_bt), order, axis=1)
    wanted_sorted = jnp.take_along_axis(wanted, order, axis=1)
  n = b * t
  c = max(1, min(int(chunk_size), n))
  n_chunks = -(-n // c)
  pad = n_chunks * c - n
  h_ncd = jnp.pad(hidden_btd.reshape(n, d), ((0, pad), (0, 0))).reshape(n_chunks, c, d)
  y_nc = jnp.pad(targets_bt.reshape(n), (0, pad)).reshape(n_chunks, c)
  active_n = None
  if mask_bt is not None:
    active_n = jnp.pad(wanted_sorted.reshape(n), (0, pad)).reshape(n_chunks, c).any(-1)
  out_nc = _chunked(h_ncd, w, y_nc, active_n, bool(vocab_major),
                    None if softcap is None else float(softcap))
  out = out_nc.reshape(-1)[:n].reshape(b, t)
  if mask_bt is None:
    return out
  out = jnp.take_along_axis(out, jnp.argsort(order, axis=-1), axis=1)   # back in row order
  return jnp.where(wanted, out, 0.0)


def sequence_logps(logits_btv, targets_bt, loss_mask_bt):
  """Per-sequence sums over the completion (prompt and padding excluded).

  Returns:
    (logps [B], lengths [B] float, token_logps [B, T] masked to 0 outside the completion).
  """
  mask = loss_mask_bt.astype(jnp.float32)
  tok = token_logprobs(logits_btv, targets_bt) * mask
  return tok.sum(-1), mask.sum(-1), tok


def model_token_logps(model, ids_bt, positions_bt, segment_ids_bt, targets_bt, *,
                      chunk_size: int | None = None, branch_ids_bt=None, mask_bt=None):
  """[B, T] float32 log-probs of ``targets`` under ``model`` (plain or chunked).

  ``mask_bt`` (chunked only): the tokens whose log-probs are wanted; the vocabulary head
  skips chunks without any (others may read 0).

  ``branch_ids_bt`` (prefix-shared rows) is passed to the model only when given, so
  models without that argument keep working on plain rows.
  """
  kw = {} if branch_ids_bt is None else {"branch_ids_bt": branch_ids_bt}
  hidden, _ = model(ids_bt, positions_bt, segment_ids_bt, return_hidden=True, **kw)
  return hidden_token_logps(model, hidden, targets_bt, chunk_size=chunk_size, mask_bt=mask_bt)


def hidden_token_logps(model, hidden_btd, targets_bt, *, chunk_size: int | None = None,
                       mask_bt=None):
  """[B, T] float32 log-probs of ``targets`` from final-norm hidden states: the model's
  head (``model.head``) on every token, or with ``chunk_size`` the chunked head on the
  ``mask_bt`` tokens only (no [B, T, V] logits; others may read 0)."""
  if chunk_size:
    w, vocab_major, softcap = model.unembedding()
    return chunked_token_logprobs(hidden_btd, w, targets_bt, chunk_size=chunk_size,
                                  softcap=softcap, vocab_major=vocab_major, mask_bt=mask_bt)
  return token_logprobs(model.head(hidden_btd), targets_bt)


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
                          flat("target_ids"), chunk_size=chunk_size, mask_bt=mask) * mask
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
                          chunk_size=chunk_size, branch_ids_bt=batch["rows_branch_ids"],
                          mask_bt=mask)
  ids = batch["rows_slot_ids"].reshape(-1)
  n = n_examples * n_slots
  ids = jnp.where(ids < 0, n, ids)                    # non-completion tokens -> a dump slot
  sums = jax.ops.segment_sum((tok * mask).reshape(-1), ids, num_segments=n + 1)[:n]
  lens = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=n + 1)[:n]
  src = batch["slot_source"]                                                       # (B, S)
  logps = jnp.take_along_axis(sums.reshape(n_examples, n_slots), src, axis=1)
  lengths = jnp.take_along_axis(lens.reshape(n_examples, n_slots), src, axis=1)
  return logps, lengths
