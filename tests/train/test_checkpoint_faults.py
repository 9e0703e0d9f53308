"""Corrupt, partial and mismatched checkpoints: one warning line and a fall back, never a
silent load; atomic (tmp-folder) writes; asynchronous saves."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax.train.checkpoint import BAD_SUFFIX, Checkpointer
from tests.train import helpers


@pytest.fixture(scope="module")
def base():
  _, state, _, _, _ = helpers.setup("dpo", steps=4)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.device_get(state), shardings


def _variant(state, k):
  """A distinguishable state (floats shifted by k), same structure and shapes."""
  return jax.tree.map(lambda x: x + k if np.issubdtype(x.dtype, np.floating) else x, state)


def _saved(tmp_path, base, steps=(1, 2), **kw):
  state, shardings = base
  ck = Checkpointer(str(tmp_path / "ck"), every=1, keep=10, **kw)
  for s in steps:
    ck.save(s, jax.device_put(_variant(state, s), shardings))
  ck.wait()
  return ck


def _restore(tmp_path, base):
  state, shardings = base
  lines = []
  ck = Checkpointer(str(tmp_path / "ck"), every=1, keep=10)
  step, restored = ck.restore_latest_valid(jax.device_put(state, shardings), shardings,
                                           log=lines.append)
  return ck, step, restored, lines


def _files(folder):
  return sorted((os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs),
                key=os.path.getsize)


def _assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_intact_checkpoints_restore_newest_without_warning(tmp_path, base):
  _saved(tmp_path, base)
  _, step, restored, lines = _restore(tmp_path, base)
  assert (step, lines) == (2, [])
  _assert_equal(restored, _variant(base[0], 2))


@pytest.mark.parametrize("damage", ["truncated_data_file", "missing_array_metadata",
                                    "missing_data_folder", "empty_step_folder"])
def test_damaged_newest_falls_back_to_previous(tmp_path, base, damage):
  _saved(tmp_path, base)
  bad = tmp_path / "ck" / "2"
  if damage == "truncated_data_file":
    path = _files(bad)[-1]                       # the largest file: array data
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == "missing_array_metadata":
    os.remove(bad / "default" / "_METADATA")
  elif damage == "missing_data_folder":
    import shutil
    shutil.rmtree(bad / "default" / "ocdbt.process_0")
  else:
    import shutil
    shutil.rmtree(bad)
    os.makedirs(bad)
  ck, step, restored, lines = _restore(tmp_path, base)
  assert step == 1
  _assert_equal(restored, _variant(base[0], 1))
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"warning: checkpoint {bad} is unreadable (")
  assert lines[0].endswith("); falling back to step 1")
  # The bad folder is set aside (kept for inspection), so step 2 can be written again.
  assert (tmp_path / "ck" / f"2{BAD_SUFFIX}").is_dir() and not bad.exists()
  ck.save(2, jax.device_put(_variant(base[0], 7), base[1]))
  assert ck.all_steps() == [1, 2]
  _, step, restored, lines = _restore(tmp_path, base)
  assert (step, lines) == (2, [])
  _assert_equal(restored, _variant(base[0], 7))


def test_shape_mismatch_is_named_and_never_loaded(tmp_path, base):
  state, shardings = base
  ck = _saved(tmp_path, base, steps=(1,))
  other = dict(_variant(state, 5))
  other["params"] = dict(other["params"], embed=np.zeros((state["params"]["embed"].shape[0], 16),
                                                         np.float32))
  ck.save(2, other)          # e.g. a checkpoint of another model size in the same workdir
  _, step, restored, lines = _restore(tmp_path, base)
  assert step == 1
  _assert_equal(restored, _variant(state, 1))
  want = state["params"]["embed"].shape
  assert lines == [f"warning: checkpoint {tmp_path / 'ck' / '2'} is unreadable (shape mismatch "
                   f"at params.embed: saved ({want[0]}, 16), expected {want}); falling back to "
                   "step 1"]


def test_structure_and_dtype_mismatch_are_named(tmp_path, base):
  state, shardings = base
  ck = _saved(tmp_path, base, steps=(1,))
  lora_like = {"step": state["step"], "params": {"lora_a": np.zeros((4, 2), np.float32)},
               "opt_state": state["opt_state"]}
  ck.save(2, lora_like)      # another config: LoRA adapters instead of full params
  half = _variant(state, 3)
  half["params"] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), half["params"])
  ck.save(3, half)           # another dtype
  _, step, _, lines = _restore(tmp_path, base)
  assert step == 1 and len(lines) == 2
  assert "checkpoint" in lines[0] and "/3 is unreadable (dtype mismatch at params." in lines[0]
  assert "saved bfloat16, expected float32); falling back to step 2" in lines[0]
  assert "/2 is unreadable (structure mismatch: missing params." in lines[1]
  assert "unexpected params.lora_a" in lines[1] and lines[1].endswith("falling back to step 1")


def test_all_bad_falls_back_to_the_start(tmp_path, base):
  _saved(tmp_path, base, steps=(1,))
  path = _files(tmp_path / "ck" / "1")[-1]
  with open(path, "wb") as f:
    f.write(b"\x00" * 7)
  _, step, restored, lines = _restore(tmp_path, base)
  assert step is None
  _assert_equal(restored, base[0])
  assert len(lines) == 1 and lines[0].endswith("falling back to the start (step 0)")
  assert "OUT_OF_RANGE" in lines[0] or "Error" in lines[0]


def test_interrupted_write_leaves_only_an_ignored_tmp_folder(tmp_path, base):
  """Orbax writes <step>.orbax-checkpoint-tmp-<n>/ and renames it when complete: a write
  killed half way is never listed as a step."""
  _saved(tmp_path, base, steps=(1,))
  tmp = tmp_path / "ck" / "2.orbax-checkpoint-tmp-1234567"
  os.makedirs(tmp / "default")
  (tmp / "default" / "_METADATA").write_text("{half a fi")
  _, step, _, lines = _restore(tmp_path, base)
  assert (step, lines) == (1, [])


def test_async_checkpointing_round_trip(tmp_path, base):
  ck = _saved(tmp_path, base, steps=(1, 2, 3), async_checkpointing=True)
  ck.close()
  _, step, restored, lines = _restore(tmp_path, base)
  assert (step, lines) == (3, [])
  _assert_equal(restored, _variant(base[0], 3))
