"""Reading reward-score files (jsonl or csv) for calibration, with per-row validation.

One row per scored response: ``reward``, a feature column or a ``text`` to compute it from,
and optionally ``id``, ``pair_id`` and a ``chosen`` / ``label`` flag. A row that cannot be used
(malformed JSON, NaN or infinite reward, missing feature, bad label) is skipped and recorded as
a ``BadRow`` with its line number; the rest of the file is still read. A file that cannot be
used at all (missing, empty, a required column absent from every row) raises ``ScoresError``
with a one-line message.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from prefjax.rewards import features as features_lib

_TRUE = {"1", "true", "chosen", "yes", "win", "winner", "preferred"}
_FALSE = {"0", "false", "rejected", "no", "lose", "loser"}


class ScoresError(Exception):
  """A score file that cannot be calibrated; ``str(e)`` is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class BadRow:
  """A skipped row: 1-based line number, the offending field and why."""
  line: int
  field: str
  message: str

  def describe(self, path: str) -> str:
    return f"{path}:{self.line}: field '{self.field}': {self.message}"


@dataclasses.dataclass
class Scores:
  """The valid rows of a score file; arrays are ``[N]`` over valid rows, in file order.

  chosen: 1 chosen, 0 rejected, -1 no label. pair_ids: str or None per row.
  """
  path: str
  feature: str
  rows: list[dict[str, Any]]
  lines: np.ndarray
  rewards: np.ndarray
  features: np.ndarray
  chosen: np.ndarray
  pair_ids: list[str | None]
  bad_rows: list[BadRow]
  num_records: int

  def pairs(self) -> tuple[np.ndarray, np.ndarray, int]:
    """``([P] chosen row index, [P] rejected row index, number of incomplete pair ids)``.

    A complete pair is a pair_id with exactly two valid rows, one chosen and one rejected.
    """
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(self.pair_ids):
      if pid is not None:
        groups.setdefault(pid, []).append(i)
    win, lose, incomplete = [], [], 0
    for idx in groups.values():
      labels = sorted(int(self.chosen[i]) for i in idx)
      if len(idx) == 2 and labels == [0, 1]:
        a, b = idx
        win.append(a if self.chosen[a] == 1 else b)
        lose.append(b if self.chosen[a] == 1 else a)
      else:
        incomplete += 1
    return np.asarray(win, np.int64), np.asarray(lose, np.int64), incomplete

  def partner(self) -> np.ndarray:
    """``[N]`` index of the other row of the row's complete pair, -1 if none."""
    out = np.full(len(self.rows), -1, np.int64)
    win, lose, _ = self.pairs()
    out[win], out[lose] = lose, win
    return out


def _records(path: str) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
  """Yields (line number, row dict or BadRow) for every non-blank record of the file."""
  is_csv = path.lower().endswith(".csv")
  with open(path, newline="" if is_csv else None, encoding="utf-8") as f:
    if is_csv:
      reader = csv.DictReader(f)
      header_len = len(reader.fieldnames or [])
      last_line = reader.line_num
      for row in reader:
        line, last_line = last_line + 1, reader.line_num
        if None in row:
          yield line, BadRow(line, "<row>", f"has more fields than the header's {header_len}")
          continue
        yield line, {k: (None if v in (None, "") else v) for k, v in row.items()}
      return
    for line, text in enumerate(f, start=1):
      if not text.strip():
        continue
      try:
        row = json.loads(text)
      except json.JSONDecodeError as e:
        yield line, BadRow(line, "<json>", f"malformed JSON ({e.msg} at column {e.colno})")
        continue
      if not isinstance(row, dict):
        yield line, BadRow(line, "<json>", f"not a JSON object ({type(row).__name__})")
        continue
      yield line, row


def _number(value: Any) -> float | str:
  """The finite float in ``value``, or a string saying what is wrong with it."""
  if value is None:
    return "missing"
  if isinstance(value, bool):
    return f"not a number ({value!r})"
  try:
    out = float(value)
  except (TypeError, ValueError):
    return f"not a number ({str(value)[:40]!r})"
  return out if math.isfinite(out) else f"not finite ({out})"


