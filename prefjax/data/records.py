"""Readers of training files -> native records (pairs, groups, sft rows, unpaired rows).

Each reader takes a path (``chat=`` as in ``prefjax.data.file_sources``) and returns ``Raw``: the
usable records of what the file holds, plus every row it could not use, counted by reason
and located (``"file:line"``). A bad row is reported, never fatal; a file that cannot be
read at all raises ``DataError`` (one line naming it).

Groups (``multi`` examples) are ``{"id", "prompt", "chosen": [...], "rejected": [...],
"chosen_scores", "rejected_scores"}`` with ``chosen`` sorted best first and ``rejected``
worst first, so cutting a side to its first k keeps the k most decisive responses.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import math
import os
import re

from prefjax.data.preference_files import (
    PreferenceFileError, ReadResult, read_preferences, read_rows)
from prefjax.data.preference_formats import RowError, chat_messages
from prefjax.errors import DataError

MAX_SKIPPED_ROWS = 20


@dataclasses.dataclass
class Raw:
  """A reader's output: native records plus what it skipped."""
  records: list
  skipped: collections.Counter
  skipped_rows: list
  native: str


def reason_key(message: str) -> str:
  """A countable reason: the message without parenthesised details."""
  return re.sub(r"\s*\([^()]*\)", "", str(message)).strip()[:120] or "unknown"


def skip(raw_skipped, raw_rows, location, message):
  raw_skipped[reason_key(message)] += 1
  if len(raw_rows) < MAX_SKIPPED_ROWS:
    raw_rows.append((location, str(message)))


def _text_response(text: str, chat: bool) -> str:
  return text.strip() if chat else text


def read_pairs(spec: str, *, chat: bool = True) -> Raw:
  """Any ``read_preferences`` spec -> ``{"id", "prompt", "chosen", "rejected"[, "alpha"]}``.

  The chat messages become the prompt (``chat=True``) when they say more than the prompt
  text as one user turn (HH's multi-turn transcripts); otherwise the prompt text is kept
  (a chat template wraps it as one user turn).
  """
  try:
    res = read_preferences(spec)
  except PreferenceFileError as e:
    raise DataError(str(e)) from None
  return pairs_of(res, chat=chat)


def pairs_of(res: ReadResult, *, chat: bool = True) -> Raw:
  """The ``PreferenceExample``s of a ``ReadResult`` as pair records (see ``read_pairs``)."""
  skipped, rows = collections.Counter(), []
  for loc, reason in res.skipped:
    skip(skipped, rows, f"{res.source}:{loc}", reason)
  out = []
  for ex in res.examples:
    single = ex.chat == [{"role": "user", "content": ex.prompt}]
    prompt = ex.chat if (chat and ex.chat and not single) else ex.prompt
    d = {"id": ex.id, "prompt": prompt, "chosen": _text_response(ex.responses[0], chat),
         "rejected": _text_response(ex.responses[1], chat), "subset": ex.subset}
    if ex.alpha is not None:
      d["alpha"] = float(ex.alpha)
    out.append(d)
  return Raw(out, skipped, rows, "pairs")


def _rows(path: str):
  try:
    return read_rows(path)
  except PreferenceFileError as e:
    raise DataError(str(e)) from None


def prompt_field(row, chat: bool):
  """A row's prompt: a string, or validated chat messages (raises ``RowError``)."""
  if not isinstance(row, dict):
    raise RowError(f"row is a JSON {type(row).__name__}, expected an object")
  if "prompt" not in row:
    raise RowError("missing field 'prompt'")
  p = row["prompt"]
  if isinstance(p, str):
    return p
  return chat_messages(p)


def _response_field(row, chat: bool):
  key = "response" if "response" in row else "completion"
  value = row.get(key)
  if not isinstance(value, str):
    raise RowError("missing field 'response' (or 'completion')" if key not in row else
                   f"field {key!r} is {type(value).__name__}, expected a string")
  return _text_response(value, chat)


def _read_each(path: str, native: str, parse) -> Raw:
  unit, rows, bad = _rows(path)
  skipped, bad_rows = collections.Counter(), []
  for loc, reason in bad:
    skip(skipped, bad_rows, f"{path}:{loc}", reason)
  out = []
  for loc, row in rows:
    try:
      out.append(parse(row, loc))
    except RowError as e:
      skip(skipped, bad_rows, f"{path}:{loc}", e)
  return Raw(out, skipped, bad_rows, native)


