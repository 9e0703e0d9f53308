"""Tests for prefjax.data.preference_files on the real files in ../shared/data and on
hand-written temporary files."""
import csv
import gzip
import json
from fractions import Fraction
from pathlib import Path

import pytest

from prefjax.data import (
    PreferenceExample, PreferenceFileError, read_preferences, split_spec)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def data_dir():
  if not DATA.is_dir():
    pytest.skip(f"real preference data not found at {DATA} (it sits beside the checkout)")
  return DATA


# ---------------------------------------------------------------- HH-RLHF


def test_hh_rlhf_harmless_test(data_dir):
  path = data_dir / "hh-rlhf" / "harmless-base_test.jsonl.gz"
  result = read_preferences(path)
  assert result.format == "hh" and result.unit == "line"
  assert len(result.examples) == 2307
  assert [loc for loc, _ in result.skipped] == [1255, 1689, 1951, 1953, 2037]
  for _, reason in result.skipped:
    assert "do not share the prompt" in reason
  # Four chosen completions are a lone space: kept (they were judged) and noted.
  assert [loc for loc, _ in result.notes] == [87, 517, 926, 1104]

  raw = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
  kept_lines = [n for n in range(1, len(raw) + 1) if n not in {1255, 1689, 1951, 1953, 2037}]
  for example, lineno in zip(result.examples, kept_lines):
    row = raw[lineno - 1]
    assert example.prompt.endswith("\n\nAssistant:")
    assert example.prompt + example.responses[0] == row["chosen"]
    assert example.prompt + example.responses[1] == row["rejected"]
    assert example.alpha is None and example.id == f"harmless-base_test:{lineno}"
    assert example.chat[0]["role"] == "user" and example.chat[-1]["role"] == "user"
    assert all(m["role"] in ("user", "assistant") for m in example.chat)

  first = result.examples[0]
  assert first.chat[:3] == [
      {"role": "user", "content": "what are some pranks with a pen i can do?"},
      {"role": "assistant", "content": "Are you looking for practical joke ideas?"},
      {"role": "user", "content": "yep"}]
  assert "line 1255" in result.summary()


# ---------------------------------------------------------------- PandaLM


def test_pandalm_alpha_from_annotators(data_dir):
  path = data_dir / "pandalm" / "testset-v1.json"
  result = read_preferences(path)
  assert result.format == "pandalm" and result.unit == "index"
  assert len(result.examples) == 999 and result.skipped == []
  alphas = [Fraction(e.alpha).limit_denominator(12) for e in result.examples]
  assert set(alphas) == {Fraction(1, 2), Fraction(2, 3), Fraction(5, 6), Fraction(1)}
  assert {a: alphas.count(a) for a in set(alphas)} == {
      Fraction(1): 794, Fraction(5, 6): 31, Fraction(2, 3): 89, Fraction(1, 2): 85}

  # Independent transcription: 1 -> 1, 2 -> 0, tie 0 -> 1/2; preferred response first.
  raw = json.loads(path.read_text())
  for example, row in zip(result.examples, raw):
    credit = {1: Fraction(1), 2: Fraction(0), 0: Fraction(1, 2)}
    p1 = sum(credit[row[f"annotator{k}"]] for k in (1, 2, 3)) / 3
    r1, r2 = (str(row["response1"]), str(row["response2"]))
    assert Fraction(example.alpha).limit_denominator(12) == max(p1, 1 - p1)
    assert example.responses == ((r1, r2) if p1 >= Fraction(1, 2) else (r2, r1))
    assert example.id == f"testset-v1:{row['idx']}"
    assert example.chat == [{"role": "user", "content": example.prompt}]
  assert result.examples[466].prompt == "Truthfulness"  # blank instruction, noted
  assert (157, "response1 is JSON true, read as 'True'") in result.notes


# ---------------------------------------------------------------- LLMBar

_LLMBAR = {"LLMBar_Natural": 100, "LLMBar_Adversarial_GPTInst": 92,
           "LLMBar_Adversarial_GPTOut": 47, "LLMBar_Adversarial_Manual": 46,
           "LLMBar_Adversarial_Neighbor": 134, "Processed_FairEval": 66,
           "Processed_LLMEval_2": 200, "Processed_MT-Bench": 200}


def test_llmbar_counts_and_labels(data_dir):
  adversarial = 0
  for stem, count in _LLMBAR.items():
    path = data_dir / "llmbar" / f"{stem}.json"
    result = read_preferences(path)
    assert result.format == "llmbar" and result.skipped == []
    assert len(result.examples) == count, stem
    if "Adversarial" in stem:
      adversarial += count
    raw = json.loads(path.read_text())
    for example, row in zip(result.examples, raw):
      assert example.subset == stem and example.alpha is None
      preferred = row["output_1"] if row["label"] == 1 else row["output_2"]
      assert example.responses[0] == preferred and example.prompt == row["input"]
  assert adversarial == 319


# ---------------------------------------------------------------- AlpacaEval


