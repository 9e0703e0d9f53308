"""Scoring preference pairs: summed and per-token mean log-likelihoods, length-bucketed.

Two layouts with equal results (tests/eval/test_pair_scoring.py):
  * "prefix" (``score_pairs``'s default) / "packed" (``score_sequences``'s default):
    ``prefjax.eval.row_scoring``: a pair's prompt is run once for both responses
    (prefix-shared units), units are packed best-fit decreasing into rows of ``row_len``
    tokens, rows sorted into length buckets, the vocabulary head chunked over completion
    tokens only. Used for plain ``Transformer`` models; others fall back to "plain".
  * "plain": one row per sequence, described next.

In the plain layout every completion is packed (``prefjax.data.collate.pack``) at the smallest bucket length
that holds it, rows of one bucket are batched at a fixed batch size (the last batch padded
by repeating a row), and each batch goes through the jitted ``prefjax.eval.completion_scoring.completion_logps``.
So a whole dataset compiles at most one shape per bucket length (powers of two,
``pipeline.bucket_lengths(max_len, per_octave=1)``), whatever the spread of its lengths.

The scores are what Chen et al., "Preference Learning Algorithms Do Not Learn Preference
Rankings" (arXiv 2405.19534) rank with: R uses the summed log-likelihood
log pi(y|x) = sum_t log pi(y_t|x, y_<t), R-tilde its per-token mean.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from prefjax.data import pipeline
from prefjax.data.collate import pack, stack
from prefjax.errors import PrefjaxError
from prefjax.eval import row_scoring
from prefjax.eval.completion_scoring import completion_logps
from prefjax.models.logprobs import hidden_token_logps
from prefjax.models.transformer import Transformer

LAYOUTS = ("plain", "packed", "prefix")


@functools.partial(jax.jit, static_argnames=("graphdef", "width"))
def _score_window(graphdef, params, batch, start, width: int):
  """Completion log-prob sums with the vocabulary head run on a ``width`` window only.

  The body runs on the whole row; the head (``[B, width, V]`` instead of ``[B, T, V]``)
  only on positions ``start .. start + width - 1``, which hold every completion target of
  the row (callers choose ``start``, ``width``), so the sums equal ``forward_logps``'s.

  Returns:
    (logps [B], lengths [B]).
  """
  model = nnx.merge(graphdef, params)
  hidden, _ = model(batch["input_ids"], batch["positions"], batch["segment_ids"],
                    return_hidden=True)                                          # [B, T, D]
  idx = start[:, None] + jnp.arange(width)[None]                                 # [B, W]
  hw = jnp.take_along_axis(hidden, idx[..., None], axis=1)                       # [B, W, D]
  targets = jnp.take_along_axis(batch["target_ids"], idx, axis=1)
  mask = jnp.take_along_axis(batch["loss_mask"], idx, axis=1).astype(jnp.float32)
  return (hidden_token_logps(model, hw, targets) * mask).sum(-1), mask.sum(-1)


def _window_ok(graphdef) -> bool:
  """Whether the model is a plain ``Transformer`` (its hidden states and ``head`` used apart)."""
  nodes = getattr(graphdef, "nodes", None)
  return bool(nodes) and getattr(nodes[0], "type", None) is Transformer


def _window_width(need: int, length: int, step: int = 32) -> int:
  return min(length, -(-need // step) * step)


def packed_length(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> int:
  """Row length ``pack`` needs without truncation: len(prompt) + len(completion) - 1."""
  return len(prompt_ids) + len(completion_ids) - 1


@dataclasses.dataclass
class Scores:
  """Per-sequence scores, ``[N]`` each, in input order.

  Attributes:
    sums: summed completion log-probs log pi(y|x).
    lengths: completion token counts (EOS included).
    truncated: whether the prompt was cut from the left to fit ``max_len``.
    seconds: wall time of the forward passes (compiles included).
    num_shapes: how many (batch, length) shapes were run.
  """
  sums: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray
  seconds: float = 0.0
  num_shapes: int = 0

  @property
  def means(self) -> np.ndarray:
    """Per-token mean log-prob (R-tilde's score); 0 for an empty completion."""
    return self.sums / np.maximum(self.lengths, 1.0)

  @property
  def sequences_per_second(self) -> float:
    return len(self.sums) / max(self.seconds, 1e-9)


def score_sequences(graphdef, params, prompt_ids: Sequence[Sequence[int]],
                    completion_ids: Sequence[Sequence[int]], *, max_len: int,
                    batch_size: int = 32, smallest_bucket: int = 32,
                    batch_tokens: int | None = None, buckets: Sequence[int] | None = None,
                    window_head: bool = True, progress: bool = False,
                    desc: str = "scoring", layout: str = "packed", row_len: int | None = None,
                    chunk_size: int = 512, groups: Sequence[Sequence[int]] | None = None
                    ) -> Scores:
  """log pi(completion | prompt) of N sequences with length-bucketed jitted forward passes.

  Args:
    graphdef, params: the model (``nnx.split``; params a pure dict).
    prompt_ids, completion_ids: N token-id lists (prompt with BOS, completion with EOS).
    max_len: the longest row; longer prompts are cut from the left (counted in
      ``truncated``), a completion that cannot fit raises ``DataError`` (callers that
      must not fail check ``packed_length`` first).
    batch_size: rows per forward pass (the most, when ``batch_tokens`` is given).
    smallest_bucket: the first bucket length (then powers of two up to ``max_len``).
    batch_tokens: if given, a bucket of length L runs ``clamp(batch_tokens // L, 1,
      batch_size)`` rows per pass: short rows in large batches (both cores busy), long rows
      in small ones (bounded [rows, L, vocab] logits).
    buckets: explicit bucket lengths (sorted; ``max_len`` is added), instead of powers of two.
    window_head: plain layout: run the vocabulary head only on a window holding the
      completions (``_score_window``; same sums) when the model is a plain ``Transformer``.
    progress: show a tqdm bar over sequences.
    layout: "plain" (one row per sequence), "packed" (sequences packed into rows) or
      "prefix" (packed, the sequences of one ``groups`` entry sharing their prompt);
      "packed"/"prefix" need a plain ``Transformer`` and fall back to "plain" otherwise.
    row_len: packed rows' length (default ``max_len``); a prefix-shared unit or sequence
      longer than that (up to max(row_len, max_len)) is a row of its own.
    chunk_size: packed layouts: tokens per vocabulary-head chunk.
    groups: "prefix": lists of sequence indices with the same prompt (default: none).

  Returns:
    ``Scores`` with ``[N]`` arrays in input order.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown scoring layout {layout!r}; expected one of {LAYOUTS}")
  n = len(prompt_ids)
  window_head = window_head and _window_ok(graphdef)
  if buckets is None:
    buckets = list(pipeline.bucket_lengths(max_len, smallest_bucket, per_octave=1))
  else:
    buckets = sorted({int(b) for b in buckets if 0 < b < max_len} | {max_len})
  if layout != "plain" and _window_ok(graphdef):
    return _score_rows(graphdef, params, prompt_ids, completion_ids, max_len=max_len,
                       buckets=buckets, row_len=row_len or max_len, batch_size=batch_size,
                       batch_tokens=batch_tokens, chunk_size=chunk_size, progress=progress,
                       desc=desc, groups=groups if layout == "prefix" else None)
  groups: dict[int, list[int]] = {}
  for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
    need = packed_length(p, c)
    length = next((b for b in buckets if b >= need), max_len)
    groups.setdefault(length, []).append(i)
  sums, lengths = np.zeros(n, np.float32), np.zeros(n, np.float32)
  truncated = np.zeros(n, bool)
  bar = tqdm(total=n, desc=desc, disable=not progress, dynamic_ncols=True, unit="seq")
  t0, shapes = time.perf_counter(), 0
  for length in sorted(groups):
    idx = groups[length]
    shapes += 1
    rows_per_pass = (batch_size if batch_tokens is None
                     else max(1, min(batch_size, batch_tokens // length)))
    # one head window per bucket (its longest completion), so still one shape per bucket
    width = _window_width(max(len(completion_ids[i]) for i in idx), length)
    windowed = window_head and width < length
    for s in range(0, len(idx), rows_per_pass):
      chunk = idx[s:s + rows_per_pass]
      rows, starts = [], []
      for i in chunk:
        row, cut = pack(prompt_ids[i], completion_ids[i], length, where=f"sequence {i}")
        rows.append(row)
        truncated[i] = cut
        first = int(np.argmax(row["loss_mask"] > 0))
        starts.append(min(first, length - width))
      rows += [rows[-1]] * (rows_per_pass - len(rows))  # fixed shape: repeat a row
      starts += [starts[-1]] * (rows_per_pass - len(starts))
      if windowed:
        lp, ln = _score_window(graphdef, params, stack(rows), np.asarray(starts, np.int32),
                               width)
      else:
        lp, ln = completion_logps(graphdef, params, stack(rows))
      sums[chunk] = np.asarray(lp)[:len(chunk)]
      lengths[chunk] = np.asarray(ln)[:len(chunk)]
      bar.update(len(chunk))
  bar.close()
  return Scores(sums, lengths, truncated, time.perf_counter() - t0, shapes)


def _score_rows(graphdef, params, prompt_ids, completion_ids, *, max_len, buckets, row_len,
                groups, **kw) -> Scores:
  """``score_sequences`` on packed (and, with ``groups``, prefix-shared) rows."""
  n = len(prompt_ids)
  groups = [list(g) for g in groups or ()]
  grouped = [i for g in groups for i in g]
  if len(set(grouped)) != len(grouped):
    raise ValueError("scoring groups overlap")
  groups += [[i] for i in sorted(set(range(n)) - set(grouped))]
  for g in groups:
    if any(list(prompt_ids[i]) != list(prompt_ids[g[0]]) for i in g[1:]):
      raise ValueError(f"scoring group {g} mixes prompts")
  window = nnx.merge(graphdef, params).cfg.sliding_window
  units, truncated = row_scoring.make_units(
      [prompt_ids[g[0]] for g in groups], groups, completion_ids, max_len=max_len,
      row_len=row_len, window=window)
  longer = pipeline.bucket_lengths(max(row_len, max_len), buckets[0], per_octave=1)
  buckets = sorted(set(buckets) | {b for b in longer if b > max_len})
  sums, lengths, seconds, shapes = row_scoring.score_units(
      graphdef, params, units, n, row_len=row_len, buckets=buckets, **kw)
  return Scores(sums, lengths, truncated, seconds, shapes)


def encode_pairs(tokenizer, pairs: Sequence[dict], *, max_len: int):
  """Tokenises pairs ``{"prompt" | "chat", "chosen", "rejected"}``; drops what can't fit.

  The prompt goes through ``tokenizer.encode_prompt`` (given the chat messages when the
  pair has them and the tokenizer takes messages, else the prompt text, which a chat
  template wraps as one user turn). With a chat template the completions are stripped of
  surrounding whitespace, as the turns of ``chat`` are (HH-RLHF responses start with a
  space after ``Assistant:``); without one they are encoded as given.

  Returns:
    ``(prompts, chosen, rejected, kept, dropped)``: id lists of the kept pairs, their
    indices into ``pairs``, and ``(index, reason)`` for pairs that cannot be scored (a
    completion longer than ``max_len``, a character the tokenizer rejects).
  """
  templated = bool(getattr(tokenizer, "chat_template", None))
  prompts, chosen, rejected, kept, dropped = [], [], [], [], []
  for i, ex in enumerate(pairs):
    try:
      prompt = tokenizer.encode_prompt(ex.get("chat") or ex["prompt"])
      sides = [ex[side] for side in ("chosen", "rejected")]
      if templated:  # the template writes an assistant turn's content stripped, as in ex["chat"]
        sides = [s.strip() for s in sides]
      ids = [tokenizer.encode_completion(s) for s in sides]
    except (ValueError, KeyError, TypeError, PrefjaxError) as e:
      dropped.append((i, f"cannot tokenise: {e}"))
      continue
    too_long = [len(c) for c in ids if len(c) > max_len]
    if too_long:
      dropped.append((i, f"completion of {max(too_long)} tokens exceeds max_len={max_len}"))
      continue
    if any(len(c) == 0 for c in ids):
      dropped.append((i, "empty completion"))
      continue
    prompts.append(prompt)
    chosen.append(ids[0])
    rejected.append(ids[1])
    kept.append(i)
  return prompts, chosen, rejected, kept, dropped


def score_pairs(graphdef, params, prompts, chosen, rejected, *, layout: str = "prefix",
                **kw) -> tuple[Scores, Scores]:
  """``score_sequences`` on chosen and rejected in one pass: ``(chosen, rejected)``.

  With ``layout="prefix"`` (default) each pair's prompt is run once for both responses.
  """
  n = len(prompts)
  groups = [[i, n + i] for i in range(n)] if layout == "prefix" else None
  both = score_sequences(graphdef, params, list(prompts) * 2, list(chosen) + list(rejected),
                         layout=layout, groups=groups, **kw)
  part = lambda s: Scores(both.sums[s], both.lengths[s], both.truncated[s], both.seconds,
                          both.num_shapes)
  return part(slice(0, n)), part(slice(n, None))

