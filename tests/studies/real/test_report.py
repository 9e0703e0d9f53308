"""Study results: mean +- SE, 2-SE verdicts, paired differences and the files written."""
import csv
import json

import numpy as np
import pytest

from prefjax.studies.real import report


def test_mean_se_is_the_standard_error_of_the_mean():
  m, se = report.mean_se([1.0, 2.0, 4.0])
  assert m == pytest.approx(7 / 3)
  assert se == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1) / np.sqrt(3))
  assert np.isnan(report.mean_se([3.0])[1])


@pytest.mark.parametrize("m,se,sign,want", [
    (0.3, 0.1, 1, "confirmed"), (0.3, 0.2, 1, "not confirmed"), (-0.3, 0.1, 1, "reversed"),
    (-0.3, 0.1, -1, "confirmed"), (0.3, float("nan"), 1, "not confirmed")])
def test_verdict_counts_differences_inside_two_standard_errors_as_none(m, se, sign, want):
  assert report.verdict(m, se, claim_sign=sign) == want


def test_paired_difference_pairs_by_seed():
  rows = [dict(method=m, seed=s, acc=v) for m, s, v in
          [("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.4), ("b", 1, 0.5), ("b", 2, 0.9)]]
  m, se, n = report.paired_difference(rows, "acc", {"method": "a"}, {"method": "b"})
  assert n == 2 and m == pytest.approx(0.15)
  assert se == pytest.approx(np.std([0.1, 0.2], ddof=1) / np.sqrt(2))


def test_write_produces_json_csv_markdown_and_plot(tmp_path):
  rows = [dict(method=m, noise=p, seed=s, accuracy=0.1 * s + p) for m in ("dpo", "mdpo")
          for p in (0.0, 0.4) for s in range(3)]
  claims = [report.claim_line("x", rows, "accuracy", {"method": "mdpo"}, {"method": "dpo"})]
  doc = report.write(str(tmp_path), study="t", title="T", rows=rows, keys=("method", "noise"),
                     metrics=("accuracy",), claims=claims,
                     plot=lambda t, p: report.line_plot(t, p, x="noise", series="method",
                                                        metric="accuracy", ylabel="acc"))
  assert len(doc["summary"]) == 4 and doc["summary"][0]["n"] == 3
  assert json.load(open(tmp_path / "results.json"))["rows"] == rows
  assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 12
  md = (tmp_path / "results.md").read_text()
  assert "| dpo | 0.000 | 3 | 0.100 +- 0.058 |" in md and "not confirmed" in md
  assert (tmp_path / "results.png").stat().st_size > 0


def test_claim_value_compares_one_arm_against_a_constant():
  rows = [dict(arm="a", seed=s, r=v) for s, v in enumerate((0.5, 0.52, 0.48))] + [
      dict(arm="b", seed=0, r=0.9)]
  c = report.claim_value("below 0.6", rows, "r", {"arm": "a"}, against=0.6, claim_sign=-1)
  assert c["seeds"] == 3 and c["difference"] == pytest.approx(-0.1)
  assert c["verdict"] == "confirmed"


def test_an_arm_below_its_start_by_two_standard_errors_is_flagged(tmp_path):
  rows = [dict(method="a", seed=s, gain=g) for s, g in enumerate((-0.2, -0.21, -0.19))] + [
      dict(method="b", seed=s, gain=g) for s, g in enumerate((-0.1, 0.1, 0.0))]
  doc = report.write(str(tmp_path), study="t", title="T", rows=rows, keys=("method",),
                     metrics=("gain",))
  assert len(doc["notes"]) == 1 and "method=a" in doc["notes"][0]
  assert "FAILED TO TRAIN" in (tmp_path / "results.md").read_text()


def test_row_log_writes_each_row_as_it_arrives(tmp_path, capsys):
  from prefjax.studies.real.frame import RowLog
  rows = RowLog(str(tmp_path / "run" / "rows.jsonl"))
  rows.append(dict(method="dpo", seed=0, accuracy=0.25, examples=3))
  assert [json.loads(x) for x in open(tmp_path / "run" / "rows.jsonl")] == [rows[0]]
  rows += [dict(method="mdpo", seed=0, accuracy=0.5), dict(method="mdpo", seed=1, accuracy=0.75)]
  lines = open(tmp_path / "run" / "rows.jsonl").read().splitlines()
  assert [json.loads(x)["accuracy"] for x in lines] == [0.25, 0.5, 0.75] and len(rows) == 3
  out = capsys.readouterr().out
  assert "[1] method=dpo seed=0: accuracy=0.250" in out and "[3] method=mdpo seed=1" in out


def test_show_prints_a_written_study_and_says_when_there_is_none(tmp_path, capsys):
  rows = [dict(method="dpo", seed=s, accuracy=0.1 * s) for s in range(3)]
  doc = report.write(str(tmp_path / "s"), study="x", title="A study", rows=rows,
                     keys=("method",), metrics=("accuracy",))
  assert report.show(str(tmp_path / "s")) == json.loads(json.dumps(doc))
  assert "# A study" in capsys.readouterr().out
  assert report.show(str(tmp_path / "none")) is None
  assert "no study results under" in capsys.readouterr().out
