"""prefjax.data.hf_datasets: ``hf:PATH`` in TRL's three preference formats, from a
``save_to_disk`` folder, parquet and JSON Lines; bad input as one line; a DPO run on it."""
import json
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="hf: sources need the 'hf' extra (datasets)")

from prefjax.data import file_sources, hf_datasets, read_preferences  # noqa: E402
from prefjax.errors import DataError  # noqa: E402
from prefjax.extras import MissingExtraError  # noqa: E402


def _msg(role, content):
  return {"role": role, "content": content}


SYSTEM, Q1, Q2 = _msg("system", "Be brief."), _msg("user", "2+2?"), _msg("user", "Capital of France?")
ROWS = {
    "text": [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": "a"},
             {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "id": "b"}],
    "conversational": [
        {"prompt": [SYSTEM, Q1], "chosen": [_msg("assistant", "4")],
         "rejected": [_msg("assistant", "5")], "id": "a"},
        {"prompt": [SYSTEM, Q2], "chosen": [_msg("assistant", "Paris")],
         "rejected": [_msg("assistant", "Rome")], "id": "b"}],
    "implicit": [
        {"chosen": [SYSTEM, Q1, _msg("assistant", "4")],
         "rejected": [SYSTEM, Q1, _msg("assistant", "5")], "id": "a"},
        {"chosen": [SYSTEM, Q2, _msg("assistant", "Paris")],
         "rejected": [SYSTEM, Q2, _msg("assistant", "Rome")], "id": "b"}],
}
JSONL_PREFIX = {"text": "jsonl:", "conversational": "jsonl:", "implicit": "implicit:"}


def _write(rows, tmp_path, storage, name="prefs"):
  """``rows`` stored as ``storage``; returns the path to give after ``hf:``."""
  ds = datasets.Dataset.from_list(rows)
  tmp_path.mkdir(parents=True, exist_ok=True)
  if storage == "disk":
    path = tmp_path / name
    ds.save_to_disk(str(path))
  elif storage == "parquet":
    path = tmp_path / f"{name}.parquet"
    ds.to_parquet(str(path))
  else:
    path = tmp_path / f"{name}.jsonl"
    ds.to_json(str(path))
  return str(path)


