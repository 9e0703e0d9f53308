"""Builds the notebooks of this folder from their sources; the .ipynb files are committed
without outputs (the sources are what to edit; then regenerate).

  python experiments/notebooks/make_notebooks.py            # (re)write every .ipynb
  python experiments/notebooks/make_notebooks.py --check    # exit 1 if one is out of date

A source ``src/NAME.py`` is a plain Python file in the "percent" format: ``# %%`` starts a
code cell, ``# %% [markdown]`` a markdown cell whose lines are comments (``# text``). Every
notebook starts with the cells of ``src/_setup.py`` (install prefjax; the ``QUICK``
switch). Requires ``nbformat`` (``pip install -e ".[notebooks]"``).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))   # the checkout first

from prefjax.cli import main_guard  # noqa: E402
from prefjax.errors import ConfigError  # noqa: E402

SRC = os.path.join(HERE, "src")
NAMES = ("00_quickstart", "01_ranking_accuracy", "02_reward_calibration", "03_dpo_variants",
         "04_multi_sample", "05_fine_grained_ppo")

_CHECK = flags.DEFINE_bool("check", False, "fail if a notebook is out of date")


def parse(text: str):
  """``[(kind, source)]`` of a percent-format file (kind "md" or "code")."""
  cells, kind, lines = [], None, []

  def flush():
    body = "\n".join(lines).strip("\n")
    if kind is not None and body:
      cells.append((kind, body))

  for line in text.splitlines():
    if line.startswith("# %%"):
      flush()
      kind, lines = ("md" if "[markdown]" in line else "code"), []
    elif kind == "md":
      lines.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    elif kind == "code":
      lines.append(line)
  flush()
  return cells


def notebooks() -> dict:
  """{NAME.ipynb: cells}: the setup cells, then the notebook's own."""
  with open(os.path.join(SRC, "_setup.py")) as f:
    setup = parse(f.read())
  out = {}
  for name in NAMES:
    with open(os.path.join(SRC, name + ".py")) as f:
      own = parse(f.read())
    out[name + ".ipynb"] = own[:1] + setup + own[1:]   # title first, then the setup
  return out


def build(cells):
  import nbformat
  nb = nbformat.v4.new_notebook()
  nb.metadata = {
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []},
  }
  for kind, text in cells:
    text = text.strip("\n")
    cell = (nbformat.v4.new_markdown_cell(text) if kind == "md"
            else nbformat.v4.new_code_cell(text))
    cell.pop("id", None)
    nb.cells.append(cell)
  nb.nbformat, nb.nbformat_minor = 4, 4
  return nb


def render(cells) -> str:
  import nbformat
  return nbformat.writes(build(cells)) + "\n"


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  stale = []
  for name, cells in notebooks().items():
    path = os.path.join(HERE, name)
    text = render(cells)
    old = open(path).read() if os.path.exists(path) else None
    if old == text:
      continue
    if _CHECK.value:
      stale.append(name)
    else:
      with open(path, "w") as f:
        f.write(text)
      print(f"wrote {path}")
  if stale:
    raise ConfigError(f"out of date (run {os.path.relpath(__file__)}): {', '.join(stale)}")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
