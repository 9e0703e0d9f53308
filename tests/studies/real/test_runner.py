"""The runner's helpers that need no model: what is missing, which studies a --study names,
and a notebook's results view."""
import sys

import pytest

from prefjax.errors import ConfigError
from prefjax.studies.real import STUDIES, missing_requirements, report, show_study, study_names


def test_show_study_without_run_reads_the_committed_results(tmp_path, capsys):
  out = tmp_path / "experiments" / "real" / "results" / "study_mdpo"
  rows = [dict(method="dpo", seed=s, accuracy=0.5) for s in range(3)]
  report.write(str(out), study="mdpo", title="mDPO", rows=rows, keys=("method",),
               metrics=("accuracy",))
  doc = show_study("mdpo", str(tmp_path), run=False)
  assert doc["study"] == "mdpo" and len(doc["rows"]) == 3
  assert "committed full-size results" in capsys.readouterr().out
  assert show_study("variants", str(tmp_path), run=False) is None


def test_missing_requirements_names_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "reasoning_gym", None)     # import raises ImportError
  assert missing_requirements() == ("a real-model study needs the 'reasoning_gym' "
                                    "package: pip install -e '.[tasks]'")


def test_study_names_reads_all_or_a_list_and_rejects_unknown_names():
  assert study_names("all") == sorted(STUDIES) and len(STUDIES) == 5
  assert study_names("mdpo, ranking") == ["mdpo", "ranking"]
  with pytest.raises(ConfigError, match="unknown study 'nope'; registered: calibration"):
    study_names("mdpo,nope")
  with pytest.raises(ConfigError, match="no study named"):
    study_names(" , ")