def _jsonl(rows, path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


# ------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("storage", ["disk", "parquet", "json"])
@pytest.mark.parametrize("fmt", ["text", "conversational", "implicit"])
def test_every_format_and_storage_gives_the_examples_of_a_preference_file(tmp_path, fmt,
                                                                         storage):
  path = _write(ROWS[fmt], tmp_path / "hf", storage)
  res = hf_datasets.read_hf(path)
  assert res.format == {"text": "jsonl", "conversational": "jsonl"}.get(fmt, fmt)
  assert res.unit == "row" and res.skipped == [] and res.source == path
  # The same rows as a JSON Lines preference file: the same PreferenceExamples.
  ref = read_preferences(JSONL_PREFIX[fmt] + _jsonl(ROWS[fmt], tmp_path / "ref" / "prefs.jsonl"))
  assert res.examples == ref.examples
  assert [e.id for e in res.examples] == ["prefs:a", "prefs:b"]
  assert [e.responses for e in res.examples] == [("4", "5"), ("Paris", "Rome")]
  if fmt == "text":
    assert res.examples[0].prompt == "2+2?" and res.examples[0].chat is None
  else:
    assert res.examples[0].chat == [SYSTEM, Q1]
    assert res.examples[1].prompt == "Be brief.\n\nCapital of France?"


@pytest.mark.parametrize("fmt", ["conversational", "implicit"])
def test_load_examples_through_the_source_registry(tmp_path, fmt):
  assert file_sources.SOURCES["hf"] == ("pairs", hf_datasets.read_hf_pairs)
  spec = "hf:" + _write(ROWS[fmt], tmp_path, "parquet")
  r = file_sources.load_examples(spec, "pairwise", seed=0)
  assert r.native == "pairs" and r.skipped == {}
  assert r.examples[0] == {"id": "prefs:a", "prompt": [SYSTEM, Q1], "chosen": "4",
                           "rejected": "5", "subset": "prefs"}
  raw = file_sources.load_examples(spec, "pairwise", seed=0, chat=False).examples
  assert raw[0]["prompt"] == "Be brief.\n\n2+2?"
  sft = file_sources.load_examples(spec, "sft", seed=0).examples
  assert [e["response"] for e in sft] == ["4", "Paris"]


def test_alpha_subset_and_other_columns_as_in_jsonl_files(tmp_path):
  rows = [{"prompt": "p", "chosen": " c ", "rejected": "r", "alpha": 0.8, "subset": "s",
           "source": "web"}]
  ex = hf_datasets.read_hf(_write(rows, tmp_path, "disk")).examples[0]
  assert (ex.alpha, ex.subset, ex.meta, ex.id) == (0.8, "s", {"source": "web"}, "prefs:0")
  pair = file_sources.load_examples("hf:" + _write(rows, tmp_path, "json"), "pairwise",
                               seed=0).examples[0]
  assert pair["alpha"] == 0.8 and pair["chosen"] == "c"    # chat=True strips responses


def test_hh_transcripts_without_a_prompt_column(tmp_path):
  t = "\n\nHuman: hi\n\nAssistant:"
  res = hf_datasets.read_hf(_write([{"chosen": t + " hello", "rejected": t + " go"}], tmp_path,
                                   "parquet"))
  assert res.format == "hh" and res.examples[0].responses == (" hello", " go")


def test_a_split_of_a_saved_dataset_dict_and_an_eval_spec(tmp_path):
  train = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(6)]
  test = train[:2] + [{"prompt": "held", "chosen": "good", "rejected": "bad"}]
  datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                        "test": datasets.Dataset.from_list(test)}).save_to_disk(
                            str(tmp_path / "dd"))
  with pytest.raises(DataError, match=r"dd: a DatasetDict with splits train, test; name one, "
                                      r"e\.g\. hf:.*dd/train$"):
    file_sources.load_examples(f"hf:{tmp_path / 'dd'}", "pairwise", seed=0)
  exs = file_sources.load_examples(f"hf:{tmp_path / 'dd' / 'train'}", "pairwise", seed=0).examples
  tr, ev = file_sources.split_heldout(exs, eval_spec=f"hf:{tmp_path / 'dd' / 'test'}", seed=0)
  assert [e["prompt"] for e in ev] == ["q0", "q1", "held"]
  assert [e["prompt"] for e in tr] == ["q2", "q3", "q4", "q5"]   # no prompt on both sides


def test_implicit_jsonl_files_are_detected_too(tmp_path):
  res = read_preferences(_jsonl(ROWS["implicit"], tmp_path / "implicit.jsonl"))
  assert res.format == "implicit" and res.examples[0].chat == [SYSTEM, Q1]


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "p", "chosen": "c"}],
     r"no column 'rejected' \(columns: prompt, chosen\); TRL's preference formats have"),
    ([{"prompt": "p", "chosen": 1, "rejected": 2}],
     r"row 0: field 'chosen' is int, expected a string$"),
    ([{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": None,
                                                        "rejected": "r"}],
     r"row 1: field 'chosen' is null, expected a string$"),
    ([{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "q", "chosen": "c",
                                                        "rejected": " "}],
     r"row 1: empty 'rejected'$"),
    ([{"prompt": [Q1], "chosen": [_msg("assistant", "4")], "rejected": [Q1]}],
     r"row 0: rejected must end with an assistant message$"),
    ([{"chosen": [Q1, _msg("assistant", "4")], "rejected": [Q2, _msg("assistant", "4")]}],
     r"row 0: 'chosen' and 'rejected' share no prompt message \(implicit prompt\)$"),
    ([{"chosen": [Q1, _msg("assistant", "4"), Q2, _msg("assistant", "Paris")],
       "rejected": [Q1, _msg("assistant", "5")]}],
     r"row 0: 'chosen' must be the 1 shared prompt messages plus one assistant message, not "
     r"3 message\(s\) \(assistant, user, assistant\) after them$"),
    ([{"prompt": [_msg("bot", "hi")], "chosen": [_msg("assistant", "4")],
       "rejected": [_msg("assistant", "5")]}],
     r"row 0: prompt\[0\] is not a \{'role': system\|user\|assistant, 'content': str\} "
     r"message$"),
])
@pytest.mark.parametrize("storage", ["disk", "parquet"])
def test_bad_rows_are_one_line_naming_path_row_and_field(tmp_path, rows, message, storage):
  path = _write(rows, tmp_path, storage)
  with pytest.raises(DataError, match="^" + path.replace(".", r"\.") + ": " + message) as info:
    file_sources.load_examples("hf:" + path, "pairwise", seed=0)
  assert "\n" not in str(info.value)


