"""Verifiable tasks: reasoning-gym's procedural generators as prompts with a checkable answer.

    tasks = TaskSet(parse_spec("tasks:chain_sum,gcd"), seed=0, n_train=1000, n_eval=200,
                    options={"chain_sum": {"max_terms": 2, "max_digits": 1}})
    prompts = tasks.prompts("train")          # chain_sum, gcd, chain_sum, gcd, ...
    score = tasks.score(prompts[0], "3 + 4 = 7. <answer>7</answer>")
    score.correct, score.formatted, score.lenient   # 1.0, True, 1.0

A config names tasks as ``data.train = "tasks:chain_sum,basic_arithmetic"``; the names are
the datasets that `reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ registers
(``task_names()``), installed by the ``tasks`` extra (``pip install -e '.[tasks]'``).

Every question gets an instruction that asks for the answer in a fixed format
(``ANSWER_FORMATS``): ``"tag"`` (``<answer>X</answer>``) or ``"line"`` (a last line
``Answer: X``; a trailing period is optional). A response is scored by the task's own ``score_answer`` (a float in [0, 1];
exact match for most tasks, a checker for tasks with many valid answers) on the answer read
*strictly* in that format: a response without it scores 0, whatever it says. The ``lenient``
score, the best over looser reads (an unclosed tag, the last line, the last number), shows
how much of a model's failure is format rather than content; it is reported beside the
strict score, never used instead of it. Small instruction-tuned models tend to ignore a
format instruction alone; ``shots`` puts solved examples of the task first, as earlier chat
turns, and they then answer in the format.

Train and eval prompts come from different seed streams of the same generators, and no eval
question text also appears in train.

Two tasks record no valid answer at all, so ``TaskPrompt.answer`` is ``""`` there (their
scorers still check a model's response): ``boxnet`` and ``rush_hour``. ``composite`` mixes
other tasks and needs them named in its options (``{"composite": {"datasets": [{"name":
"gcd", "weight": 1}]}}``); listing the tasks in the spec does the same.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
from typing import Any, Sequence

from prefjax.errors import ConfigError
from prefjax.extras import require

TASKS_PREFIX = "tasks:"
SPLITS = ("train", "eval")
ANSWER_FORMATS = {
    "tag": "Put only the final answer between <answer> and </answer>.",
    "line": "End your reply with a line 'Answer: X' where X is only the final answer.",
}
# Tasks that accept many answers have no single reference (``entry["answer"]`` is None);
# some keep one valid answer in their metadata under one of these keys.
_EXAMPLE_ANSWER_KEYS = ("possible_answer", "example_answer", "example_correct_answer")
# At most this many eval candidates per wanted eval prompt before giving up (small tasks can
# run out of questions that are not already in train).
_EVAL_TRIES = 4


def _reasoning_gym():
  return require("reasoning_gym", "tasks", "verifiable tasks (tasks:NAME)")


def task_names() -> tuple[str, ...]:
  """Every dataset name reasoning-gym registers, sorted."""
  return tuple(sorted(_reasoning_gym().factory.DATASETS))


def is_tasks_spec(spec: str) -> bool:
  """Whether a data spec names verifiable tasks (``"tasks:NAME[,NAME...]"``)."""
  return isinstance(spec, str) and spec.startswith(TASKS_PREFIX)


def parse_spec(spec: str) -> tuple[str, ...]:
  """``"tasks:a,b"`` -> ``("a", "b")``; an unknown name raises ConfigError with close names."""
  if not is_tasks_spec(spec):
    raise ConfigError(f"{spec!r} is not a tasks spec: write '{TASKS_PREFIX}NAME[,NAME...]'")
  names = tuple(n.strip() for n in spec[len(TASKS_PREFIX):].split(",") if n.strip())
  if not names:
    raise ConfigError(f"{spec!r} names no task: write '{TASKS_PREFIX}NAME[,NAME...]'")
  known = task_names()
  for name in names:
    if name not in known:
      close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
      hint = (f"close names: {', '.join(close)}" if close else
              f"{len(known)} tasks are registered, see prefjax.data.tasks.task_names()")
      raise ConfigError(f"unknown task {name!r} in {spec!r}; {hint}")
  if len(set(names)) != len(names):
    raise ConfigError(f"{spec!r} names a task twice")
  return names


@dataclasses.dataclass(frozen=True)
class TaskPrompt:
  """One generated question.

  Attributes:
    id: ``"<task>/<split>/<index>"``, stable for a given seed, size and options.
    task: the reasoning-gym dataset name.
    question: the generator's question text.
    answer: the reference answer; for tasks with many valid answers, one of them when the
      generator records one, else ``""``.
    messages: ``[{"role": "user", "content": question + "\\n\\n" + instruction}]``, after
      ``2 * shots`` user/assistant turns of solved examples; ready for a chat template.
    entry: the raw reasoning-gym entry (``question``, ``answer``, ``metadata``) that the
      task's ``score_answer`` reads.
  """
  id: str
  task: str
  question: str
  answer: str
  messages: list
  entry: dict


@dataclasses.dataclass(frozen=True)
class Score:
  """How one response did.

  Attributes:
    correct: the task's ``score_answer`` on the strictly read answer, in [0, 1]; 0 without it.
    formatted: the response contains a non-empty answer in the requested format.
    lenient: the best ``score_answer`` over looser reads (never below ``correct``).
    extracted: the strictly read answer, or None.
  """
  correct: float
  formatted: bool
  lenient: float
  extracted: str | None


def read_tag(response: str) -> str | None:
  """The stripped text of the last ``<answer>...</answer>`` span, or None."""
  spans = re.findall(r"<answer>(.*?)</answer>", response, flags=re.DOTALL)
  return spans[-1].strip() if spans and spans[-1].strip() else None


def read_line(response: str, *, keep_period: bool = False) -> str | None:
  """The text after the last ``Answer:`` on its line, stripped, one trailing period removed.

  ``Answer:`` alone on its line takes the rest of the response (a grid or a list of lines).
  ``keep_period`` keeps the period (answers that are sentences end with one).
  """
  at = response.rfind("Answer:")
  if at < 0:
    return None
  rest = response[at + len("Answer:"):]
  line = rest.split("\n", 1)[0].strip() or rest.strip()
  if line.endswith(".") and not keep_period:
    line = line[:-1].rstrip()
  return line or None


_READERS = {"tag": read_tag, "line": read_line}


def lenient_reads(response: str) -> list[str]:
  """Looser candidate answers: both formats, an unclosed tag, the last line, the last number."""
  text = response.strip()
  reads = [read_tag(text), read_line(text)]
  if "<answer>" in text:
    reads.append(text[text.rfind("<answer>") + len("<answer>"):].replace("</answer>", ""))
  lines = [line for line in text.splitlines() if line.strip()]
  if lines:
    last = re.sub(r"</?answer>|\*\*", "", lines[-1]).strip()
    last = re.sub(r"^(final answer|answer)\s*[:=]\s*", "", last, flags=re.IGNORECASE)
    reads.append(last[:-1] if last.endswith(".") else last)
  numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?", text)
  if numbers:
    reads.append(numbers[-1].replace(",", ""))
  return list(dict.fromkeys(r.strip() for r in reads if r and r.strip()))


def _stream_seed(seed: int, split: str, task: str) -> int:
  """A 32-bit seed per (seed, split, task): train and eval streams do not overlap in practice
  (generators seed item ``i`` with ``seed + i``, so nearby seeds would share items)."""
  digest = hashlib.sha256(f"{seed}/{split}/{task}".encode()).digest()
  return int.from_bytes(digest[:4], "little")


def _reference(entry: dict) -> str:
  if entry.get("answer") is not None:
    return str(entry["answer"])
  metadata = entry.get("metadata") or {}
  for key in _EXAMPLE_ANSWER_KEYS:
    if metadata.get(key) is not None:
      value = metadata[key]
      if isinstance(value, dict):   # a JSON map, as the question asks for
        value = "{" + ", ".join(f'"{k}": {v}' for k, v in value.items()) + "}"
      return str(value)
  return ""


class TaskSet:
  """Seeded train and eval prompts from reasoning-gym tasks, and the scorer of responses.

  Args:
    names: task names (see ``task_names()``), or a ``"tasks:a,b"`` spec.
    seed: seeds every task's train and eval streams.
    n_train, n_eval: prompts per split in total, shared round-robin between the tasks
      (``a, b, a, b, ...``; the first tasks get one more when it does not divide).
    options: ``{task: {generator field: value}}``, e.g. ``{"chain_sum": {"max_terms": 2}}``;
      the fields are those of the task's reasoning-gym config class.
    answer_format: a key of ``ANSWER_FORMATS``.
    shots: solved examples of the same task put before every question as earlier chat turns
      (the question with its instruction, then the reference answer in the format). Small
      models follow the format from examples far more often than from the instruction
      alone. They come from their own seed stream and are never eval questions.
  """

  def __init__(self, names: Sequence[str] | str, *, seed: int = 0, n_train: int = 1000,
               n_eval: int = 200, options: dict | None = None, answer_format: str = "tag",
               shots: int = 0):
    if isinstance(names, str):
      names = parse_spec(names if is_tasks_spec(names) else TASKS_PREFIX + names)
    self.names = parse_spec(TASKS_PREFIX + ",".join(names))
    if answer_format not in ANSWER_FORMATS:
      raise ConfigError(f"answer_format {answer_format!r} is not one of "
                        f"{', '.join(ANSWER_FORMATS)}")
    options = dict(options or {})
    for task in options:
      if task not in self.names:
        raise ConfigError(f"tasks options name {task!r}, which is not among the tasks "
                          f"{', '.join(self.names)}")
    if min(n_train, n_eval, shots) < 0:
      raise ConfigError(f"n_train, n_eval and shots must be >= 0, got {n_train}, {n_eval} "
                        f"and {shots}")
    self.seed = seed
    self.answer_format = answer_format
    self.instruction = ANSWER_FORMATS[answer_format]
    self.options = options
    self._counts = {"train": _share(n_train, len(self.names)),
                    "eval": _share(n_eval, len(self.names))}
    sizes = {"train": self._counts["train"],
             "eval": [_EVAL_TRIES * n + 16 for n in self._counts["eval"]]}
    self._datasets = {(task, split): self._create(task, split, max(1, sizes[split][i]))
                      for split in SPLITS for i, task in enumerate(self.names)}
    self._prompts: dict[str, list[TaskPrompt]] = {}
    self._demos: dict[str, list[TaskPrompt]] = {}   # solved examples per task (``shots``)
    for task in self.names if shots else ():
      self._datasets[task, "shots"] = self._create(task, "shots", shots)
      self._demos[task] = [self._prompt(task, "shots", i) for i in range(shots)]
      if any(not p.answer for p in self._demos[task]):
        raise ConfigError(f"tasks: {task} records no reference answer, so it cannot give "
                          f"solved examples: use shots=0")

  def _create(self, task: str, split: str, size: int):
    rg = _reasoning_gym()
    kwargs = dict(self.options.get(task) or {})
    config_cls = rg.factory.DATASETS[task][1]
    fields = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]
    for key in kwargs:
      if key not in fields:
        raise ConfigError(f"tasks options: {task} has no field {key!r}; its fields: "
                          f"{', '.join(fields)}")
    try:
      if task == "composite" and kwargs.get("datasets"):   # specs as plain dicts in a config
        spec_cls = rg.composite.DatasetSpec
        kwargs["datasets"] = [spec_cls(**{"config": {}, **d}) if isinstance(d, dict) else d
                              for d in kwargs["datasets"]]
      return rg.create_dataset(task, seed=_stream_seed(self.seed, split, task), size=size,
                               **kwargs)
    except Exception as e:   # the generators validate with assert, ValueError, TypeError
      hint = ("; name its parts: {'composite': {'datasets': [{'name': 'gcd', 'weight': 1}]}}"
              " or list them: tasks:a,b" if task == "composite" else "")
      raise ConfigError(f"tasks options: {task} {self.options.get(task) or {}} rejected: "
                        f"{type(e).__name__}: {_one_line(e)}{hint}") from None

  def _prompt(self, task: str, split: str, index: int) -> TaskPrompt:
    try:
      entry = self._datasets[task, split][index]
    except Exception as e:
      raise ConfigError(f"tasks: {task} could not generate {split} item {index}: "
                        f"{type(e).__name__}: {_one_line(e)}") from None
    question = str(entry["question"])
    turns = []
    for demo in self._demos.get(task, ()):
      turns += [demo.messages[-1],
                {"role": "assistant", "content": self.format_answer(demo.answer)}]
    return TaskPrompt(
        id=f"{task}/{split}/{index}", task=task, question=question, answer=_reference(entry),
        messages=turns + [{"role": "user", "content": question + "\n\n" + self.instruction}],
        entry=entry)

  def prompts(self, split: str) -> list[TaskPrompt]:
    """The split's prompts, tasks interleaved round-robin; generated once, then cached."""
    if split not in SPLITS:
      raise ConfigError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if split not in self._prompts:
      per_task = [self._generate(task, split, n)
                  for task, n in zip(self.names, self._counts[split])]
      self._prompts[split] = [p for row in _zip_longest(per_task) for p in row]
    return self._prompts[split]

  def _generate(self, task: str, split: str, n: int) -> list[TaskPrompt]:
    """Train: the first ``n`` items; eval: the first ``n`` distinct, unseen questions."""
    if split == "train" or n == 0:
      return [self._prompt(task, split, i) for i in range(n)]
    seen = {p.question for p in self.prompts("train") + self._demos.get(task, [])}
    out = []
    size = len(self._datasets[task, split])
    for i in range(size):
      if len(out) == n:
        break
      prompt = self._prompt(task, split, i)
      if prompt.question not in seen:
        seen.add(prompt.question)
        out.append(prompt)
    if len(out) < n:
      raise ConfigError(
          f"tasks: {task} gave only {len(out)} of {n} eval questions that are not in train "
          f"(from {size} tries); its options allow few distinct questions: lower "
          f"n_train/n_eval or widen the options")
    return out

  def score(self, prompt: TaskPrompt, response: str) -> Score:
    """Scores one response to ``prompt`` with the task's own ``score_answer``."""
    split = prompt.id.split("/")[1] if prompt.id.count("/") == 2 else "train"
    dataset = self._datasets.get((prompt.task, split),
                                 self._datasets.get((prompt.task, "train")))
    if dataset is None:
      raise ConfigError(f"prompt {prompt.id!r} is from task {prompt.task!r}, not one of "
                        f"{', '.join(self.names)}")
    cache: dict[str, float] = {}

    def check(answer: str) -> float:
      if answer not in cache:
        cache[answer] = _safe_score(dataset, answer, prompt.entry)
      return cache[answer]

    extracted = _READERS[self.answer_format](response)
    correct = check(extracted) if extracted is not None else 0.0
    if extracted is not None and self.answer_format == "line":   # "Answer: 42." or a sentence
      correct = max(correct, check(read_line(response, keep_period=True)))
    lenient = max([correct] + [check(r) for r in lenient_reads(response)])
    return Score(correct=correct, formatted=extracted is not None, lenient=lenient,
                 extracted=extracted)

  def scores(self, prompts: Sequence[TaskPrompt], responses: Sequence[str]) -> list[Score]:
    """``score`` over paired lists."""
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [self.score(p, r) for p, r in zip(prompts, responses)]

  def format_answer(self, answer: str) -> str:
    """``answer`` written as this set's answer format asks (a perfect response)."""
    if self.answer_format == "tag":
      return f"<answer>{answer}</answer>"
    return f"Answer:\n{answer}" if "\n" in answer else f"Answer: {answer}"


def _safe_score(dataset, answer: str, entry: dict) -> float:
  """``score_answer`` as a float in [0, 1]; a scorer that raises on odd input gives 0."""
  try:
    value = float(dataset.score_answer(answer, entry))
  except Exception:   # scorers parse free text (JSON, sympy, grids) and may raise on junk
    return 0.0
  return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def _share(n: int, k: int) -> list[int]:
  return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _zip_longest(rows: list[list[Any]]) -> list[list[Any]]:
  longest = max((len(r) for r in rows), default=0)
  return [[r[j] for r in rows if j < len(r)] for j in range(longest)]


def _one_line(e: Exception) -> str:
  return " ".join(str(e).split()) or "(no message)"