def read_sft(path: str, *, chat: bool = True) -> Raw:
  """``{"prompt", "response" | "completion"}`` or ``{"messages": [...]}`` rows -> sft."""
  stem = os.path.basename(path).split(".")[0]

  def parse(row, loc):
    if isinstance(row, dict) and "messages" in row and "prompt" not in row:
      msgs = chat_messages(row["messages"], "messages")
      if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
        raise RowError("'messages' must end with an assistant turn after a prompt")
      prompt, response = msgs[:-1], _text_response(msgs[-1]["content"], chat)
    else:
      prompt, response = prompt_field(row, chat), _response_field(row, chat)
    if not response.strip():
      raise RowError("empty response")
    return {"id": f"{stem}:{row.get('id', loc)}", "prompt": prompt, "response": response}

  return _read_each(path, "sft", parse)


_LABELS = {True: 1, False: 0, 1: 1, 0: 0}


def read_unpaired(path: str, *, chat: bool = True) -> Raw:
  """``{"prompt", "response" | "completion", "label"}`` rows; label a bool or 0/1."""
  stem = os.path.basename(path).split(".")[0]

  def parse(row, loc):
    prompt, response = prompt_field(row, chat), _response_field(row, chat)
    label = row.get("label")
    if isinstance(label, float) or label not in _LABELS:
      raise RowError(f"label is {label!r}, expected true/false or 1/0")
    if not response.strip():
      raise RowError("empty response")
    return {"id": f"{stem}:{row.get('id', loc)}", "prompt": prompt, "response": response,
            "label": _LABELS[label]}

  return _read_each(path, "unpaired", parse)




# ------------------------------------------------------------------------------ groups
def _number(value, what):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise RowError(f"{what} is {value!r}, expected a finite number")
  return float(value)


def split_by_mean(responses, scores):
  """``(chosen, chosen_scores, rejected, rejected_scores)``: responses scoring above the
  group's mean score are chosen (best first), below it rejected (worst first); a response
  exactly at the mean is on neither side (the sign of GRPO's group-relative advantage
  ``s - mean(s)``). Ties therefore never split: equal scores land on the same side.
  """
  mean = math.fsum(scores) / len(scores)
  up = sorted((p for p in zip(scores, responses) if p[0] > mean), key=lambda p: -p[0])
  down = sorted((p for p in zip(scores, responses) if p[0] < mean), key=lambda p: p[0])
  return ([y for _, y in up], [s for s, _ in up], [y for _, y in down], [s for s, _ in down])