def test_empty_missing_and_unreadable_inputs(tmp_path):
  empty = datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
  empty.save_to_disk(str(tmp_path / "empty"))
  empty.to_parquet(str(tmp_path / "empty.parquet"))
  (tmp_path / "empty.jsonl").write_text("\n")
  cases = {
      str(tmp_path / "empty"): "empty dataset (no rows)",
      str(tmp_path / "empty.parquet"): "empty dataset (no rows)",
      str(tmp_path / "empty.jsonl"): "empty dataset (no rows)",
      str(tmp_path / "nothing.parquet"): "no such file or folder",
      str(tmp_path / "nodir" / "*.parquet"): "no such file or folder",
  }
  (tmp_path / "plain").mkdir()
  cases[str(tmp_path / "plain")] = "a folder that Dataset.save_to_disk did not write"
  (tmp_path / "rows.csv").write_text("prompt,chosen,rejected\np,c,r\n")
  cases[str(tmp_path / "rows.csv")] = "not a saved dataset folder, nor a .parquet"
  (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
  cases[str(tmp_path / "broken.parquet")] = "datasets cannot read it as parquet ("
  for path, message in cases.items():
    with pytest.raises(DataError) as info:
      file_sources.load_examples("hf:" + path, "pairwise", seed=0)
    text = str(info.value)
    assert text.startswith(path + ": ") and message in text and "\n" not in text, text


def test_missing_datasets_package_names_the_extra(tmp_path, monkeypatch):
  for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(MissingExtraError, match=r"^reading a Hugging Face dataset \(hf:PATH\) "
                                              r"needs the 'datasets' package: pip install -e "
                                              r"'\.\[hf\]'$"):
    file_sources.load_examples(f"hf:{tmp_path / 'x.parquet'}", "pairwise", seed=0)


# ------------------------------------------------------------------------------ a DPO run
def test_dpo_trains_end_to_end_on_hf_data(tmp_path):
  """A byte-tokenizer preset: DPO on a conversational save_to_disk folder, held-out pairs
  from a parquet file, three steps."""
  from prefjax.train.config import base_config
  from prefjax.train.run import run
  words = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy"]
  rows = [{"prompt": [_msg("user", f"Say {w} twice.")], "chosen": [_msg("assistant", f"{w} {w}")],
           "rejected": [_msg("assistant", w)]} for w in words * 2]
  rows = [dict(r, id=str(i)) for i, r in enumerate(rows)]
  c = base_config()
  c.stages = ("dpo",)
  c.data.train = "hf:" + _write(rows[:12], tmp_path / "data", "disk", "train")
  c.data.eval = "hf:" + _write(rows[12:], tmp_path / "data", "parquet", "eval")
  c.data.max_len = 32
  c.model.overrides.update(dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                                mlp_dim=64, max_len=32))
  c.dpo.steps, c.dpo.batch_size, c.dpo.warmup_steps = 3, 4, 0
  c.progress, c.tensorboard, c.log_every, c.checkpoint.every = False, False, 1, 0
  c.ranking.enabled, c.export.enabled = False, False
  summary = run(c, str(tmp_path / "run"))
  metrics = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
  assert [m["step"] for m in metrics if m["stage"] == "dpo"] == [1, 2, 3]
  assert all(np.isfinite(m["loss"]) for m in metrics)
  report = summary["data/reports"][f"{c.data.train} (pairwise)"]
  assert report["examples"] == 12 and report["skipped"] == {}
