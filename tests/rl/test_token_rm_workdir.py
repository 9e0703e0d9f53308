"""``token_rm:WORKDIR``: the token-level reward model an RL run trained is saved as
``params/token_rm`` and a later run uses it as its reward without training one."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from prefjax.errors import ConfigError, PrefjaxError
from prefjax.rl import reward_sources as rw
from prefjax.train.finished_run import checkpoint_params, last_step_dir, load_run
from prefjax.train.run import run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**rl):
  path = os.path.join(REPO, "experiments", "testbed", "fine_grained_ppo.py")
  spec = importlib.util.spec_from_file_location("_fg_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("quick")
  c.stages = ("ppo",)                              # from the preset: no SFT, no judge
  c.rl.iterations, c.rl.token_rm.steps, c.rl.token_rm.n_pairs = 1, 4, 64
  c.progress, c.tensorboard, c.export.enabled = False, False, False
  for k, v in rl.items():
    c.rl[k] = v
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  w = tmp_path_factory.mktemp("w1")
  run(_config(), str(w))
  return w


def test_the_trained_token_rm_is_saved_and_reloaded(trained):
  meta = json.load(open(trained / "params" / "token_rm.json"))
  assert meta["kind"] == "token_reward_model" and meta["tokenizer"] == "TestbedTokenizer"
  loaded = load_run(str(trained), need=("token_reward",)).token_reward
  # the saved params are the sub-stage's last checkpoint
  ckpt = checkpoint_params(last_step_dir(trained / "checkpoints" / "ppo_token_rm"))
  a, b = jax.tree.leaves(loaded.params), jax.tree.leaves(ckpt)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_later_run_rewards_with_it_without_training_one(trained, tmp_path):
  key = f"token_rm:{trained}"
  run(_config(rewards={key: 1.0}), str(tmp_path))
  assert not (tmp_path / "checkpoints" / "ppo_token_rm").exists()
  assert not (tmp_path / "params" / "token_rm").exists()
  lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  vals = [d[f"reward/{key}"] for d in lines if f"reward/{key}" in d]
  assert vals and all(np.isfinite(vals))


def test_a_workdir_without_one_is_a_one_line_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"stages": ["dpo"]}))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(PrefjaxError, match="no params/token_rm"):
    load_run(str(tmp_path), need=("token_reward",))
  with pytest.raises(ConfigError, match="no such file or directory"):
    load_run(str(tmp_path / "missing"), need=("token_reward",))
  rw.get_spec("token_rm")                                  # the argument is optional
  rw.get_spec(f"token_rm:{tmp_path}")
