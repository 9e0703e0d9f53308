"""Prompt sources for sampling stages: prompts:FILE, the prompts of preference files, splits."""
import json
import os

import pytest

from prefjax.data import prompts as P
from prefjax.errors import DataError
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.config import base_config
from prefjax.train.data_source import DataSource
from tests.conftest import SHARED_DATA


def _write(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) and r.startswith("{") else json.dumps(r)) + "\n")
  return str(path)


def test_prompts_file_reads_text_prompt_objects_and_messages(tmp_path):
  path = _write(tmp_path / "p.jsonl", [
      "just text", {"prompt": "a prompt"},
      {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
      {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}])
  items = P.read_prompts_file(path)
  assert [x.prompt for x in items[:2]] == ["just text", "a prompt"]
  assert items[2].prompt == [{"role": "user", "content": "hi"}]     # the given answer is dropped
  assert items[3].text == "q" and items[0].id == f"{path}:1"


@pytest.mark.parametrize("line,match", [
    ('{"response": "x"}', r"p.jsonl:2: expected a JSON string or an object with 'prompt'"),
    ('{"messages": [{"role": "user"}]}', r"p.jsonl:2: field 'messages' needs role/content"),
    ("{not json", r"p.jsonl:2: bad JSON"),
])
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, line, match):
  path = tmp_path / "p.jsonl"
  path.write_text('"ok"\n' + line + "\n")
  with pytest.raises(DataError, match=match):
    P.read_prompts_file(str(path))


def test_data_source_splits_prompts_disjointly(tmp_path):
  path = _write(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(30)])
  c = base_config()
  c.data.train, c.data.n_eval = "prompts:" + path, 5
  data = DataSource(c, TestbedTokenizer())
  train, ev = data.prompts("train"), data.prompts("eval")
  assert len(ev) == 5 and len(train) == 25
  assert not {x.prompt for x in train} & {x.prompt for x in ev}
  assert data.samples_prompts_only and data.taskset is None
  assert data.prompts("eval", 3) == ev[:3]


def test_prompts_of_preference_pairs_are_distinct():
  exs = [{"id": 1, "prompt": "a", "chosen": "x", "rejected": "y"},
         {"id": 2, "prompt": "a", "chosen": "z", "rejected": "w"},
         {"id": 3, "prompt": [{"role": "user", "content": "b"}], "chosen": "x", "rejected": "y"}]
  items = P.prompts_of_pairs(exs)
  assert [x.text for x in items] == ["a", "b"]


def test_hh_prompts_through_the_existing_reader():
  hh = SHARED_DATA / "hh-rlhf" / "harmless-base_test.jsonl.gz"
  if not os.path.exists(hh):
    pytest.skip("../shared/data is absent")
  c = base_config()
  c.data.train, c.data.n_eval = f"hh:{hh}", 20
  data = DataSource(c, TestbedTokenizer())
  ev = data.prompts("eval")
  assert len(ev) >= 20 and all(isinstance(x.text, str) and x.text for x in ev)
