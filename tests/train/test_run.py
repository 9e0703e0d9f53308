"""The runner on real-format sources: a tiny random Llama that transformers builds and saves
(with a word-level tokenizer and a chat template) and data files of every kind.

Every objective kind runs 2 steps through ``scripts/train.py``'s ``run``; the exported HF
directory reloads in transformers with prefjax's logits; bad rows are counted by reason;
bad input stops with one line naming the problem.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")
pytest.importorskip("tokenizers")

from prefjax.errors import PrefjaxError
from prefjax.train.config import base_config, train_section
from prefjax.train.run import run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_fixtures as fx  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("real")
  return {"model": fx.tiny_hf_model(str(d / "model")),
          "model_notemplate": fx.tiny_hf_model(str(d / "model_nt"), chat_template=False),
          "pairs": fx.write_pairs(d / "pairs.jsonl", bad_lines=(3, 7)),
          "sft": fx.write_sft(d / "sft.jsonl"), "groups": fx.write_groups(d / "groups.jsonl"),
          "unpaired": fx.write_unpaired(d / "unpaired.jsonl"), "dir": d}


def _config(files, *, stages=("sft", "dpo", "eval"), loss="dpo", train=None, **data):
  c = base_config()
  c.stages = stages
  c.model.init_from = files["model"]
  c.data.train = train or "jsonl:" + files["pairs"]
  c.data.max_len, c.data.n_eval = 48, 8
  for k, v in data.items():
    c.data[k] = v
  c.sft.steps, c.sft.batch_size = 2, 4
  c.dpo.steps, c.dpo.batch_size, c.dpo.loss = 2, 4, loss
  c.dpo.loss_kwargs = {} if loss in ("sft", "simpo", "cpo", "orpo") else dict(beta=0.1)
  c.progress, c.tensorboard, c.log_every, c.checkpoint.every = False, False, 1, 0
  c.heldout.enabled, c.heldout.n_pairs, c.heldout.n_generations = True, 8, 1
  c.heldout.max_new_tokens, c.heldout.every = 4, 2
  return c


def _metrics(workdir, stage):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if r["stage"] == stage]


@pytest.mark.parametrize("loss,train", [
    ("dpo", "pairs"), ("simpo", "pairs"), ("kto", "unpaired"), ("mdpo", "groups")])
def test_every_objective_kind_runs_two_steps(files, tmp_path, loss, train):
  spec = {"pairs": "jsonl:", "unpaired": "unpaired:", "groups": "groups:"}[train] + files[train]
  stages = ("sft", "dpo", "eval") if train == "pairs" else ("dpo",)
  c = _config(files, stages=stages, loss=loss, train=spec,
              sft="sft:" + files["sft"])
  s = run(c, str(tmp_path))
  rows = _metrics(tmp_path, "dpo")
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows)
  # the first step compiles; the second only if its batch has a new (bucketed) length
  assert rows[0]["compiled_steps"] == 1 and rows[1]["compiled_steps"] in (0, 1)
  if train == "pairs":
    assert [r["step"] for r in _metrics(tmp_path, "sft")] == [1, 2]
    assert 0.0 <= s["eval/heldout/accuracy"] <= 1.0
    assert "ranking/heldout_accuracy" in rows[-1]
    gens = [json.loads(l) for l in open(tmp_path / "generations.jsonl")]
    assert gens and all(g["stage"] == "dpo" for g in gens)
  assert os.path.isfile(tmp_path / "export" / "hf" / "model.safetensors")


def test_reward_model_on_the_lm_backbone(files, tmp_path):
  c = _config(files, stages=("reward", "eval_reward"))
  c.reward = train_section(steps=2, batch_size=4, lr=1e-3, warmup=0)
  c.reward.loss, c.reward.data = "bradley_terry", ""
  c.reward.loss_kwargs = dict(margin=0.0, center_coef=0.0)
  c.reward.n_pairs, c.reward.n_eval_pairs = 0, 8
  c.export.enabled = False
  s = run(c, str(tmp_path))
  assert [r["step"] for r in _metrics(tmp_path, "reward")] == [1, 2]
  assert s["reward_eval/n_pairs"] == 8 and 0 <= s["reward_eval/accuracy"] <= 1
  assert os.path.isdir(tmp_path / "params" / "reward")


def test_export_reloads_in_transformers_with_equal_logits(files, tmp_path):
  import jax.numpy as jnp
  from flax import nnx
  from prefjax.models.loading import load_model
  c = _config(files, stages=("dpo",))
  run(c, str(tmp_path))
  cfg, graphdef, params, tok = load_model(str(tmp_path / "model"))
  ids = tok.encode_prompt("the answer is") + tok.encode_completion("yes good")
  x = np.array([ids], np.int32)
  ours, _ = nnx.merge(graphdef, params)(jnp.asarray(x), jnp.arange(x.shape[1])[None],
                                        jnp.ones_like(jnp.asarray(x)))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export" / "hf"))
  with torch.no_grad():
    theirs = hf(torch.tensor(x, dtype=torch.long)).logits.numpy()
  assert np.max(np.abs(np.asarray(ours) - theirs)) <= 1e-4
  # The trained weights moved away from the source model's.
  _, _, start, _ = load_model(files["model"])
  assert not all(np.allclose(a, b) for a, b in
                 zip(*(map(np.asarray, jax_leaves(p)) for p in (params, start))))


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_bad_rows_are_counted_and_training_uses_the_good_ones(files, tmp_path):
  c = _config(files, stages=("dpo",))
  s = run(c, str(tmp_path))
  report = json.dumps(s["data/reports"])
  assert "line 3" in report or "3" in report
  n_read = sum(r["examples"] for r in s["data/reports"].values())
  assert n_read == 46                      # 48 lines, 2 broken


def test_completion_policy_counts(files, tmp_path):
  # max_len 6: completions of 3-7 tokens (with the end-of-turn token) do not all fit.
  c = _config(files, stages=("dpo",), max_len=6, completion="drop")
  c.data.truncate = "prompt_left"
  c.heldout.enabled = False
  s = run(c, str(tmp_path / "drop"))
  assert sum(s["data/dpo/skipped"].values()) > 0
  c = _config(files, stages=("dpo",), max_len=6, completion="truncate")
  c.heldout.enabled = False
  run(c, str(tmp_path / "trunc"))
  rows = _metrics(tmp_path / "trunc", "dpo")
  assert max(r["data/completion_truncated_fraction"] for r in rows) > 0


def _cli(tmp_path, *overrides):
  cmd = [sys.executable, os.path.join(REPO, "scripts", "train.py"),
         f"--config={os.path.join(REPO, 'experiments', 'testbed', 'dpo.py')}:quick",
         f"--workdir={tmp_path / 'w'}", "--config.progress=False", *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_unknown_model_path_is_one_line_and_writes_nothing(tmp_path):
  r = _cli(tmp_path, "--config.model.init_from=/no/such/model")
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().startswith("error:") and "/no/such/model" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "w")


def test_bad_config_creates_no_workdir(tmp_path):
  r = _cli(tmp_path, "--config.dpo.loss=dpoo")
  assert r.returncode == 1 and "unknown loss 'dpoo'" in r.stderr
  assert not os.path.exists(tmp_path / "w")


def test_bad_inputs_name_the_problem(files, tmp_path):
  # Chat-format prompts with a tokenizer that has no chat template.
  chat = tmp_path / "chat.jsonl"
  with open(chat, "w") as f:
    for i in range(8):
      f.write(json.dumps({"chosen": f"\n\nHuman: hi {i}\n\nAssistant: yes",
                          "rejected": f"\n\nHuman: hi {i}\n\nAssistant: no"}) + "\n")
  c = _config(files, stages=("dpo",), train=f"hh:{chat}")
  c.model.init_from = files["model_notemplate"]
  with pytest.raises(PrefjaxError, match="chat template"):
    run(c, str(tmp_path / "a"))
  # A data file with no usable row.
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "x"}\n{"prompt": "y", "chosen": 3}\n')
  with pytest.raises(PrefjaxError, match="bad.jsonl"):
    run(_config(files, stages=("dpo",), train=f"jsonl:{bad}"), str(tmp_path / "b"))
  # max_len smaller than every prompt.
  c = _config(files, stages=("dpo",), max_len=4, truncate="error")
  with pytest.raises(PrefjaxError, match="max_len"):
    run(c, str(tmp_path / "c"))
