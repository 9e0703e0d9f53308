"""Cached reference log-probs: one no-grad pass over a stage's planned batches, kept on disk.

A preference stage's reference is frozen and its batches are a pure function of (examples,
seed, step), so the reference's loss inputs (``ref_*`` log-probs, ``[B]`` or ``[B, K]`` per
step) can be computed once before training and reused by every later run with the same

    key = sha256(reference weights, every planned batch's arrays, extra)

where ``extra`` names what else changes the numbers (tokenizer, chat template, max_len,
layout, forward kind, logps_chunk, model config and dtype, backend). The batches then carry
the ``ref_*`` fields and the step reads them instead of running the reference
(``objective.reference_inputs``): on a hit the reference never goes to the step.

An entry is ``DIR/<key>.npz`` (one array per field, ``[steps, B, ...]``) and
``DIR/<key>.sha256`` (the npz's checksum, written last: an entry counts only when both exist
and agree). A corrupt, truncated or mismatched entry prints one warning line naming the file
and is recomputed and overwritten.

``DIR``: ``config.reference_cache.dir``, else ``$PREFJAX_REFERENCE_CACHE``, else
``$XDG_CACHE_HOME/prefjax/reference_logps`` (default ``~/.cache/prefjax/reference_logps``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from prefjax.train.objective import Objective

ENV = "PREFJAX_REFERENCE_CACHE"


def default_directory() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "prefjax" / "reference_logps"


def resolve(directory: str | os.PathLike | None = None) -> Path:
  """The cache directory: ``directory``, else ``$PREFJAX_REFERENCE_CACHE``, else the default."""
  d = str(directory or "") or os.environ.get(ENV, "").strip()
  return Path(d).expanduser() if d else default_directory()


# ----------------------------------------------------------------------------- the key
def _update(h, name: str, x) -> None:
  x = np.ascontiguousarray(np.asarray(x))
  h.update(f"{name}|{x.dtype.str}|{x.shape}|".encode())
  h.update(x.tobytes())


def cache_key(ref_params, batches, num_steps: int, extra: Mapping[str, Any]) -> str:
  """sha256 (hex) of the weights (host copy, leaf by leaf in path order), the arrays of
  batches ``0 .. num_steps-1`` (fields in name order) and ``extra`` (JSON, sorted keys)."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(ref_params)[0],
                           key=lambda pl: jax.tree_util.keystr(pl[0])):
    _update(h, "w" + jax.tree_util.keystr(path), jax.device_get(leaf))
  for step in range(num_steps):
    batch = batches[step]
    for name in sorted(batch):
      _update(h, f"b{step}/{name}", batch[name])
  h.update(json.dumps(dict(extra), sort_keys=True, default=str).encode())
  return h.hexdigest()


def tokenizer_identity(tokenizer) -> dict:
  """What of a tokenizer the key records: its class, vocabulary size, chat template hash."""
  template = getattr(tokenizer, "chat_template", None) or ""
  return {"tokenizer": type(tokenizer).__name__,
          "vocab_size": int(getattr(tokenizer, "vocab_size", 0) or 0),
          "chat_template": hashlib.sha256(template.encode()).hexdigest()[:16]}


# ----------------------------------------------------------------------------- compute
def compute(graphdef, objective: Objective, ref_params, batches, num_steps: int,
            batch_sharding, seconds: list | None = None) -> dict[str, np.ndarray]:
  """{``ref_*``: [num_steps, B, ...]}: the reference's loss inputs of every planned batch,
  one jitted no-grad forward per batch (a new compile per distinct batch shape). With a
  ``seconds`` list, each batch's wall time (compilation included) is appended to it."""
  fn = jax.jit(lambda p, b: objective.reference(nnx.merge(graphdef, p), b))
  per_step = []
  for step in range(num_steps):
    t0 = time.perf_counter()
    out = fn(ref_params, jax.device_put(batches[step], batch_sharding))
    per_step.append(jax.device_get(out))
    if seconds is not None:
      seconds.append(time.perf_counter() - t0)
  return {k: np.stack([o[k] for o in per_step]) for k in per_step[0]}


