"""Read real preference files into one common record, ``PreferenceExample``.

``read_preferences(spec)`` reads one file and returns every usable row as a
``PreferenceExample`` plus, for every row it could not use, its location and a one-line
reason; it never crashes on a bad row and never drops one silently. A file that cannot be
read at all (missing, empty, not JSON, of unknown format) raises ``PreferenceFileError``,
whose message is one line naming the file.

SPEC is a path, optionally prefixed with its format to skip detection:

  ``hh:PATH``           Anthropic HH-RLHF JSON Lines ``{"chosen", "rejected"}`` transcripts
  ``pandalm:PATH``      PandaLM test set (3 annotators per pair -> alpha)
  ``llmbar:PATH``       LLMBar / processed FairEval, LLMEval^2, MT-Bench (gold label)
  ``alpaca_eval:PATH``  AlpacaEval annotations (judge preference in [1, 2] -> alpha)
  ``jsonl:PATH``        generic ``{"prompt", "chosen", "rejected"[, "alpha"]}`` rows
  ``implicit:PATH``     TRL's implicit prompt: ``{"chosen", "rejected"}`` message lists

Without a prefix, ``.json`` / ``.jsonl`` (optionally ``.gz``) files are accepted and the
format is told from the keys of the first row. Gzip is recognised by its magic bytes; a
file whose first character is ``[`` is a JSON array (rows located by 0-based index),
otherwise JSON Lines (rows located by 1-based line number). How each format maps to the
record is documented in ``prefjax.data.preference_formats``.

Example:
  >>> result = read_preferences("../shared/data/hh-rlhf/harmless-base_test.jsonl.gz")
  >>> len(result.examples), result.skipped[:1]   # (2307, [(1255, 'chosen and ...')])
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import zlib
from pathlib import Path

from prefjax.data.preference_formats import (
    PARSERS, PreferenceExample, RowError, detect_format)

FORMATS = tuple(PARSERS)
_SUFFIXES = (".gz", ".jsonl", ".json")
_PREFIX = re.compile(r"^(" + "|".join(FORMATS) + r"):(.+)$", re.S)


class PreferenceFileError(ValueError):
  """A preference file that cannot be read at all; ``str()`` is one line naming it."""

  def __init__(self, path, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = str(path)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class ReadResult:
  """What ``read_preferences`` read from one file.

  Attributes:
    examples: the usable rows, in file order.
    skipped: ``(location, reason)`` for every row that was not used.
    source: the file's path.
    format: one of ``FORMATS``.
    unit: what a location counts: ``"line"`` (1-based line of a JSON Lines file) or
      ``"index"`` (0-based item of a JSON array).
    notes: ``(location, note)`` for rows kept but altered or unusual (an empty response
      kept as a judged candidate, a JSON boolean read as text).
  """
  examples: list[PreferenceExample]
  skipped: list[tuple[int, str]]
  source: str
  format: str
  unit: str
  notes: list[tuple[int, str]] = dataclasses.field(default_factory=list)

  def summary(self, limit: int = 5) -> str:
    """A short report: counts, then the first ``limit`` skipped rows."""
    lines = [f"{self.source} ({self.format}): {len(self.examples)} examples, "
             f"{len(self.skipped)} skipped, {len(self.notes)} notes"]
    lines += [f"  skipped {self.unit} {loc}: {reason}"
              for loc, reason in self.skipped[:limit]]
    if len(self.skipped) > limit:
      lines.append(f"  ... and {len(self.skipped) - limit} more")
    return "\n".join(lines)


def split_spec(spec: str | os.PathLike) -> tuple[str | None, Path]:
  """``"hh:PATH"`` -> ``("hh", Path(PATH))``; a plain path -> ``(None, Path(path))``."""
  if isinstance(spec, str):
    match = _PREFIX.match(spec)
    if match:
      return match.group(1), Path(match.group(2))
  return None, Path(spec)


def _stem(path: Path) -> str:
  name = path.name
  for suffix in _SUFFIXES:
    if name.lower().endswith(suffix):
      name = name[:-len(suffix)]
  return name


def _read_bytes(path: Path) -> bytes:
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise PreferenceFileError(path, "no such file") from None
  except IsADirectoryError:
    raise PreferenceFileError(path, "is a directory, not a file") from None
  except OSError as e:
    raise PreferenceFileError(path, f"cannot read ({e.strerror})") from None
  if data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise PreferenceFileError(path, f"corrupt gzip ({e})") from None
  if not data.strip():
    raise PreferenceFileError(path, "empty file")
  return data


class _BadRow:
  """A row the container could not decode (bad JSON, not UTF-8, blank line)."""

  def __init__(self, reason):
    self.reason = reason


def _json_array_rows(path: Path, data: bytes):
  try:
    rows = json.loads(data.decode("utf-8-sig"))
  except UnicodeDecodeError as e:
    raise PreferenceFileError(path, f"not UTF-8 text (byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise PreferenceFileError(
        path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
  except RecursionError:   # json's decoder recurses once per nesting level
    raise PreferenceFileError(path, "not valid JSON (nested too deeply)") from None
  if not isinstance(rows, list):
    raise PreferenceFileError(path, f"top-level JSON {type(rows).__name__}, expected a list")
  if not rows:
    raise PreferenceFileError(path, "empty JSON array")
  return list(enumerate(rows))


def _json_lines_rows(data: bytes):
  lines = data.split(b"\n")
  if lines and not lines[-1].strip():
    lines.pop()  # the newline that ends the last line does not start a row
  rows = []
  for lineno, raw in enumerate(lines, start=1):
    try:
      text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
    except UnicodeDecodeError as e:
      rows.append((lineno, _BadRow(f"not UTF-8 (byte {e.start})")))
      continue
    if not text:
      rows.append((lineno, _BadRow("blank line")))
      continue
    try:
      rows.append((lineno, json.loads(text)))
    except json.JSONDecodeError as e:
      rows.append((lineno, _BadRow(f"bad JSON: {e.msg} (column {e.colno})")))
    except RecursionError:   # json's decoder recurses once per nesting level
      rows.append((lineno, _BadRow("bad JSON: nested too deeply")))
  return rows


def _check_extension(path: Path):
  name = path.name.lower().removesuffix(".gz")
  if not name.endswith((".json", ".jsonl")):
    raise PreferenceFileError(
        path, "unknown format: expected a .json or .jsonl(.gz) file, or a prefix "
        + ", ".join(f"{f}:PATH" for f in FORMATS))


def _detect(path: Path, rows) -> str:
  first = next((row for _, row in rows if isinstance(row, dict)), None)
  if first is None:
    raise PreferenceFileError(path, "unknown format: no row is a JSON object")
  fmt = detect_format(first)
  if fmt is None:
    keys = ", ".join(sorted(map(str, first.keys()))[:12])
    raise PreferenceFileError(
        path, f"unknown format: first row has keys [{keys}]; give a prefix "
        + ", ".join(f"{f}:PATH" for f in FORMATS))
  return fmt


def read_rows(path: str | os.PathLike) -> tuple[str, list[tuple[int, object]],
                                                list[tuple[int, str]]]:
  """The decoded rows of a JSON array or JSON Lines file (optionally gzipped), any schema.

  Returns ``(unit, rows, bad)``: ``unit`` as in ``ReadResult``, ``rows`` the ``(location,
  value)`` of every decoded row, ``bad`` the ``(location, reason)`` of rows that are not
  JSON (bad JSON, not UTF-8, blank line). Raises ``PreferenceFileError`` as
  ``read_preferences`` does for a file that cannot be read at all.
  """
  path = Path(path)
  data = _read_bytes(path)
  if data.lstrip()[:1] == b"[":
    unit, rows = "index", _json_array_rows(path, data)
  else:
    unit, rows = "line", _json_lines_rows(data)
  good = [(loc, row) for loc, row in rows if not isinstance(row, _BadRow)]
  bad = [(loc, row.reason) for loc, row in rows if isinstance(row, _BadRow)]
  return unit, good, bad


def read_preferences(spec: str | os.PathLike) -> ReadResult:
  """Read one preference file (see the module docstring for SPEC) into a ``ReadResult``.

  Args:
    spec: a path, or ``"<format>:<path>"`` with a format of ``FORMATS``.

  Returns:
    ``ReadResult(examples, skipped, source, format, unit, notes)``.

  Raises:
    PreferenceFileError: the file is missing, unreadable, empty, not JSON / JSON Lines,
      or (without a prefix) of a format its extension or keys do not identify.
  """
  fmt, path = split_spec(spec)
  if fmt is None and not path.exists() and isinstance(spec, str) and re.match(r"^\w+:", spec):
    raise PreferenceFileError(path, "no such file (known prefixes: "
                              + ", ".join(f"{f}:" for f in FORMATS) + ")")
  data = _read_bytes(path)
  if fmt is None:
    _check_extension(path)
  if data.lstrip()[:1] == b"[":
    unit, rows = "index", _json_array_rows(path, data)
  else:
    unit, rows = "line", _json_lines_rows(data)
  if fmt is None:
    fmt = _detect(path, rows)
  parse, stem = PARSERS[fmt], _stem(path)
  examples, skipped, notes = [], [], []
  for loc, row in rows:
    if isinstance(row, _BadRow):
      skipped.append((loc, row.reason))
      continue
    try:
      example, row_notes = parse(row, loc=loc, stem=stem)
    except RowError as e:
      skipped.append((loc, str(e)))
      continue
    except Exception as e:  # noqa: BLE001 -- a bad row is reported, never fatal
      skipped.append((loc, f"unexpected {type(e).__name__}: {e}"))
      continue
    examples.append(example)
    notes.extend((loc, note) for note in row_notes)
  return ReadResult(examples=examples, skipped=skipped, source=str(path), format=fmt,
                    unit=unit, notes=notes)
