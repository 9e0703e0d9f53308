"""Row parsers: one row of each supported preference file -> a ``PreferenceExample``.

Each ``parse_<format>(row, *, loc, stem)`` takes one decoded JSON row, its location (line
or array index) and the file's stem, and returns ``(example, notes)``; ``notes`` lists
what was kept but altered (an empty response, a JSON boolean turned into text). A row that
cannot be used raises ``RowError`` with a one-line reason, which the reader reports.

Conventions shared by every format: ``responses[0]`` is the preferred response, ``alpha``
is P(responses[0] preferred) when the data gives one (so alpha >= 0.5 after reordering),
``subset`` is the file stem unless a row says otherwise, and ``chat`` is the prompt as
``{"role", "content"}`` messages.
"""
from __future__ import annotations

import dataclasses
import math
import re

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
  """One prompt with responses; ``responses[0]`` is preferred when there is a preference.

  Attributes:
    prompt: the prompt text exactly as the model should be conditioned on it.
    responses: the completions; index 0 = preferred.
    alpha: P(responses[0] preferred) when known (annotator votes, a judge's probability),
      else None (a single gold label).
    subset: the dataset subset (file stem unless the row names one).
    id: a stable identifier, ``"<stem>:<row id or location>"``.
    chat: the prompt as ``[{"role": "user" | "assistant", "content": str}, ...]`` so a
      chat template can be applied later, or None when the prompt is raw text.
    meta: everything else worth keeping (generators, votes, whether responses were
      reordered, ...).
  """
  prompt: str
  responses: tuple[str, ...]
  alpha: float | None
  subset: str
  id: str
  chat: list[dict[str, str]] | None = None
  meta: dict = dataclasses.field(default_factory=dict)


class RowError(ValueError):
  """A row that cannot be turned into an example; the message is the one-line reason."""


def _field(row, key, *, optional=False):
  if not isinstance(row, dict):
    raise RowError(f"row is a JSON {type(row).__name__}, expected an object")
  if key not in row:
    if optional:
      return None
    raise RowError(f"missing field {key!r}")
  return row[key]


def _text(row, key, notes, *, coerce_scalars=False, allow_empty=True):
  """A string field; scalars become text (with a note) only when ``coerce_scalars``."""
  value = _field(row, key)
  if isinstance(value, bool) and coerce_scalars:
    notes.append(f"{key} is JSON {str(value).lower()}, read as {str(value)!r}")
    value = str(value)
  elif isinstance(value, (int, float)) and not isinstance(value, bool) and coerce_scalars:
    notes.append(f"{key} is the JSON number {value}, read as text")
    value = str(value)
  if not isinstance(value, str):
    kind = "null" if value is None else type(value).__name__
    raise RowError(f"field {key!r} is {kind}, expected a string")
  if not value.strip():
    if not allow_empty:
      raise RowError(f"empty {key!r}")
    notes.append(f"{key} is empty (kept: it is a judged candidate)")
  return value


def _user_chat(prompt):
  return [{"role": "user", "content": prompt}]


def hh_chat(prompt: str) -> tuple[list[dict[str, str]], str]:
  """Split an HH-RLHF transcript prompt into chat messages (Human->user, Assistant->assistant).

  The prompt ends with the empty ``"\\n\\nAssistant:"`` turn the completion fills; it is
  not a message. Returns ``(messages, preamble)``, the preamble being any text before the
  first turn marker (empty for every row of the public files).
  """
  parts = _HH_TURN.split(prompt)  # [preamble, role, content, role, content, ...]
  messages = [{"role": _HH_ROLES[role], "content": content.strip()}
              for role, content in zip(parts[1::2], parts[2::2])]
  if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
    messages.pop()
  return messages, parts[0]


