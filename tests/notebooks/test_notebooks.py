"""The notebooks of experiments/notebooks/: in sync with their sources, committed without
outputs, and executed top to bottom (SMOKE sizes) with nbclient; any cell error fails.

Needs the ``notebooks`` extra (``pip install -e ".[notebooks]"``: nbclient, nbformat,
ipykernel); skipped with the reason when it is absent. The kernel runs this interpreter
(a kernelspec written to a temporary JUPYTER_PATH), with PREFJAX_NB_QUICK=smoke: every
cell at toy sizes (QUICK plus smaller steps and counts), checking the code, not the numbers.
"""
import json
import os
import resource
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NB_DIR = os.path.join(REPO, "experiments", "notebooks")
sys.path.insert(0, NB_DIR)
import make_notebooks  # noqa: E402

NAMES = [n + ".ipynb" for n in make_notebooks.NAMES]
CELL_TIMEOUT_S = 900
KERNEL = "prefjax-test-python"


def _need(module):
  try:
    return __import__(module)
  except ImportError:
    pytest.skip(f"{module} is not installed (pip install -e \".[notebooks]\")")


def test_notebooks_match_sources_and_have_no_outputs():
  nbformat = _need("nbformat")
  for name, cells in make_notebooks.notebooks().items():
    path = os.path.join(NB_DIR, name)
    with open(path) as f:
      text = f.read()
    assert text == make_notebooks.render(cells), (
        f"{name} is out of date: run python experiments/notebooks/make_notebooks.py")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), name
    assert "QUICK = os.environ.get(\"PREFJAX_NB_QUICK\", \"1\")" in code[0].source


def test_parse_percent_format():
  src = "# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n# %%\n\n# %% [markdown]\n#\n# b\n"
  assert make_notebooks.parse(src) == [("md", "# Title\ntext"), ("code", "x = 1"), ("md", "b")]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A kernelspec for this interpreter on a private JUPYTER_PATH (no user-level install)."""
  _need("nbclient")
  _need("ipykernel")
  root = tmp_path_factory.mktemp("jupyter")
  spec = root / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "prefjax test", "language": "python"}))
  return {"JUPYTER_PATH": str(root), "PREFJAX_NB_QUICK": "smoke"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, kernel_env, monkeypatch):
  import nbclient
  import nbformat
  for k, v in kernel_env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv("MPLBACKEND", raising=False)   # the kernel's inline backend draws the plots
  nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                                   resources={"metadata": {"path": NB_DIR}})
  t0, load = time.perf_counter(), os.getloadavg()[0]
  cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  client.execute()     # raises CellExecutionError (with the cell and traceback) on any error
  wall = time.perf_counter() - t0
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)   # the kernel, once it has exited
  print(f"{name}: {wall:.0f} s wall, kernel CPU {cpu1.ru_utime - cpu0.ru_utime:.0f} s user + "
        f"{cpu1.ru_stime - cpu0.ru_stime:.0f} s sys (1-min load average {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end)")
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code), f"{name}: a cell did not run"
  text = "".join(o.get("text", "") for c in code for o in c.outputs)
  assert "QUICK = True" in text and "SMOKE sizes" in text, (
      f"{name}: PREFJAX_NB_QUICK=smoke did not reach the kernel")
  assert any(o.get("data", {}).get("image/png") for c in code for o in c.outputs), (
      f"{name}: no inline plot")
  if any("show_study(" in c.source for c in code):     # the real-model section ran
    assert "committed full-size results" in text, f"{name}: the real-model section did not run"
