"""Orbax checkpoints of the train state: save every N steps, keep K, restore sharded.

Writes are atomic: Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>/`` and renames
it to ``<step>/`` only once every file (and every process's shards) is written
(``orbax/checkpoint/_src/path/atomicity.py``: ``AtomicRenameTemporaryPath``, the default on a
local or NFS file system; object stores get a ``commit_success.txt`` marker instead). A run
killed mid-write leaves only a tmp folder, which ``all_steps`` ignores and the next manager
cleans up. What atomic renames cannot cover -- a file damaged after the fact, a step folder
copied in half, a checkpoint from another model -- ``restore_latest_valid`` handles: it checks
each step's tree metadata against the state it restores into and falls back to the previous
readable step (or to the start), printing one warning line per bad step.
"""
from __future__ import annotations

import os
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath

from prefjax.models.loading import load_params, save_params  # noqa: F401  (re-exported)

BAD_SUFFIX = ".unreadable"   # bad step folders are renamed <step>.unreadable (not a step name)


class Checkpointer:
  """One stage's checkpoints under ``directory`` (``{step}/`` subfolders).

  ``async_checkpointing=True`` lets a save overlap the next training steps (Orbax copies the
  arrays to host memory first, then writes in a background thread); ``wait`` or ``close``
  blocks until the write is committed. Multi-process runs call every method on every
  process: Orbax coordinates the writes (each process writes its own shards; process 0 the
  metadata and the final rename).
  """

  def __init__(self, directory: str, *, every: int, keep: int,
               async_checkpointing: bool = False):
    # Object-store paths (gs://...) go to Orbax as they are; local ones are made absolute.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.every = every
    self.async_checkpointing = async_checkpointing
    self._mngr = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),   # for item_metadata
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_checkpointing))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def should_save(self, step: int, last: bool) -> bool:
    return last or (self.every > 0 and step % self.every == 0)

  def save(self, step: int, state, *, wait: bool | None = None) -> None:
    """Saves ``state`` as ``step``; blocks until written unless asynchronous (``wait=None``
    follows ``async_checkpointing``; a preemption or the last step passes ``wait=True``)."""
    self._mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait or (wait is None and not self.async_checkpointing):
      self._mngr.wait_until_finished()

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def restore(self, step: int, like, shardings):
    """Restores ``step`` into arrays with the structure of ``like`` and ``shardings``."""
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
    return self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))

  def check_compatible(self, step: int, like) -> str | None:
    """None when ``step``'s saved tree has the paths, shapes and dtypes of ``like``, else a
    short reason naming the first difference (another model or config)."""
    saved = _leaf_table(self._mngr.item_metadata(step).tree)
    want = _leaf_table(like)
    missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
    if missing or extra:
      return ("structure mismatch: " + (f"missing {missing[0]}" if missing else "")
              + (", " if missing and extra else "") + (f"unexpected {extra[0]}" if extra else "")
              + f" ({len(missing)} missing, {len(extra)} unexpected leaves)")
    for path, (shape, dtype) in want.items():
      s_shape, s_dtype = saved[path]
      if tuple(s_shape) != tuple(shape):
        return f"shape mismatch at {path}: saved {tuple(s_shape)}, expected {tuple(shape)}"
      if str(s_dtype) != str(dtype):
        return f"dtype mismatch at {path}: saved {s_dtype}, expected {dtype}"
    return None

  def restore_latest_valid(self, like, shardings, *, log=None):
    """(step, state) from the newest checkpoint that is readable and matches ``like``;
    (None, like) when there is none.

    Newest to oldest, each bad step prints one line (``warning: checkpoint DIR/150 is
    unreadable (reason); falling back to step 100``) and is renamed ``150.unreadable`` so
    the resumed run can write step 150 again; a shape or structure mismatch is named in
    the reason and never loaded.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    steps = sorted(self._mngr.all_steps(), reverse=True)
    bad = []
    for i, step in enumerate(steps):
      try:
        reason = self.check_compatible(step, like)
        if reason is None:
          state = self.restore(step, like, shardings)
      except Exception as e:   # noqa: BLE001 -- any failure to read means "unusable"
        reason = _short_reason(e)
      if reason is None:
        self._set_aside(bad)
        return step, state
      nxt = f"step {steps[i + 1]}" if i + 1 < len(steps) else "the start (step 0)"
      log(f"warning: checkpoint {os.path.join(self.directory, str(step))} is unreadable "
          f"({reason}); falling back to {nxt}")
      bad.append(step)
    self._set_aside(bad)
    return None, like

  def _set_aside(self, steps) -> None:
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        src = epath.Path(self.directory) / str(step)
        dst, n = epath.Path(f"{src}{BAD_SUFFIX}"), 1
        while dst.exists():
          dst, n = epath.Path(f"{src}{BAD_SUFFIX}{n}"), n + 1
        src.rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("prefjax_checkpoint_set_aside")
    self._mngr.reload()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def _key_name(k) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_table(tree) -> dict[str, tuple]:
  """{dotted path: (shape, dtype)} for arrays or Orbax ArrayMetadata; optax namedtuples and
  Orbax's dicts/lists flatten to the same paths."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(k) for k in path): (tuple(getattr(x, "shape", ())),
                                                 getattr(x, "dtype", type(x).__name__))
          for path, x in leaves}


def _short_reason(e: BaseException) -> str:
  """The innermost cause's first line (Orbax wraps TensorStore's OUT_OF_RANGE etc.)."""
  for _ in range(20):   # a chain, bounded in case of a cycle
    if (e.__cause__ or e.__context__) is None:
      break
    e = e.__cause__ or e.__context__
  text = (str(e).strip().splitlines() or [""])[0]
  text = text if len(text) <= 200 else text[:197] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__
