"""Hugging Face ``datasets`` as a data source: ``hf:PATH`` -> preference examples.

    data.train = "hf:data/prefs"                  # a folder written by Dataset.save_to_disk
    data.train = "hf:data/prefs/train"            # one split of a saved DatasetDict
    data.eval  = "hf:data/test-*.parquet"         # parquet, .json or .jsonl(.gz) files (globs)

A folder is read with ``datasets.load_from_disk``, files with ``datasets.load_dataset("parquet"
| "json", data_files=...)`` (converted in a temporary cache that is removed afterwards: the
rows are read into memory, as every prefjax source is). Rows follow one of TRL's standard
preference formats, told from the columns of the first row:

  ``prompt``, ``chosen``, ``rejected`` as text, or as ``{"role", "content"}`` message lists
      (conversational: ``chosen`` / ``rejected`` end with the assistant turn)  -> ``jsonl``
  ``chosen``, ``rejected`` message lists only (implicit prompt: the prompt is their common
      prefix of messages, each side one assistant message after it)          -> ``implicit``
  ``chosen``, ``rejected`` text only (HH-RLHF transcripts)                    -> ``hh``

Each row goes through the same row parser as a preference file of that format
(``prefjax.data.preference_formats``), so it becomes the same ``PreferenceExample`` and, in
``prefjax.data.file_sources``, the same pair records; optional ``alpha``, ``id`` and ``subset``
columns work as in ``jsonl:`` files. A data set is typed by its columns, so a bad row is an
error, not a row to skip: ``DataError("PATH: row N: field 'chosen' is null, expected a
string")`` (rows counted from 0); a missing column or an empty data set is one line too.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile

from prefjax.data.preference_files import ReadResult
from prefjax.data.preference_formats import PARSERS, RowError, detect_format
from prefjax.data.records import Raw, pairs_of
from prefjax.errors import DataError
from prefjax.extras import require

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def _datasets():
  return require("datasets", "hf", "reading a Hugging Face dataset (hf:PATH)")


def _builder(path: str) -> str:
  name = path.lower().removesuffix(".gz")
  for suffix, builder in _BUILDERS.items():
    if name.endswith(suffix):
      return builder
  raise DataError(f"{path}: not a saved dataset folder, nor a .parquet / .json / .jsonl(.gz) "
                  "file")


def _holds_no_rows(path: str, files: list[str]) -> bool:
  """Whether a data set that ``datasets`` failed to load is merely empty (it cannot load a
  saved data set of 0 shards, nor parquet / JSON files without a row)."""
  try:
    if os.path.isdir(path):
      with open(os.path.join(path, "state.json")) as f:
        return json.load(f).get("_data_files") == []
    import pyarrow.parquet as pq   # a dependency of datasets
    return all((pq.read_metadata(fn).num_rows == 0) if _builder(fn) == "parquet"
               else not open(fn, "rb").read(1 << 20).strip() for fn in files)
  except Exception:  # noqa: BLE001 -- not readable as empty: report the load error
    return False


def _unreadable(path: str, what: str, e: Exception, files=()) -> DataError:
  if _holds_no_rows(path, list(files)):
    return DataError(f"{path}: empty dataset (no rows)")
  reason = (str(e).strip().splitlines() or [""])[0][:200]
  return DataError(f"{path}: datasets cannot read it as {what} ({type(e).__name__}: {reason})")


def _load(path: str) -> list[dict]:
  """Every row of the data set at ``path`` as a dict (datasets' progress bars off)."""
  datasets = _datasets()
  quiet = datasets.are_progress_bars_disabled()
  datasets.disable_progress_bars()
  try:
    return _rows(datasets, path)
  finally:
    if not quiet:
      datasets.enable_progress_bars()


def _rows(datasets, path: str) -> list[dict]:
  if os.path.isdir(path):
    try:
      ds = datasets.load_from_disk(path)
    except FileNotFoundError:
      raise DataError(f"{path}: a folder that Dataset.save_to_disk did not write (for parquet "
                      f"or JSON files in it, give them: hf:{os.path.join(path, '*.parquet')})"
                      ) from None
    except Exception as e:  # noqa: BLE001 -- e.g. a saved data set of 0 rows (0 shards)
      raise _unreadable(path, "a saved dataset", e) from None
    if isinstance(ds, datasets.DatasetDict):
      splits = list(ds)
      raise DataError(f"{path}: a DatasetDict with splits {', '.join(splits)}; name one, e.g. "
                      f"hf:{os.path.join(path, splits[0])}")
    return ds.to_list()
  files = sorted(glob.glob(path))
  if not files:
    raise DataError(f"{path}: no such file or folder")
  builder = _builder(files[0])
  with tempfile.TemporaryDirectory(prefix="prefjax-hf-") as cache:
    try:
      ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache)
    except Exception as e:  # noqa: BLE001 -- pyarrow / datasets errors: one line naming it
      raise _unreadable(path, builder, e, files) from None
    return ds.to_list()


def read_hf(path: str) -> ReadResult:
  """Reads ``path`` (see the module docstring) into a ``ReadResult`` (``unit`` "row").

  Raises:
    DataError: one line naming the path and, for a bad row, the row and its field; also for
      a missing ``datasets`` package (naming the ``hf`` extra), a missing column, an empty
      data set or a file that ``datasets`` cannot read.
  """
  rows = _load(path)
  if not rows:
    raise DataError(f"{path}: empty dataset (no rows)")
  fmt = detect_format(rows[0])
  if fmt is None:
    missing = [k for k in ("chosen", "rejected") if k not in rows[0]]
    raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(rows[0])}); "
                    "TRL's preference formats have prompt, chosen, rejected, or chosen and "
                    "rejected only")
  parse = PARSERS[fmt]
  stem = os.path.basename(path.rstrip(os.sep)).split(".")[0] or "hf"
  examples, notes = [], []
  for i, row in enumerate(rows):
    try:
      example, row_notes = parse(row, loc=i, stem=stem)
    except RowError as e:
      raise DataError(f"{path}: row {i}: {e}") from None
    examples.append(example)
    notes.extend((i, note) for note in row_notes)
  return ReadResult(examples=examples, skipped=[], source=path, format=fmt, unit="row",
                    notes=notes)


def read_hf_pairs(path: str, *, chat: bool = True) -> Raw:
  """The ``hf:`` reader of ``prefjax.data.file_sources``: ``read_hf`` as pair records."""
  return pairs_of(read_hf(path), chat=chat)
