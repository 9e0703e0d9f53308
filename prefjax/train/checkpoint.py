"""Orbax checkpoints of the train state: save every N steps, keep K, restore sharded."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """One stage's checkpoints under ``directory`` (``{step}/`` subfolders)."""

  def __init__(self, directory: str, *, every: int, keep: int):
    self.directory = os.path.abspath(directory)
    self.every = every
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def should_save(self, step: int, last: bool) -> bool:
    return last or (self.every > 0 and step % self.every == 0)

  def save(self, step: int, state) -> None:
    self._mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    self._mngr.wait_until_finished()

  def restore(self, step: int, like, shardings):
    """Restores ``step`` into arrays with the structure of ``like`` and ``shardings``."""
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
    return self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self):
    self._mngr.close()


def save_params(directory: str, params) -> None:
  """Writes a bare parameter tree (e.g. the final policy) as an Orbax checkpoint."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), params, force=True)


def load_params(directory: str, like=None, shardings=None):
  """Reads a tree written by ``save_params``; with ``like`` it is restored to that layout."""
  with ocp.StandardCheckpointer() as ckptr:
    if like is None:
      return ckptr.restore(os.path.abspath(directory))
    if shardings is None:
      shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), like)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
    return ckptr.restore(os.path.abspath(directory), abstract)
