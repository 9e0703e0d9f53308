"""Prefix-shared update rows: each group of samples of one prompt in one row, the prompt once.

A grouped rollout (GRPO, RLOO, Dr. GRPO: ``group_size`` G > 1) repeats each prompt G times,
one plain row [prompt | completion_j] per sample. An update over whole groups computes each
prompt once instead: one row per group, laid out as a unit of ``prefjax/data/layout.py``,

    prompt[:-1] | p_last c_1[:-1] | p_last c_2[:-1] | ... | p_last c_G[:-1]

whose branch mask lets completion j see the prompt and itself only, at the positions it has
in its own plain row, so its log-probs (and a critic's values) equal the plain row's. With
one-shot prompts of ~120 tokens and answers of ~8, a group of 8 needs ~180 tokens where
plain rows need ~1,000.

``group_rows`` builds the ``rows_*`` arrays [R, T'] (R = groups) and ``rows_gather`` [B, T]:
for each plain row's action t, the column of its group's row that predicts the same token.
The "ppo" forward (``prefjax/train/objective.py``) runs the model on the rows and gathers its
outputs back onto the plain rows' action grid, where every other per-token field
(advantages, old and reference log-probs, masks) stays as the rollout made it.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from prefjax.data import layout, pipeline

ROWS = ("input_ids", "target_ids", "positions", "segment_ids", "branch_ids", "loss_mask")


def max_row_len(prompt_len: int, group_size: int, max_new_tokens: int) -> int:
  """The longest group row: a prompt of ``prompt_len`` tokens and G full-length answers."""
  return prompt_len - 1 + group_size * max_new_tokens


def group_rows(input_ids, target_ids, completion_mask, group_size: int, *,
               max_len: int | None = None, per_octave: int = 4) -> dict:
  """The prefix-shared rows of B plain rollout rows (consecutive groups of ``group_size``
  samples of one prompt; numpy [B, T]).

  ``completion_mask`` [B, T] marks each row's completion actions (one contiguous run, the
  rollout's ``completion_mask`` before any validity mask). Rows are cut to the first of
  ``pipeline.bucket_lengths(max_len, per_octave=...)`` that holds the longest group, so a
  stage compiles a few shapes (``max_len``: ``max_row_len``; default the longest group).

  Returns ``rows_{input_ids,target_ids,positions,segment_ids,branch_ids,loss_mask}``
  [R, T'] int32 and ``rows_gather`` [B, T] int32 (0 off the completion actions).
  """
  ids, tgt = np.asarray(input_ids), np.asarray(target_ids)
  comp = np.asarray(completion_mask) > 0
  b, t = ids.shape
  if group_size < 1 or b % group_size:
    raise ValueError(f"group_rows: {b} rows are not whole groups of {group_size}")
  units, gather = [], np.zeros((b, t), np.int32)
  for g in range(b // group_size):
    prompt, answers, starts = None, [], []
    for i in range(g * group_size, (g + 1) * group_size):
      act = np.flatnonzero(comp[i])
      if not act.size:
        raise ValueError(f"group_rows: row {i} has no completion action")
      a0, n = int(act[0]), int(act.size)
      if act[-1] != a0 + n - 1:
        raise ValueError(f"group_rows: row {i}'s completion actions are not contiguous")
      p = ids[i, :a0 + 1]
      if prompt is None:
        prompt = p
      elif len(p) != len(prompt) or np.any(p != prompt):
        raise ValueError(f"group_rows: row {i} does not share its group's prompt "
                         f"(rows {g * group_size}..{(g + 1) * group_size - 1})")
      answers.append(tgt[i, a0:a0 + n])
      starts.append(a0)
    unit = layout.unit_arrays(list(prompt), [list(a) for a in answers],
                              list(range(group_size)), g, group_size)
    col = len(prompt) - 1
    for j, (a0, ans) in enumerate(zip(starts, answers)):
      i = g * group_size + j
      gather[i, a0:a0 + len(ans)] = np.arange(col, col + len(ans))
      col += len(ans)
    units.append(unit)
  longest = max(len(u["input_ids"]) for u in units)
  cap = max(max_len or longest, longest)
  width = next(n for n in pipeline.bucket_lengths(cap, per_octave=per_octave) if n >= longest)
  out = {f"rows_{k}": np.zeros((len(units), width), np.int32) for k in ROWS}
  for r, u in enumerate(units):
    n = len(u["input_ids"])
    for k in ROWS:
      out[f"rows_{k}"][r, :n] = 1 if k == "segment_ids" else u[k]
  out["rows_gather"] = gather
  return out


def edit_pair_rows(batch: dict, width: int | None = None) -> dict:
  """``batch`` (``prefjax.rewards.token_model.encode_edit_pair`` rows, numpy) plus each pair
  as one prefix-shared row ``[prompt | edited | original]`` (``group_rows``, groups of 2):
  the prompt is computed once, and the "token" forward (``prefjax/train/objective.py``)
  reads both sides' token rewards from it, equal to the plain rows'. ``width``: the rows'
  length (default: a bucket of the longest); a fixed width keeps one compiled shape."""
  n, t = batch["chosen_input_ids"].shape
  joint = {k: np.stack([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], 1).reshape(2 * n, t)
           for k in ("input_ids", "target_ids", "loss_mask")}
  live = np.asarray(batch["example_mask"]) > 0
  if not live.all():              # padding examples of a last batch: copies of a live one
    pair = np.where(live, np.arange(n), int(np.argmax(live)))
    src = (2 * pair[:, None] + np.array([0, 1])).reshape(-1)    # its (edited, original) rows
    joint = {k: v[src] for k, v in joint.items()}
  rows = group_rows(joint["input_ids"], joint["target_ids"], joint["loss_mask"], 2,
                    max_len=width)
  if width is not None and rows["rows_input_ids"].shape[1] != width:
    w = rows["rows_input_ids"].shape[1]
    if w > width:
      raise ValueError(f"edit_pair_rows: a pair needs {w} tokens, more than width={width}")
    rows = {k: (np.pad(v, ((0, 0), (0, width - w))) if k != "rows_gather" else v)
            for k, v in rows.items()}
  return dict(batch, **rows)


def is_grouped(batch) -> bool:
  """True for a minibatch laid out by ``group_rows``."""
  return "rows_gather" in batch


def unit_view(batch) -> dict:
  """The group rows of a ``group_rows`` batch under the plain field names (+ branch_ids)."""
  return {k: batch[f"rows_{k}"] for k in ROWS}


def to_plain(x_rt, gather_bt):
  """Per-token outputs of the group rows [R, T'] on the plain rows' grid [B, T] (B = R * G):
  row b reads its own group's row only, so a batch split over devices by rows stays local."""
  r = x_rt.shape[0]
  b, t = gather_bt.shape
  out = jnp.take_along_axis(x_rt, gather_bt.reshape(r, (b // r) * t), axis=1)
  return out.reshape(b, t)