# ----------------------------------------------------------------------------- files
def _sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def entry_paths(directory: Path, key: str) -> tuple[Path, Path]:
  return directory / f"{key}.npz", directory / f"{key}.sha256"


def save(directory: Path, key: str, arrays: Mapping[str, np.ndarray]) -> Path:
  """Writes the entry atomically (tmp file + rename; the checksum file last)."""
  directory.mkdir(parents=True, exist_ok=True)
  npz, sha = entry_paths(directory, key)
  tmp = npz.with_name(f"{npz.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  digest = _sha256_file(tmp)
  os.replace(tmp, npz)
  tmp_sha = sha.with_name(f"{sha.name}.{os.getpid()}.tmp")
  tmp_sha.write_text(digest + "\n")
  os.replace(tmp_sha, sha)
  return npz


class CorruptEntry(Exception):
  """An entry that exists but cannot be used (the message says why)."""


def load(directory: Path, key: str, num_steps: int, n_examples: int):
  """The entry's arrays, or None when there is none; raises CorruptEntry when it is unusable
  (checksum missing or wrong, unreadable, or not ``ref_*`` arrays of [num_steps, n_examples])."""
  npz, sha = entry_paths(directory, key)
  if not npz.exists():
    return None
  if not sha.exists():
    raise CorruptEntry("no checksum file (an interrupted write?)")
  if _sha256_file(npz) != sha.read_text().strip():
    raise CorruptEntry("checksum mismatch")
  try:
    with np.load(npz, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise CorruptEntry(f"unreadable ({type(e).__name__}: {e})") from None
  if not arrays or any(not k.startswith("ref_") or a.shape[:2] != (num_steps, n_examples)
                       for k, a in arrays.items()):
    raise CorruptEntry(f"unexpected arrays {sorted((k, a.shape) for k, a in arrays.items())}")
  return arrays


# ----------------------------------------------------------------------------- batches
@dataclasses.dataclass(frozen=True)
class WithReference:
  """``batches[step]`` plus that step's cached ``ref_*`` fields (random access, like grain)."""
  batches: Any
  arrays: Mapping[str, np.ndarray]

  def __len__(self):
    return len(self.batches)

  def __getitem__(self, step):
    return {**self.batches[step], **{k: v[step] for k, v in self.arrays.items()}}


@dataclasses.dataclass(frozen=True)
class Result:
  batches: Any          # WithReference
  status: str           # "hit" | "miss" | "recomputed" (a corrupt entry was replaced)
  key: str
  path: str
  seconds: float = 0.0  # wall time to load or compute (and save) the entry


def prepare(graphdef, objective: Objective, ref_params, batches, num_steps: int, *,
            batch_sharding, directory, extra: Mapping[str, Any]) -> Result:
  """Loads (or computes and saves) the reference log-probs of ``batches[:num_steps]``."""
  t0 = time.perf_counter()
  directory = resolve(directory)
  key = cache_key(ref_params, batches, num_steps, extra)
  npz, _ = entry_paths(directory, key)
  n_examples = int(np.shape(batches[0]["example_mask"])[0])
  status = "miss"
  try:
    arrays = load(directory, key, num_steps, n_examples)
  except CorruptEntry as e:
    print(f"warning: reference cache {npz} is corrupt ({e}); recomputing", file=sys.stderr,
          flush=True)
    arrays, status = None, "recomputed"
  if arrays is not None:
    status = "hit"
  else:
    arrays = compute(graphdef, objective, ref_params, batches, num_steps, batch_sharding)
    save(directory, key, arrays)
  return Result(WithReference(batches, arrays), status, key, str(npz),
                time.perf_counter() - t0)
