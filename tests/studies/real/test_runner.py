"""The runner's helpers that need no model: what is missing, which studies a --study names,
and a notebook's results view."""
import sys
from types import SimpleNamespace

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


def test_run_studies_loads_the_model_once_per_size_and_writes_each_under_its_name(
    tmp_path, monkeypatch):
  from prefjax.studies.real import runner
  from prefjax.studies.real.common import QUICK_SIZES, Sizes
  from prefjax.studies.real.frame import StudyDef
  other = Sizes(n_train=8)
  loads, seen = [], []

  def fake_env(sizes, out):
    loads.append(sizes)
    return SimpleNamespace(sizes=sizes)

  def study(name, sizes):
    def run(env, settings):
      seen.append((name, id(env), settings.samples_dir))
      return [dict(method="m", seed=0, accuracy=0.5)]
    report_kw = lambda rows, settings: dict(title=name, keys=("method",), metrics=("accuracy",))
    return StudyDef(name, "0000.00000", run, report_kw, sizes, sizes, {}, {})

  monkeypatch.setattr(runner, "load_env", fake_env)
  for name, sizes in (("_a", QUICK_SIZES), ("_b", QUICK_SIZES), ("_c", other)):
    monkeypatch.setitem(STUDIES, name, study(name, sizes))
  docs = runner.run_studies(["_a", "_b", "_c"], str(tmp_path), quick=True)
  assert loads == [QUICK_SIZES, other]             # _a and _b share one env
  assert seen[0][1] == seen[1][1] != seen[2][1]
  assert {s for _, _, s in seen} == {str(tmp_path / "samples")}
  assert sorted(docs) == ["_a", "_b", "_c"]
  for name in docs:
    assert (tmp_path / name / "results.json").exists()