def parse_hh(row, *, loc, stem):
  """Anthropic HH-RLHF ``{"chosen": transcript, "rejected": transcript}``.

  The prompt is everything up to and including the last ``"\\n\\nAssistant:"``, which
  must be identical in both transcripts; the completions are the rest (with their leading
  space, as the transcripts have it).
  """
  notes = []
  chosen, rejected = _text(row, "chosen", notes), _text(row, "rejected", notes)
  cut_c, cut_r = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
  for name, cut in (("chosen", cut_c), ("rejected", cut_r)):
    if cut < 0:
      raise RowError(f"{name} has no '\\n\\nAssistant:' turn")
  cut_c += len(HH_ASSISTANT)
  cut_r += len(HH_ASSISTANT)
  prompt = chosen[:cut_c]
  if prompt != rejected[:cut_r]:
    n = min(cut_c, cut_r)
    first = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    raise RowError("chosen and rejected do not share the prompt up to the last "
                   f"'\\n\\nAssistant:' ({cut_c} vs {cut_r} chars, first difference at "
                   f"char {first})")
  completions = (chosen[cut_c:], rejected[cut_r:])
  for name, text in zip(("chosen", "rejected"), completions):
    if not text.strip():
      notes.append(f"{name} completion is empty (kept)")
  chat, preamble = hh_chat(prompt)
  meta = {"preamble": preamble} if preamble.strip() else {}
  return PreferenceExample(prompt=prompt, responses=completions, alpha=None, subset=stem,
                           id=f"{stem}:{loc}", chat=chat, meta=meta), notes


_PANDALM_VOTE = {1: 1.0, 2: 0.0, 0: 0.5}  # annotator value -> credit to response1


def parse_pandalm(row, *, loc, stem):
  """PandaLM test set: ``instruction``, ``input``, ``response1/2``, ``annotator1..3``.

  Each annotator is 1 (response1 better), 2 (response2 better) or 0 (tie). A vote for
  response1 counts 1, for response2 0, a tie 0.5, so P(response1 preferred) is the mean
  credit; the preferred response goes first and alpha = max(p, 1 - p), with an exact
  0.5 keeping the file's order. The prompt is the instruction, then a blank line and the
  input, leaving out a blank part (one public row has a blank instruction). Six public
  rows hold the JSON literal ``true`` where a model answered "True"; it is read as the
  text "True" (noted). Empty responses (54 public rows) are judged candidates: kept.
  """
  notes = []
  instruction = _field(row, "instruction")
  extra = _field(row, "input", optional=True) or ""
  for key, value in (("instruction", instruction), ("input", extra)):
    if not isinstance(value, str):
      raise RowError(f"field {key!r} is {type(value).__name__}, expected a string")
  parts = [part for part in (instruction, extra) if part.strip()]
  if not parts:
    raise RowError("empty 'instruction' and 'input'")
  if not instruction.strip():
    notes.append("instruction is blank: the prompt is the input alone")
  r1 = _text(row, "response1", notes, coerce_scalars=True)
  r2 = _text(row, "response2", notes, coerce_scalars=True)
  keys = sorted((k for k in row if re.fullmatch(r"annotator\d+", k)), key=lambda k: int(k[9:]))
  if not keys:
    raise RowError("no annotator fields")
  votes = tuple(row[k] for k in keys)
  for k, v in zip(keys, votes):
    if isinstance(v, bool) or not isinstance(v, int) or v not in _PANDALM_VOTE:
      raise RowError(f"{k} is {v!r}, expected 0 (tie), 1 or 2")
  p1 = sum(_PANDALM_VOTE[v] for v in votes) / len(votes)
  swapped = p1 < 0.5
  prompt = "\n\n".join(parts)
  generators = tuple(str(row.get("cmp_key", "")).split("_", 1))
  if swapped and len(generators) == 2:
    generators = generators[::-1]
  idx = row.get("idx", loc)
  return PreferenceExample(
      prompt=prompt, responses=(r2, r1) if swapped else (r1, r2),
      alpha=1.0 - p1 if swapped else p1, subset=stem, id=f"{stem}:{idx}",
      chat=_user_chat(prompt),
      meta={"instruction": instruction, "input": extra, "votes": votes, "swapped": swapped,
            "generators": generators, "motivation_app": row.get("motivation_app")},
  ), notes


