"""load_run: a testbed workdir, one of its DPO checkpoints, a model path, a reward head, a
workdir without a final model and a missing path, each read the way the runner wrote it."""
import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from prefjax.errors import ConfigError, DataError, PrefjaxError
from prefjax.models.loading import load_params
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train import config as config_lib
from prefjax.train.config import train_section
from prefjax.train.finished_run import checkpoint_params, is_workdir, last_step_dir, load_run
from prefjax.train.run import run
from prefjax.train.model_source import build_model


def _tiny():
  c = config_lib.base_config()
  c.stages = ("sft", "dpo", "reward")
  c.model.overrides.update(dict(n_layers=1, dim=32, mlp_dim=64, n_heads=2, n_kv_heads=1,
                                head_dim=16))
  c.testbed.n_sft, c.testbed.n_pairs, c.testbed.n_eval_pairs = 64, 64, 16
  c.sft.steps, c.sft.batch_size, c.dpo.steps, c.dpo.batch_size = 2, 8, 4, 8
  c.reward = train_section(steps=2, batch_size=8, lr=1e-3, warmup=1)
  c.reward.loss, c.reward.data = "bradley_terry", "world"
  c.reward.loss_kwargs = ml_collections.ConfigDict(dict(margin=0.0, center_coef=0.0))
  c.reward.n_pairs, c.reward.n_eval_pairs = 16, 8
  c.log_every, c.checkpoint.every, c.ranking.n_train = 1, 2, 16
  c.progress, c.tensorboard = False, False
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A finished sft -> dpo -> reward testbed run (checkpoints every 2 steps)."""
  w = tmp_path_factory.mktemp("run") / "w"
  run(_tiny(), str(w))
  return w


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _copy_run(workdir, dest, *, parts, config=None):
  """A workdir with only ``parts`` of ``workdir`` (and its config, or ``config``)."""
  dest.mkdir()
  for p in parts:
    shutil.copytree(workdir / p, dest / p)
  c = config if config is not None else json.loads((workdir / "config.json").read_text())
  (dest / "config.json").write_text(json.dumps(c))
  return dest


def test_testbed_workdir(workdir):
  r = load_run(str(workdir))
  assert r.kind == "workdir" and is_workdir(str(workdir))
  assert isinstance(r.tokenizer, TestbedTokenizer) and r.config.dpo.steps == 4
  assert r.description == f"policy {workdir / 'model'}, reference {workdir}/checkpoints/sft/2"
  _equal(r.policy, checkpoint_params(workdir / "checkpoints" / "dpo" / "4"))  # the final model
  _equal(r.reference, checkpoint_params(workdir / "checkpoints" / "sft" / "2"))
  assert r.reward is None
  only = load_run(str(workdir), need=("policy",))
  assert only.reference is None and only.description == f"policy {workdir / 'model'}"


def test_dpo_step_dir(workdir):
  step = workdir / "checkpoints" / "dpo" / "2"
  r = load_run(str(step))
  assert r.kind == "checkpoint" and r.config.seed == _tiny().seed
  assert r.description == f"policy {step}, reference {workdir}/checkpoints/sft/2"
  _equal(r.policy, checkpoint_params(step))
  _equal(r.reference, checkpoint_params(workdir / "checkpoints" / "sft" / "2"))
  same = load_run(str(workdir), step_dir=step, need=("policy",))
  _equal(same.policy, r.policy)
  dpo = workdir / "checkpoints" / "dpo"
  assert last_step_dir(dpo) == str(dpo / "4")


def test_a_model_path_is_its_own_reference(workdir):
  r = load_run(str(workdir / "model"))
  assert r.kind == "prefjax" and r.policy is r.reference and r.config is None
  assert r.description.endswith("reference = the same model")
  _equal(r.policy, load_run(str(workdir), need=("policy",)).policy)
  hf = load_run(str(workdir / "export" / "hf"))
  assert hf.kind == "hf" and hf.policy is hf.reference


def test_reward_head(workdir):
  r = load_run(str(workdir), need=("reward",))
  assert r.policy is None and r.reference is None and r.graphdef is None
  assert isinstance(r.reward.tokenizer, TestbedTokenizer)
  want = load_params(str(workdir / "params" / "reward"))
  _equal(r.reward.params["head"], want["head"])
  assert r.reward.params["backbone"]["blocks"].keys() == {0}  # merge-ready keys
  with pytest.raises(DataError, match=r"no params/reward \(run the 'reward' stage first\)"):
    load_run(str(workdir / "model"), need=("reward",))


def test_missing_path_is_one_line(tmp_path):
  with pytest.raises(ConfigError) as e:
    load_run(str(tmp_path / "nope"))
  assert str(e.value) == f"{tmp_path / 'nope'}: no such file or directory"
  with pytest.raises(DataError, match="neither a prefjax workdir"):
    load_run(str(tmp_path))                       # an empty directory
  with pytest.raises(ConfigError, match="unknown part"):
    load_run(str(tmp_path), need=("value_head",))


def test_workdir_without_a_final_model(workdir, tmp_path):
  # A preset run that stopped during DPO: its last DPO checkpoint stands in for the policy.
  w = _copy_run(workdir, tmp_path / "killed", parts=["checkpoints"])
  r = load_run(str(w))
  assert r.description == f"policy {w}/checkpoints/dpo/4, reference {w}/checkpoints/sft/2"
  _equal(r.policy, load_run(str(workdir), need=("policy",)).policy)
  # ... and with no checkpoint either, or a real-model run: one line naming what is there.
  bare = _copy_run(workdir, tmp_path / "bare", parts=[])
  with pytest.raises(DataError) as e:
    load_run(str(bare))
  assert "without a final model" in str(e.value) and "found config.json" in str(e.value)
  assert len(str(e.value).splitlines()) == 1
  c = json.loads((workdir / "config.json").read_text())
  c["model"]["init_from"] = str(workdir / "model")
  real = _copy_run(workdir, tmp_path / "real", parts=["checkpoints"], config=c)
  with pytest.raises(DataError, match="without a final model.*did the run finish"):
    load_run(str(real))


def test_reference_without_sft_is_the_start(workdir, tmp_path):
  """A DPO-only run's reference is the model it started from: the preset at config.seed, or
  ``config.model.init_from``; a real run whose SFT checkpoint is gone cannot rebuild it."""
  c = json.loads((workdir / "config.json").read_text())
  c["stages"] = ["dpo"]
  w = _copy_run(workdir, tmp_path / "dpo_only", parts=["model"], config=c)
  r = load_run(str(w))
  assert r.description.endswith(f"reference the initial model (preset {c['model']['preset']}, "
                                f"seed {c['seed']})")
  _equal(r.reference, build_model(ml_collections.ConfigDict(c), TestbedTokenizer())[2])
  c["model"]["init_from"] = str(workdir / "model")
  w = _copy_run(workdir, tmp_path / "real_dpo_only", parts=["model"], config=c)
  r = load_run(str(w))
  assert r.description == f"policy {w / 'model'}, reference {workdir / 'model'}"
  _equal(r.reference, r.policy)
  c["stages"] = ["sft", "dpo"]
  w = _copy_run(workdir, tmp_path / "real_sft_lost", parts=["model"], config=c)
  with pytest.raises(ConfigError, match="had an SFT stage but kept no checkpoint"):
    load_run(str(w))


def test_lora_checkpoint_holds_adapters_only(workdir, tmp_path):
  c = json.loads((workdir / "config.json").read_text())
  c["lora"]["rank"] = 4
  w = _copy_run(workdir, tmp_path / "lora", parts=["checkpoints"], config=c)
  with pytest.raises(ConfigError, match="adapters only"):
    load_run(str(w / "checkpoints" / "dpo" / "2"))


def test_errors_are_prefjax_errors(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(PrefjaxError, match="not JSON"):
    load_run(str(tmp_path))
