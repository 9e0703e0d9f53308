"""Missing optional packages: one line naming the extra that installs them."""
import os
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