def parse_llmbar(row, *, loc, stem):
  """LLMBar: ``input``, ``output_1``, ``output_2``, gold ``label`` in {1, 2}; alpha None."""
  notes = []
  prompt = _text(row, "input", notes, allow_empty=False)
  o1, o2 = _text(row, "output_1", notes), _text(row, "output_2", notes)
  label = _field(row, "label")
  if isinstance(label, bool) or label not in (1, 2):
    raise RowError(f"label is {label!r}, expected 1 or 2")
  swapped = label == 2
  return PreferenceExample(
      prompt=prompt, responses=(o2, o1) if swapped else (o1, o2), alpha=None,
      subset=stem, id=f"{stem}:{loc}", chat=_user_chat(prompt),
      meta={"label": label, "swapped": swapped}), notes


def parse_alpaca_eval(row, *, loc, stem):
  """AlpacaEval annotations: ``instruction``, ``output_1/2``, judge ``preference`` in [1, 2].

  P(output_2 preferred) = preference - 1 (the leaderboard's win rate is 100 times its
  mean); the preferred output goes first and alpha = max(p, 1 - p), an exact tie keeping
  the file's order. Generator names and the judge are kept in ``meta``.
  """
  notes = []
  prompt = _text(row, "instruction", notes, allow_empty=False)
  o1, o2 = _text(row, "output_1", notes), _text(row, "output_2", notes)
  pref = _field(row, "preference")
  if isinstance(pref, bool) or not isinstance(pref, (int, float)) or not math.isfinite(pref):
    raise RowError(f"preference is {pref!r}, expected a number in [1, 2]")
  if not 1.0 - 1e-6 <= pref <= 2.0 + 1e-6:
    raise RowError(f"preference {pref!r} is outside [1, 2]")
  p2 = min(max(float(pref) - 1.0, 0.0), 1.0)
  swapped = p2 > 0.5
  g1, g2 = row.get("generator_1"), row.get("generator_2")
  return PreferenceExample(
      prompt=prompt, responses=(o2, o1) if swapped else (o1, o2),
      alpha=p2 if swapped else 1.0 - p2, subset=stem, id=f"{stem}:{loc}",
      chat=_user_chat(prompt),
      meta={"generator_1": g1, "generator_2": g2,
            "generators": (g2, g1) if swapped else (g1, g2), "preference": pref,
            "swapped": swapped, "dataset": row.get("dataset"),
            "annotator": row.get("annotator")}), notes


_JSONL_KNOWN = ("prompt", "chosen", "rejected", "alpha", "id", "subset")
CHAT_ROLES = ("system", "user", "assistant")


def chat_messages(value, key: str = "prompt") -> list[dict[str, str]]:
  """A JSON list of ``{"role", "content"}`` messages, validated (raises ``RowError``)."""
  if not isinstance(value, list) or not value:
    raise RowError(f"field {key!r} must be a string or a non-empty list of messages")
  out = []
  for i, m in enumerate(value):
    if not (isinstance(m, dict) and m.get("role") in CHAT_ROLES
            and isinstance(m.get("content"), str)):
      raise RowError(f"{key}[{i}] is not a {{'role': {'|'.join(CHAT_ROLES)}, 'content': str}} "
                     f"message")
    out.append({"role": m["role"], "content": m["content"]})
  return out


def _conversational(row, notes):
  """TRL's conversational rows: ``prompt`` a message list, ``chosen`` / ``rejected`` lists
  ending with the assistant turn. Returns the row with text prompt/chosen/rejected and the
  chat messages (None when the row is plain text)."""
  if not isinstance(row, dict) or not isinstance(row.get("prompt"), list):
    return row, None
  chat = chat_messages(row["prompt"])
  row = dict(row, prompt="\n\n".join(m["content"] for m in chat))
  for side in ("chosen", "rejected"):
    value = row.get(side)
    if isinstance(value, list):
      turns = chat_messages(value, side)
      if turns[-1]["role"] != "assistant":
        raise RowError(f"{side} must end with an assistant message")
      row[side] = turns[-1]["content"]
  return row, chat


