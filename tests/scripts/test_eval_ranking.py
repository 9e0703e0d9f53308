"""scripts/eval_ranking.py on a tiny random testbed model: outputs, report counts, numbers.

The model is random (two Orbax checkpoints of a 1-layer testbed model written here), so the
test is fast; the numbers are checked against an independent numpy computation on log-probs
from ``prefjax.eval.completion_scoring.score_completions`` (one shape, no length buckets).
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefjax.eval.completion_scoring import score_completions
from prefjax.testbed import world
from prefjax.testbed import tokenizer as tb_tokenizer
from prefjax.train import config as config_lib
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.data_source import world_config
from prefjax.train.model_source import build_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "eval_ranking.py"


def _load_script():
  spec = importlib.util.spec_from_file_location("eval_ranking", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _tiny_config():
  c = config_lib.base_config()
  c.model.overrides.n_layers = 1
  c.model.overrides.dim = 32
  c.model.overrides.mlp_dim = 64
  c.model.overrides.n_heads = 2
  c.model.overrides.n_kv_heads = 1
  c.model.overrides.head_dim = 16
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with random SFT and DPO checkpoints (different seeds)."""
  wd = tmp_path_factory.mktemp("wd")
  c = _tiny_config()
  (wd / "config.json").write_text(c.to_json_best_effort())
  tok = tb_tokenizer.TestbedTokenizer()
  params = {}
  for stage, seed in (("sft", 0), ("dpo", 1)):
    c.seed = seed
    _, graphdef, p = build_model(c, tok)
    ck = Checkpointer(str(wd / "checkpoints" / stage), every=1, keep=1)
    ck.save(3, {"params": p, "step": np.int32(3)})
    ck.close()
    params[stage] = p
  return wd, graphdef, params


def _numpy_table(graphdef, params, pairs, max_len, tok):
  prompts = [tok.encode_prompt(p["prompt"]) for p in pairs]
  out = {}
  for name, prm in params.items():
    for side in ("chosen", "rejected"):
      comp = [tok.encode_completion(p[side]) for p in pairs]
      s, n = score_completions(graphdef, prm, prompts, comp, max_len=max_len)
      out[name, side] = (np.asarray(s, np.float64), np.asarray(s, np.float64) / n)
  return out


def test_testbed_model(workdir, tmp_path, capsys):
  wd, graphdef, params = workdir
  mod = _load_script()
  res = mod.evaluate(str(wd), "testbed:sort", str(tmp_path / "out"), betas=(0.1, 1.0, 10.0),
                     limit=24, batch_size=8, progress=False)
  for f in ("ranking.json", "table1.md", "difficulty_hist.png"):
    assert (tmp_path / "out" / f).stat().st_size > 0
  saved = json.loads((tmp_path / "out" / "ranking.json").read_text())
  assert saved["num_pairs"] == 24 and saved["num_skipped_malformed"] == 0
  assert saved["sequences_per_second"] > 0 and not saved["same_model_as_reference"]
  md = (tmp_path / "out" / "table1.md").read_text()
  assert "| R~ | R~* min | R~* med | R~* max | R | R* min" in md

  # Independent recomputation: numpy on log-probs scored without length buckets.
  c = _tiny_config()
  pairs = world.preference_pairs(world_config(c, "testbed"), 24, split="eval")
  sc = _numpy_table(graphdef, params, pairs, c.data.max_len, tb_tokenizer.TestbedTokenizer())
  alpha = np.array([p["alpha"] for p in pairs])
  pol_c, pol_r = sc["dpo", "chosen"][0], sc["dpo", "rejected"][0]
  ref_c, ref_r = sc["sft", "chosen"][0], sc["sft", "rejected"][0]
  tie = np.abs(alpha - 0.5) < 1e-6  # equal oracle rewards: the paper's tie rule
  pick = lambda x, y, t: np.where(tie, t, np.where(alpha > 0.5, x >= y, y >= x))
  obs = pick(pol_c, pol_r, np.abs(np.exp(pol_c) - np.exp(pol_r)) < 0.01).mean()
  assert res["table1"]["ranking/accuracy"] == pytest.approx(obs, abs=1e-6)
  ideal = []
  for beta in (0.1, 1.0, 10.0):
    a = np.clip(alpha, 1e-3, 1 - 1e-3)
    m = ref_c - ref_r + np.log(a / (1 - a)) / beta
    ideal.append(np.where(tie, np.abs(np.exp(ref_c) - np.exp(ref_r)) < 0.01,
                          np.where(alpha > 0.5, m > 0, m < 0)).mean())
  assert res["table1"]["ranking/idealized_accuracy/median"] == pytest.approx(np.median(ideal))
  assert res["table1"]["ranking/alignment_gap"] == pytest.approx(np.median(ideal) - obs)
  assert res["difficulty"]["fraction_positive"] == pytest.approx(np.mean(ref_r - ref_c > 0))


def test_generic_jsonl_with_malformed_rows(workdir, tmp_path):
  wd, _, _ = workdir
  rows = [json.dumps({"prompt": f"sort: {i}{i+1}", "chosen": f"{i}{i+1}", "rejected": f"{i+1}{i}"})
          for i in range(5)]
  rows.insert(2, '{"prompt": "sort: 21", "chosen": "12"}')          # no rejected
  rows.insert(4, '{"prompt": "broken json",')                         # not JSON
  rows.append(json.dumps({"prompt": "sort: 12", "chosen": "ABC", "rejected": "12"}))  # bad chars
  data = tmp_path / "pairs.jsonl"
  data.write_text("\n".join(rows) + "\n")
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), f"--model={wd}", f"--data=jsonl:{data}", f"--out={out}",
       "--batch_size=4", "--noprogress"],
      capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
      timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "skipped 2 malformed rows (jsonl) at lines 3, 5" in proc.stdout
  res = json.loads((out / "ranking.json").read_text())
  assert (res["num_rows"], res["num_pairs"]) == (8, 5)
  assert (res["num_skipped_malformed"], res["num_skipped_unscorable"]) == (2, 1)
  assert [s[0] for s in res["skipped"]][:2] == ["3", "5"]
  assert res["alpha"] == "6 single-label rows use alpha=0.75"  # 5 scored + 1 unscorable
  assert (out / "table1.md").exists() and (out / "difficulty_hist.png").exists()
  from prefjax.eval import ranking_sources
  limited = ranking_sources.load_pairs(f"jsonl:{data}", limit=2)
  assert (len(limited.pairs), limited.num_parsed, len(limited.skipped)) == (2, 6, 2)


def test_bad_model_path_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), f"--model={tmp_path}/nope", "--data=testbed:sort",
       f"--out={tmp_path}/o"], capture_output=True, text=True, cwd=ROOT,
      env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=60)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [f"error: --model {tmp_path}/nope: no such file "
                                              "or directory"]
