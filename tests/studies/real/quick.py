"""Runs a real-model study's ``--quick`` mode through ``scripts/study_real.py`` and checks the
files every study writes (results.json rows with their fields, CSV, markdown, plot)."""
import csv
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from prefjax.studies.real import missing_requirements
from tests.conftest import full_opt_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def needs_real_model():
  missing = missing_requirements()
  if missing:
    pytest.skip(missing)


def run_quick(tmp_path, study: str, fields) -> dict:
  """The study's quick mode; returns results.json after checking the common outputs."""
  needs_real_model()
  out = tmp_path / study
  # The start model's samples are the same for every study of one size: drawn by the first
  # study of the test run, read from the cache by the others.
  run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  samples = (os.path.join(tempfile.gettempdir(), f"prefjax-quick-samples-{run}") if run
             else tmp_path / "samples")
  cmd = [sys.executable, os.path.join(REPO, "scripts", "study_real.py"), f"--study={study}",
         "--quick", f"--out={out}", f"--samples_dir={samples}"]
  # Marked ``alone`` (tests/conftest.py): the study peaks at ~9.5 GB RSS.
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1200,
                     env=full_opt_env())
  # Progress bars fill stderr; keep the lines that say what went wrong.
  log = [x for x in r.stderr.splitlines() if x.strip() and "it/s]" not in x
         and "s/it]" not in x]
  assert r.returncode == 0, f"exit code {r.returncode}:\n" + "\n".join(log[-30:])
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