def parse_jsonl(row, *, loc, stem):
  """Generic ``{"prompt", "chosen", "rejected"[, "alpha", "id", "subset"]}`` rows.

  ``chosen`` and ``rejected`` must be non-empty strings (an empty completion in an
  exported training pair is a bug, unlike in the curated sets above); ``alpha`` is
  P(chosen preferred) in [0, 1], kept as given (with a note when below 0.5). Other fields
  go to ``meta``; ``chat`` is None because the prompt is taken as already-formatted text,
  except in TRL's conversational rows (``prompt`` a list of ``{"role", "content"}``
  messages, ``chosen`` / ``rejected`` strings or message lists ending with the assistant
  turn), where ``chat`` holds the messages and ``prompt`` their contents joined by blank lines.
  """
  notes = []
  row, chat = _conversational(row, notes)
  prompt = _text(row, "prompt", notes)
  chosen = _text(row, "chosen", notes, allow_empty=False)
  rejected = _text(row, "rejected", notes, allow_empty=False)
  alpha = _field(row, "alpha", optional=True)
  if alpha is not None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
        0.0 <= alpha <= 1.0):
      raise RowError(f"alpha is {alpha!r}, expected a number in [0, 1]")
    alpha = float(alpha)
    if alpha < 0.5:
      notes.append(f"alpha {alpha} < 0.5: 'chosen' is the less likely preferred (kept)")
  subset = row.get("subset", stem)
  row_id = row.get("id", loc)
  return PreferenceExample(
      prompt=prompt, responses=(chosen, rejected), alpha=alpha,
      subset=str(subset), id=f"{stem}:{row_id}", chat=chat,
      meta={k: v for k, v in row.items() if k not in _JSONL_KNOWN}), notes


def parse_implicit(row, *, loc, stem):
  """TRL's implicit prompt: ``{"chosen": [...], "rejected": [...]}`` message lists only.

  The prompt is the longest common prefix of the two lists (compared message by message);
  after it each side must hold exactly one assistant message, its completion. The rest is
  ``parse_jsonl`` on the conversational row ``{"prompt": prefix, "chosen": [...],
  "rejected": [...]}``, other fields included.
  """
  chosen = chat_messages(_field(row, "chosen"), "chosen")
  rejected = chat_messages(_field(row, "rejected"), "rejected")
  n = 0
  while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
    n += 1
  if n == 0:
    raise RowError("'chosen' and 'rejected' share no prompt message (implicit prompt)")
  for side, turns in (("chosen", chosen), ("rejected", rejected)):
    rest = turns[n:]
    if len(rest) != 1 or rest[0]["role"] != "assistant":
      raise RowError(f"{side!r} must be the {n} shared prompt messages plus one assistant "
                     f"message, not {len(rest)} message(s) "
                     f"({', '.join(m['role'] for m in rest) or 'none'}) after them")
  return parse_jsonl(dict(row, prompt=chosen[:n], chosen=chosen[n:], rejected=rejected[n:]),
                     loc=loc, stem=stem)


PARSERS = {
    "hh": parse_hh,
    "pandalm": parse_pandalm,
    "llmbar": parse_llmbar,
    "alpaca_eval": parse_alpaca_eval,
    "jsonl": parse_jsonl,
    "implicit": parse_implicit,
}


def detect_format(row: dict) -> str | None:
  """The format of a row told from its keys (and, without a prompt, whether ``chosen`` is
  text, an HH transcript, or a message list, TRL's implicit prompt), or None."""
  keys = set(row)
  if {"prompt", "chosen", "rejected"} <= keys:
    return "jsonl"
  if {"chosen", "rejected"} <= keys:
    return "implicit" if isinstance(row["chosen"], list) else "hh"
  if {"instruction", "response1", "response2"} <= keys and any(
      re.fullmatch(r"annotator\d+", k) for k in keys):
    return "pandalm"
  if {"input", "output_1", "output_2", "label"} <= keys:
    return "llmbar"
  if {"instruction", "output_1", "output_2", "preference"} <= keys:
    return "alpaca_eval"
  return None