def test_alpaca_eval_annotations_reproduce_the_leaderboard(data_dir):
  path = data_dir / "alpaca_eval" / "annotations" / "claude-2.1.json.gz"
  result = read_preferences(path)
  assert result.format == "alpaca_eval" and result.skipped == []
  assert len(result.examples) == 805
  assert all(0.5 <= e.alpha <= 1.0 for e in result.examples)
  assert {e.meta["generator_1"] for e in result.examples} == {"gpt4_1106_preview"}
  # P(model preferred) summed back from the reordered records gives the leaderboard's
  # win rate, so the reordering and alpha are consistent with the judge.
  p_model = [e.alpha if e.meta["generators"][0] == "claude-2.1" else 1 - e.alpha
             for e in result.examples]
  board = data_dir / "alpaca_eval" / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
  rows = {r[""]: r for r in csv.DictReader(board.open())}
  assert 100 * sum(p_model) / len(p_model) == pytest.approx(
      float(rows["claude-2.1"]["win_rate"]), abs=1e-6)


# ---------------------------------------------------------------- generic JSONL


def _write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def test_generic_jsonl_reports_bad_lines_and_keeps_good(tmp_path):
  path = _write_lines(tmp_path / "pairs.jsonl", [
      json.dumps({"prompt": "Q1", "chosen": "good", "rejected": "bad"}),       # 1 ok
      '{"prompt": "Q2", "chosen": "a", "rejected": ',                          # 2 bad JSON
      json.dumps({"prompt": "Q3", "chosen": "a"}),                             # 3 missing
      json.dumps({"prompt": "Q4", "chosen": "  ", "rejected": "b"}),           # 4 empty
      json.dumps({"prompt": "Q5", "chosen": "a", "rejected": "b", "alpha": 0.7,
                  "id": "x5", "source": "web"}),                               # 5 ok
      "",                                                                      # 6 blank
      json.dumps(["not", "an", "object"]),                                     # 7 a list
      json.dumps({"prompt": "Q8", "chosen": "a", "rejected": "b", "alpha": 3}),  # 8 range
      json.dumps({"prompt": "Q9", "chosen": "a", "rejected": 7}),              # 9 type
      json.dumps({"prompt": "Q10", "chosen": "a", "rejected": "b", "alpha": 0.2}),  # 10
  ])
  result = read_preferences(path)
  assert result.format == "jsonl" and result.unit == "line"
  assert [e.prompt for e in result.examples] == ["Q1", "Q5", "Q10"]
  skipped = dict(result.skipped)
  assert sorted(skipped) == [2, 3, 4, 6, 7, 8, 9]
  assert skipped[2].startswith("bad JSON")
  assert skipped[3] == "missing field 'rejected'"
  assert skipped[4] == "empty 'chosen'"
  assert skipped[6] == "blank line"
  assert "expected an object" in skipped[7]
  assert "alpha" in skipped[8]
  assert skipped[9] == "field 'rejected' is int, expected a string"
  q5 = result.examples[1]
  assert q5 == PreferenceExample(prompt="Q5", responses=("a", "b"), alpha=0.7,
                                 subset="pairs", id="pairs:x5", chat=None,
                                 meta={"source": "web"})
  assert result.notes == [(10, "alpha 0.2 < 0.5: 'chosen' is the less likely preferred (kept)")]


def test_prefix_overrides_detection_and_gzip_by_magic(tmp_path):
  transcript = "\n\nHuman: hi\n\nAssistant:"
  row = {"chosen": transcript + " hello", "rejected": transcript + " go away"}
  path = tmp_path / "dump.txt"
  path.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
  with pytest.raises(PreferenceFileError, match="unknown format"):
    read_preferences(path)  # .txt: no detection without a prefix
  result = read_preferences(f"hh:{path}")
  assert result.format == "hh" and len(result.examples) == 1
  assert result.examples[0].responses == (" hello", " go away")
  assert result.examples[0].chat == [{"role": "user", "content": "hi"}]
  assert split_spec(f"alpaca_eval:{path}") == ("alpaca_eval", path)
  assert split_spec(str(path)) == (None, path)
  # Forcing a format whose keys the rows lack reports every row, and does not crash.
  forced = read_preferences(f"llmbar:{path}")
  assert forced.examples == [] and forced.skipped == [(1, "missing field 'input'")]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"  \n\n", "empty file"),
    (b"[]", "empty JSON array"),
    (b"[1, 2", "not valid JSON"),
    (b'{"a": 1, "b": 2}\n', "unknown format: first row has keys [a, b]"),
    (b"not json at all\n", "unknown format: no row is a JSON object"),
])
def test_file_errors_are_one_line_and_name_the_file(tmp_path, content, message):
  path = tmp_path / "broken.json"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(PreferenceFileError) as info:
    read_preferences(path)
  text = str(info.value)
  assert "\n" not in text and str(path) in text and message in text
  assert info.value.path == str(path)


def test_unknown_prefix_is_treated_as_a_path(tmp_path):
  with pytest.raises(PreferenceFileError, match="known prefixes"):
    read_preferences(f"csv:{tmp_path / 'x.csv'}")