def read_groups(path: str, *, chat: bool = True) -> Raw:
  """Group rows -> groups.

  Row forms: ``{"prompt", "responses": [k], "scores": [k]}`` (higher is better), or
  ``"ranks": [k]`` instead of scores (1 = best; score = -rank), split by
  ``split_by_mean``; or an explicit ``{"prompt", "chosen": [...], "rejected": [...]}``.
  A row needs at least one response on each side.
  """
  stem = os.path.basename(path).split(".")[0]

  def texts(value, key):
    if not isinstance(value, list) or not value:
      raise RowError(f"field {key!r} must be a non-empty list of strings")
    out = []
    for j, y in enumerate(value):
      if not isinstance(y, str) or not y.strip():
        raise RowError(f"{key}[{j}] is empty or not a string")
      out.append(_text_response(y, chat))
    return out

  def parse(row, loc):
    prompt = prompt_field(row, chat)
    if "responses" not in row:
      if "chosen" not in row or "rejected" not in row:
        raise RowError("missing field 'responses' (or 'chosen' and 'rejected')")
      chosen, rejected = texts(row["chosen"], "chosen"), texts(row["rejected"], "rejected")
      cs = rs = None
    else:
      responses = texts(row["responses"], "responses")
      if "scores" in row:
        raw, sign = row["scores"], 1.0
      elif "ranks" in row:
        raw, sign = row["ranks"], -1.0
      else:
        raise RowError("missing field 'scores' (or 'ranks')")
      if not isinstance(raw, list) or len(raw) != len(responses):
        raise RowError(f"scores/ranks must be a list of {len(responses)} numbers")
      scores = [sign * _number(v, "a score or rank") for v in raw]
      chosen, cs, rejected, rs = split_by_mean(responses, scores)
      if not chosen:
        raise RowError("all scores tie: no response is above the group's mean")
    return {"id": f"{stem}:{row.get('id', loc)}", "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "chosen_scores": cs, "rejected_scores": rs}

  return _read_each(path, "groups", parse)


ALPACA_EVAL_BASELINE_SCORE = 0.5
# A constant adversarial string (arXiv 2410.07137) that the judge prefers to the baseline
# in 676 of 805 instructions: "chosen" by the rule, but training on it teaches garbage.
ALPACA_EVAL_EXCLUDE = ("NullModel",)


def _alpaca_eval_files(pattern: str):
  if os.path.isdir(pattern):
    files = glob.glob(os.path.join(pattern, "*.json.gz")) + glob.glob(
        os.path.join(pattern, "*.json"))
  else:
    files = glob.glob(pattern)
  if not files:
    raise DataError(f"{pattern}: no AlpacaEval annotation file (*.json or *.json.gz) found")
  return sorted(files)


def read_alpaca_eval_groups(pattern: str, *, chat: bool = True,
                            exclude=ALPACA_EVAL_EXCLUDE) -> Raw:
  """AlpacaEval annotations (one file per model) -> one group per instruction.

  Every row judges a model's ``output_2`` against the baseline's ``output_1`` (one baseline,
  gpt4_1106_preview, in the public files) with ``preference`` in [1, 2]; a response's score
  is ``preference - 1`` = P(judge prefers it to the baseline), the baseline's own score 0.5.
  Rule: chosen = the responses that beat the baseline (score > 0.5, best first), rejected =
  those it beat (score < 0.5, worst first); the baseline joins chosen when some response lost
  to it (it beat each of them), else rejected (every response beat it). Left out and counted:
  an exact tie (score 0.5), a response identical to the baseline or to an earlier response
  of the group, an empty response, the baseline judged against itself, generators in
  ``exclude`` (matched against ``generator_2`` and the file's stem: NullModel's rows name
  their generator "example"), and instructions with no judged response left.
  """
  files = _alpaca_eval_files(pattern)
  skipped, bad_rows = collections.Counter(), []
  groups: dict[str, dict] = {}
  for fn in files:
    stem = os.path.basename(fn).split(".")[0]
    _, rows, bad = _rows(fn)
    for loc, reason in bad:
      skip(skipped, bad_rows, f"{fn}:{loc}", reason)
    for loc, row in rows:
      where = f"{fn}:{loc}"
      try:
        if not isinstance(row, dict):
          raise RowError(f"row is a JSON {type(row).__name__}, expected an object")
        fields = [row.get(k) for k in ("instruction", "output_1", "output_2")]
        if not all(isinstance(v, str) for v in fields) or not fields[0].strip():
          raise RowError("instruction, output_1 and output_2 must be strings")
        pref = _number(row.get("preference"), "preference")
        if not 1.0 - 1e-6 <= pref <= 2.0 + 1e-6:
          raise RowError(f"preference {pref!r} is outside [1, 2]")
      except RowError as e:
        skip(skipped, bad_rows, where, e)
        continue
      instruction, baseline, output = fields
      gen = row.get("generator_2") or stem
      if gen in exclude or stem in exclude:
        skip(skipped, bad_rows, where, f"generator {stem} excluded")
        continue
      if gen == row.get("generator_1"):
        skip(skipped, bad_rows, where, "the baseline judged against itself")
        continue
      g = groups.setdefault(instruction, {"baseline": baseline, "items": []})
      if g["baseline"] != baseline:
        skip(skipped, bad_rows, where, "a different baseline output for this instruction")
        continue
      g["items"].append((min(max(pref - 1.0, 0.0), 1.0), output, gen, where))
  records = []
  for i, (instruction, g) in enumerate(groups.items()):
    seen = {g["baseline"].strip()}
    up, down = [], []
    for score, output, gen, where in g["items"]:
      if not output.strip():
        skip(skipped, bad_rows, where, "empty response")
      elif output.strip() in seen:
        skip(skipped, bad_rows, where, "response identical to the baseline or another one")
      elif score == ALPACA_EVAL_BASELINE_SCORE:
        skip(skipped, bad_rows, where, "tie with the baseline")
      else:
        seen.add(output.strip())
        (up if score > ALPACA_EVAL_BASELINE_SCORE else down).append(
            (score, _text_response(output, chat), gen))
    if not up and not down:
      skip(skipped, bad_rows, f"instruction {i}", "no judged response left")
      continue
    up.sort(key=lambda t: -t[0])
    down.sort(key=lambda t: t[0])
    base = (ALPACA_EVAL_BASELINE_SCORE, _text_response(g["baseline"], chat), "baseline")
    if down:
      up.append(base)
    else:
      down.append(base)
    records.append({
        "id": f"alpaca_eval:{i}", "prompt": instruction,
        "chosen": [t[1] for t in up], "rejected": [t[1] for t in down],
        "chosen_scores": [t[0] for t in up], "rejected_scores": [t[0] for t in down],
        "chosen_generators": [t[2] for t in up], "rejected_generators": [t[2] for t in down]})
  return Raw(records, skipped, bad_rows, "groups")