def _label(value: Any) -> int | str:
  if value is None:
    return -1
  key = str(value).strip().lower()
  if isinstance(value, bool):
    key = "true" if value else "false"
  elif isinstance(value, (int, float)) and value in (0, 1):
    key = str(int(value))
  if key in _TRUE:
    return 1
  if key in _FALSE:
    return 0
  return f"not a chosen/rejected label ({str(value)[:40]!r})"


def read_scores(path: str, *, feature: str = "chars", reward_field: str = "reward",
                text_field: str = "text", pair_field: str = "pair_id",
                label_fields: Sequence[str] = ("chosen", "label"),
                tokenize: Callable[[str], Sequence] | None = None,
                progress: bool | None = None) -> Scores:
  """Reads and validates a score file (``.csv``, else JSON lines).

  The feature is the numeric column named ``feature`` when the row has one, else the
  registered text feature of that name (chars, tokens, markdown) computed from ``text_field``.

  Args:
    path: the score file.
    feature: column name or registered feature name.
    reward_field, text_field, pair_field: column names.
    label_fields: the first of these present in a row is its chosen flag.
    tokenize: tokenizer for the "tokens" feature (default whitespace).
    progress: tqdm bar (None: only on a terminal).

  Returns:
    ``Scores`` holding the valid rows and the list of bad rows.

  Raises:
    ScoresError: the file is missing or empty, or reward / feature is absent from every row.
  """
  if not os.path.isfile(path):
    raise ScoresError(f"{path}: no such file")
  text_feature = None
  if feature in features_lib.names():
    text_feature = features_lib.get(feature)
    if feature == "tokens" and tokenize is not None:
      text_feature = lambda texts: features_lib.token_length(texts, tokenize)  # noqa: E731
  rows, lines, rewards, feats, chosen, pair_ids, bad = [], [], [], [], [], [], []
  num_records = num_dicts = missing_reward = missing_feature = 0
  try:
    for line, row in tqdm(_records(path), desc=f"reading {os.path.basename(path)}",
                          unit=" rows", disable=None if progress is None else not progress):
      num_records += 1
      if isinstance(row, BadRow):
        bad.append(row)
        continue
      num_dicts += 1
      reward = _number(row.get(reward_field))
      if row.get(reward_field) is None:
        missing_reward += 1
      if isinstance(reward, str):
        bad.append(BadRow(line, reward_field, reward))
        continue
      if row.get(feature) is not None:
        value = _number(row[feature])
      elif text_feature is not None and isinstance(row.get(text_field), str):
        value = float(text_feature([row[text_field]])[0])
      else:
        missing_feature += 1
        how = (f"no '{feature}' column and no '{text_field}' field to compute it from"
               if text_feature is not None else f"no '{feature}' column")
        bad.append(BadRow(line, feature, f"missing ({how})"))
        continue
      if isinstance(value, str):
        bad.append(BadRow(line, feature, value))
        continue
      label_field = next((k for k in label_fields if row.get(k) is not None), None)
      label = _label(row.get(label_field)) if label_field else -1
      if isinstance(label, str):
        bad.append(BadRow(line, label_field, label))
        continue
      pid = row.get(pair_field)
      rows.append(row)
      lines.append(line)
      rewards.append(reward)
      feats.append(value)
      chosen.append(label)
      pair_ids.append(None if pid is None else str(pid))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ScoresError(f"{path}: cannot read ({type(e).__name__}: {e})".replace("\n", " "))
  if num_records == 0:
    raise ScoresError(f"{path}: no rows")
  if num_dicts and missing_reward == num_dicts:
    raise ScoresError(f"{path}: required column '{reward_field}' is missing in every row")
  if num_dicts and missing_feature == num_dicts:
    raise ScoresError(f"{path}: feature '{feature}' is missing in every row"
                      + (f" (no '{feature}' column, no '{text_field}' field)"
                         if text_feature is not None else f" (no '{feature}' column)"))
  return Scores(path=path, feature=feature, rows=rows, lines=np.asarray(lines, np.int64),
                rewards=np.asarray(rewards, np.float64), features=np.asarray(feats, np.float64),
                chosen=np.asarray(chosen, np.int8), pair_ids=pair_ids, bad_rows=bad,
                num_records=num_records)


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_jsonl(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """Writes one JSON object per line; numpy scalars become Python, NaN/inf become null."""
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
