"""Verifiable tasks from reasoning-gym: specs, seeded prompts, strict and lenient scoring."""
import json

import pytest

pytest.importorskip("reasoning_gym", reason="needs the tasks extra: pip install -e '.[tasks]'")

from prefjax.data import tasks as T  # noqa: E402
from prefjax.errors import ConfigError  # noqa: E402

SMALL_SUM = {"chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}
# Tasks whose entries carry no valid answer at all (the task accepts many and the generator
# records none), so a reference response cannot be written: boxnet (multi-agent box moving
# plans) and rush_hour (move sequences); their scorers are still called, on model output.
NO_REFERENCE = {"boxnet", "rush_hour"}
# "composite" mixes other tasks and needs them named in its options.
COMPOSITE = {"datasets": [{"name": "chain_sum", "weight": 1}, {"name": "gcd", "weight": 1}]}


def test_spec_parsing():
  assert T.is_tasks_spec("tasks:chain_sum") and not T.is_tasks_spec("hh:x.jsonl")
  assert T.parse_spec("tasks:chain_sum, gcd") == ("chain_sum", "gcd")
  for bad in ("tasks:", "tasks: , ", "chain_sum", "tasks:gcd,gcd"):
    with pytest.raises(ConfigError):
      T.parse_spec(bad)
  names = T.task_names()
  assert len(names) > 90 and {"chain_sum", "gcd", "count_bits"} <= set(names)


def test_unknown_name_lists_close_names():
  with pytest.raises(ConfigError) as info:
    T.parse_spec("tasks:gcd,chain_sums")
  message = str(info.value)
  assert "'chain_sums'" in message and "chain_sum" in message and "\n" not in message
  with pytest.raises(ConfigError, match="task_names"):
    T.TaskSet(["zzzzqqq"])


@pytest.mark.parametrize("name", ["chain_sum", "basic_arithmetic", "gcd", "letter_counting",
                                  "spell_backward", "count_bits"])
@pytest.mark.parametrize("answer_format", ["tag", "line"])
def test_named_tasks_generate_and_score_their_reference(name, answer_format):
  tasks = T.TaskSet([name], n_train=6, n_eval=4, answer_format=answer_format)
  train, held_out = tasks.prompts("train"), tasks.prompts("eval")
  assert len(train) == 6 and len(held_out) == 4
  for p in train + held_out:
    assert p.task == name and p.id.startswith(f"{name}/") and isinstance(p.answer, str)
    assert p.messages == [{"role": "user",
                           "content": p.question + "\n\n" + tasks.instruction}]
    json.dumps(p.entry)
    score = tasks.score(p, "Let me think.\n" + tasks.format_answer(p.answer))
    assert score == T.Score(correct=1.0, formatted=True, lenient=1.0, extracted=p.answer)


def test_round_robin_ids_and_determinism():
  a = T.TaskSet("tasks:chain_sum,gcd", seed=3, n_train=5, n_eval=3)
  assert [p.task for p in a.prompts("train")] == ["chain_sum", "gcd"] * 2 + ["chain_sum"]
  assert [p.id for p in a.prompts("train")][:3] == ["chain_sum/train/0", "gcd/train/0",
                                                     "chain_sum/train/1"]
  assert [p.task for p in a.prompts("eval")] == ["chain_sum", "gcd", "chain_sum"]
  b = T.TaskSet(["chain_sum", "gcd"], seed=3, n_train=5, n_eval=3)
  c = T.TaskSet(["chain_sum", "gcd"], seed=4, n_train=5, n_eval=3)
  for split in T.SPLITS:
    assert a.prompts(split) == b.prompts(split)
    assert [p.question for p in a.prompts(split)] != [p.question for p in c.prompts(split)]


def test_eval_is_disjoint_from_train():
  # 1-digit a +/- b has 200 distinct questions: 150 train draws repeat and cover many.
  tasks = T.TaskSet(["chain_sum"], n_train=150, n_eval=30, options=SMALL_SUM)
  train = {p.question for p in tasks.prompts("train")}
  held_out = [p.question for p in tasks.prompts("eval")]
  assert len(held_out) == 30 == len(set(held_out)) and not train & set(held_out)
  with pytest.raises(ConfigError, match="eval questions that are not in train"):
    T.TaskSet(["chain_sum"], n_train=2000, n_eval=100, options=SMALL_SUM).prompts("eval")


def test_options_set_difficulty_and_bad_ones_are_one_config_error():
  def terms(options):
    prompts = T.TaskSet(["chain_sum"], n_train=40, n_eval=0, options=options).prompts("train")
    return {p.entry["metadata"]["num_terms"] for p in prompts}
  assert terms(SMALL_SUM) == {2}
  assert max(terms({"chain_sum": {"min_terms": 5, "max_terms": 6}})) == 6
  cases = [({"chain_sum": {"max_term": 2}}, "chain_sum has no field 'max_term'"),
           ({"chain_sum": {"min_terms": 4, "max_terms": 2}}, "max_terms must be >= min_terms"),
           ({"gcd": {"max_value": 3}}, "'gcd', which is not among the tasks")]
  for options, message in cases:
    with pytest.raises(ConfigError) as info:
      T.TaskSet(["chain_sum"], n_train=2, n_eval=2, options=options)
    assert message in str(info.value) and "\n" not in str(info.value)
  with pytest.raises(ConfigError, match="answer_format"):
    T.TaskSet(["chain_sum"], answer_format="json")
  with pytest.raises(ConfigError, match="split"):
    T.TaskSet(["chain_sum"], n_train=1, n_eval=1).prompts("test")


def test_strict_and_lenient_reads():
  assert T.read_tag("<answer> 3 </answer> then <answer>\n7\n</answer>.") == "7"
  assert T.read_tag("<answer>7") is None and T.read_tag("<answer> </answer>") is None
  assert T.read_line("Answer: 3\nso...\nAnswer: 12.\n") == "12"
  assert T.read_line("Answer: 12.", keep_period=True) == "12."
  assert T.read_line("Answer:\n1 2\n3 4\n") == "1 2\n3 4"
  assert T.read_line("answer: 12") is None and T.read_line("Answer: ") is None
  assert T.lenient_reads("So: <answer>1,234") == ["1,234", "So: 1,234", "1234"]


def _sum_prompt(answer_format):
  tasks = T.TaskSet(["chain_sum"], n_train=1, n_eval=0, options=SMALL_SUM,
                    answer_format=answer_format)
  return tasks, tasks.prompts("train")[0]


@pytest.mark.parametrize("answer_format", ["tag", "line"])
def test_scores_strict_against_lenient(answer_format):
  tasks, p = _sum_prompt(answer_format)
  right, wrong = p.answer, str(int(p.answer) + 1)
  if answer_format == "tag":
    good, bad = f"It is <answer>{right}</answer>", f"<answer>{wrong}</answer>"
    last_wins = f"<answer>{right}</answer> no, <answer>{wrong}</answer>"
  else:
    good, bad = f"Adding.\nAnswer: {right}.", f"Answer: {wrong}"
    last_wins = f"Answer: {right}\nAnswer: {wrong}"
  assert tasks.score(p, good) == T.Score(1.0, True, 1.0, right)
  assert tasks.score(p, bad) == T.Score(0.0, True, 0.0, wrong)
  assert tasks.score(p, last_wins).correct == 0.0
  assert tasks.score(p, f"The result is {right}.") == T.Score(0.0, False, 1.0, None)
  assert tasks.score(p, "") == T.Score(0.0, False, 0.0, None)
  many = tasks.scores([p, p], [good, bad])
  assert [s.correct for s in many] == [1.0, 0.0]
  with pytest.raises(ValueError):
    tasks.scores([p], [])


def test_a_raising_scorer_counts_as_zero(monkeypatch):
  tasks, p = _sum_prompt("tag")
  dataset = tasks._datasets["chain_sum", "train"]
  monkeypatch.setattr(dataset, "score_answer", lambda answer, entry: 1 / 0)
  assert tasks.score(p, f"<answer>{p.answer}</answer>") == T.Score(0.0, True, 0.0, p.answer)
  monkeypatch.setattr(dataset, "score_answer", lambda answer, entry: float("nan"))
  assert tasks.score(p, f"<answer>{p.answer}</answer>").correct == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("answer_format", ["tag", "line"])
def test_every_registered_task_scores_its_reference_answer(answer_format):
  failed = {}
  for name in T.task_names():
    options = {"composite": COMPOSITE} if name == "composite" else None
    tasks = T.TaskSet([name], n_train=2, n_eval=2, options=options,
                      answer_format=answer_format)
    for p in tasks.prompts("train") + tasks.prompts("eval"):
      score = tasks.score(p, "Working...\n" + tasks.format_answer(p.answer))
      assert 0.0 <= score.correct <= score.lenient <= 1.0
      if name not in NO_REFERENCE and score.correct != 1.0:
        failed[p.id] = (p.answer, score)
  assert not failed


def test_composite_without_its_tasks_is_a_config_error():
  with pytest.raises(ConfigError, match="composite"):
    T.TaskSet(["composite"], n_train=2, n_eval=2)


def test_missing_package_names_the_extra(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "reasoning_gym", None)
  with pytest.raises(ImportError) as info:
    T.parse_spec("tasks:chain_sum")
  assert str(info.value) == ("verifiable tasks (tasks:NAME) needs the 'reasoning_gym' "
                             "package: pip install -e '.[tasks]'")


@pytest.mark.parametrize("answer_format", ["tag", "line"])
def test_shots_put_solved_examples_first(answer_format):
  kwargs = dict(n_train=4, n_eval=4, options=SMALL_SUM, answer_format=answer_format)
  tasks = T.TaskSet(["chain_sum", "gcd"], shots=2, **kwargs)
  plain = T.TaskSet(["chain_sum", "gcd"], **kwargs)
  read = T.read_tag if answer_format == "tag" else T.read_line
  demos = {}
  for split in T.SPLITS:
    for p, q in zip(tasks.prompts(split), plain.prompts(split)):
      assert p.question == q.question and p.messages[-1] == q.messages[-1]
      assert [m["role"] for m in p.messages] == ["user", "assistant"] * 2 + ["user"]
      assert demos.setdefault(p.task, p.messages[:-1]) == p.messages[:-1]   # same per task
  for (question, reply) in zip(demos["chain_sum"][::2], demos["chain_sum"][1::2]):
    expression = question["content"].split(": ")[1].split(" =")[0]     # "3 - 6 =" -> "3 - 6"
    assert question["content"].endswith(tasks.instruction)
    assert int(read(reply["content"])) == eval(expression)
  demo_questions = {m["content"] for d in demos.values() for m in d[::2]}
  assert not demo_questions & {p.messages[-1]["content"] for p in tasks.prompts("eval")}
  with pytest.raises(ConfigError, match="no reference answer"):
    T.TaskSet(["rush_hour"], n_train=1, n_eval=1, shots=1)
