"""Runs the real-model studies' ``--quick`` modes through ``scripts/study_real.py`` (all five
in one process, as ``--study all`` does for a user) and checks the files every study writes
(results.json rows with their fields, CSV, markdown, plot)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prefjax.studies.real import missing_requirements

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def needs_real_model():
  missing = missing_requirements()
  if missing:
    pytest.skip(missing)


def run_quick(out, study: str = "all", timeout: int = 3600) -> subprocess.CompletedProcess:
  """``study_real.py --study STUDY --quick --out OUT`` in a subprocess; fails the test with
  the lines that say what went wrong when it exits non-zero."""
  needs_real_model()
  cmd = [sys.executable, os.path.join(REPO, "scripts", "study_real.py"), f"--study={study}",
         "--quick", f"--out={out}"]
  # Marked ``alone`` (tests/conftest.py): the studies peak at ~9.5 GB RSS. The quick sizes
  # are compile-bound, so the suite's XLA -O1 flag is kept (the calibration quick mode: 164 s
  # at -O1 against 176 s at the default level, compilation cache off).
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                     env=dict(os.environ))
  # Progress bars fill stderr; keep the lines that say what went wrong.
  log = [x for x in r.stderr.splitlines() if x.strip() and "it/s]" not in x
         and "s/it]" not in x]
  assert r.returncode == 0, f"exit code {r.returncode}:\n" + "\n".join(log[-30:])
  return r


def check_outputs(out, study: str, fields) -> dict:
  """``out``'s results.json after checking the files every study writes; every row has
  ``fields`` (finite where they are floats)."""
  doc = json.load(open(out / "results.json"))
  assert doc["study"] == study and doc["rows"], doc
  for row in doc["rows"]:
    for f in fields:
      assert f in row, (f, row)
      if isinstance(row[f], float):
        assert np.isfinite(row[f]) or f.endswith("_se"), (f, row)
  assert doc["summary"] and all("n" in d for d in doc["summary"])
  with open(out / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == len(doc["rows"])
  assert len((out / "rows.jsonl").read_text().splitlines()) == len(doc["rows"])
  assert (out / "results.md").read_text().startswith("# ")
  assert (out / "results.png").stat().st_size > 0
  return doc
