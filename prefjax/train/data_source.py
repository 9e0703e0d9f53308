"""The data source of a run: ``config.data`` -> examples by kind -> row encoders.

  data.train = "testbed" | "testbed:TASK[,TASK]"   the synthetic world (default)
             | "tasks:NAME[,NAME]"  verifiable reasoning-gym tasks (prompts + exact scorers)
             | "prompts:FILE"       prompts to sample from (RL / online stages)
             | any spec of ``prefjax.data.file_sources``  (hh:PATH, pandalm:, llmbar:,
               alpaca_eval:, jsonl:, implicit:, sft:, groups:, alpaca_eval_groups:,
               unpaired:, hf: (Hugging Face datasets), a path)
  data.sft   = SFT spec for the sft stage ("" = derived from data.train: testbed
               demonstrations, or the chosen responses of a preference file)
  data.eval  = held-out spec ("" = a seeded held-out fraction of data.train, disjoint
               by prompt)
  data.max_len, data.truncate (prompt policy), data.completion (truncate | drop | error),
  data.n_train / data.n_eval (0 = all / the default size), data.eval_fraction

Examples are dicts of four kinds (sft, pairwise, multi, unpaired); see
``prefjax.data.file_sources``. The testbed's sizes come from ``config.testbed`` (n_sft, n_pairs,
n_eval_pairs).
"""
from __future__ import annotations

from prefjax.data import layout, file_sources, tasks
from prefjax.data import prompts as prompts_lib
from prefjax.data.byte_tokenizer import ByteTokenizer
from prefjax.errors import ConfigError
from prefjax.testbed import source as testbed_source
from prefjax.testbed.tokenizer import TestbedTokenizer

# The testbed outside a run's DataSource (reward-model data, the ranking evaluation, fresh
# models): nothing but this module and the evaluator (prefjax.eval.testbed_eval) imports it.
is_testbed = testbed_source.is_testbed
world_config = testbed_source.world_config
world_examples = testbed_source.world_examples
testbed_reward_pairs = testbed_source.reward_pairs
check_testbed_tasks = testbed_source.check_tasks
testbed_task_pairs = testbed_source.task_pairs
TESTBED_REWARD_DATA = ("world", "length_bias")   # config.reward.data drawn from the testbed


def default_tokenizer(data_spec: str):
  """The tokenizer of a preset model: testbed characters or UTF-8 bytes."""
  if is_testbed(data_spec):
    return TestbedTokenizer()
  return ByteTokenizer()


class DataSource:
  """Examples for each stage, read once and cached by (spec, kind, split)."""

  def __init__(self, c, tokenizer):
    self.c = c
    self.tokenizer = tokenizer
    self.train_spec = c.data.train or "testbed"
    self.testbed = testbed_source.is_testbed(self.train_spec)
    self._cache: dict = {}
    self.reports: dict = {}

  # ------------------------------------------------------------------ examples
  def examples(self, kind: str, split: str = "train", spec: str | None = None,
               n: int | None = None) -> list[dict]:
    """``kind`` examples of ``split`` ("train" or "eval"); ``n`` sizes a testbed draw."""
    c = self.c
    spec = spec or (c.data.sft if kind == "sft" else "") or self.train_spec
    key = (spec, kind, split, n)
    if key in self._cache:
      return self._cache[key]
    if testbed_source.is_testbed(spec):
      if n is None:
        n = {"sft": c.testbed.n_sft}.get(kind, c.testbed.n_pairs)
        if split != "train":
          n = c.testbed.n_eval_pairs
      out = testbed_source.examples(c, kind, split, n, spec)
    elif spec.startswith("tasks:") and spec == self.train_spec:
      out = self._task_examples(kind, split)
    else:
      out = self._file_examples(spec, kind, split)
    self._cache[key] = out
    return out

  def _task_examples(self, kind, split):
    """SFT demonstrations of ``tasks:`` data: each question with its reference answer in
    the requested format (tasks without a single reference answer are left out)."""
    if kind != "sft":
      raise ConfigError(f"config.data.train={self.train_spec!r} holds prompts with exact "
                        f"scorers, not {kind!r} examples: preference examples come from an "
                        "'online' stage, rewards from the verifier in an RL stage")
    ts = self.taskset
    return [{"id": p.id, "prompt": p.messages, "response": ts.format_answer(p.answer)}
            for p in ts.prompts(split) if p.answer]

  def _file_examples(self, spec, kind, split):
    c = self.c
    key = (spec, kind)
    if key not in self._cache:
      res = file_sources.load_examples(spec, kind, seed=c.seed, chat=self._chat,
                                  group_size=self.group_size() if kind == "multi" else None)
      self._check_chat(spec, res.examples)
      self.reports[f"{spec} ({kind})"] = {
          "examples": len(res.examples), "skipped": res.skipped,
          "first_skipped": [f"{loc}: {r}" for loc, r in res.skipped_rows[:5]]}
      eval_spec = c.data.eval or None
      n_eval = c.data.n_eval or None
      if kind == "sft" and spec != self.train_spec:
        split_ = (res.examples, [])
      else:
        split_ = file_sources.split_heldout(res.examples, eval_spec=eval_spec, n_eval=n_eval,
                                       fraction=c.data.eval_fraction, seed=c.seed,
                                       kind=kind, chat=self._chat)
      self._cache[key] = split_
    train, ev = self._cache[key]
    if split == "train":
      n = c.data.n_train
      return train[:n] if n else train
    return ev

  @property
  def _chat(self) -> bool:
    """Chat prompts as messages for tokenizers that may have a template (real ones)."""
    return hasattr(self.tokenizer, "chat_template")

  def _check_chat(self, spec, examples):
    if (self._chat and not getattr(self.tokenizer, "chat_template", None)
        and any(not isinstance(e.get("prompt"), str) for e in examples[:100])):
      raise ConfigError(f"{spec}: chat-format data (role/content turns) but the tokenizer of "
                        f"{getattr(self.tokenizer, 'source', 'the model')} has no chat template "
                        "(use a model with one, or plain-text prompt/response data)")

  def eval_pairs(self) -> list[dict]:
    return self.examples("pairwise", "eval")

  # ------------------------------------------------------------------ prompts
  @property
  def samples_prompts_only(self) -> bool:
    """True for sources that hold prompts but no responses (tasks:, prompts:)."""
    return self.train_spec.startswith("tasks:") or prompts_lib.is_prompts_spec(self.train_spec)

  @property
  def taskset(self):
    """The ``prefjax.data.tasks.TaskSet`` of a ``tasks:`` source (None otherwise)."""
    if not self.train_spec.startswith("tasks:"):
      return None
    if "taskset" not in self._cache:
      t = self.c.tasks
      self._cache["taskset"] = tasks.TaskSet(
          tasks.parse_spec(self.train_spec), seed=t.seed, n_train=t.n_train, n_eval=t.n_eval,
          options={k: dict(v) for k, v in dict(t.options).items()},
          answer_format=t.answer_format, shots=t.shots)
    return self._cache["taskset"]

  def prompts(self, split: str = "train", n: int | None = None) -> list:
    """``PromptItem``s to sample from: training or held-out (disjoint) prompts."""
    key = ("prompts", split, n)
    if key in self._cache:
      return self._cache[key]
    c, spec = self.c, self.train_spec
    if self.testbed:
      n = n or (c.rl.n_prompts if "rl" in c and split == "train" else c.eval.n_prompts)
      pairs = (testbed_source.train_prompts(c, n) if split == "train"
               else testbed_source.eval_prompts(c, n))
      out = [prompts_lib.PromptItem(id=f"testbed/{split}/{i}", prompt=p, task=t)
             for i, (t, p) in enumerate(pairs)]
    elif self.taskset is not None:
      out = [prompts_lib.PromptItem(id=p.id, prompt=p.messages, task=p.task, meta=p)
             for p in self.taskset.prompts(split)]
    else:
      if prompts_lib.is_prompts_spec(spec):
        items = prompts_lib.read_prompts_file(spec[len(prompts_lib.PROMPTS_PREFIX):])
      else:
        items = prompts_lib.prompts_of_pairs(self.examples("pairwise", "train") +
                                             self.examples("pairwise", "eval"))
      n_eval = c.data.n_eval or max(1, len(items) // 10)
      train, ev = prompts_lib.split_items(items, n_eval, c.seed)
      out = train if split == "train" else ev
    out = out[:n] if n else out
    self._cache[key] = out
    return out

  # ------------------------------------------------------------------ encoders
  def encoder(self, kind: str, tokenizer=None, max_len: int | None = None,
              batch_size: int | None = None, row_len: int | None = None):
    """The row encoder of ``kind`` in ``config.data.layout`` ("plain" | "prefix" | "packed",
    ``prefjax.data.layout``); reward models read pairwise rows. Without ``batch_size``,
    plain rows. ``row_len`` overrides ``config.data.row_len`` (the shared rows' length)."""
    c, tok = self.c, tokenizer or self.tokenizer
    max_len = max_len or c.data.max_len
    lay = c.data.layout
    kind = "pairwise" if kind == "reward" else kind
    if batch_size is None:
      lay = "plain"
    if kind not in ("sft", "pairwise", "unpaired", "multi"):
      raise ConfigError(f"no row encoder for batch kind {kind!r}")
    return layout.make_encoder(kind, tok, max_len, layout=lay, group_size=self.group_size(),
                               truncate=c.data.truncate,
                               completion=c.data.completion,
                               batch_size=batch_size, rows=c.data.get("rows") or None,
                               row_len=row_len or c.data.get("row_len") or None,
                               bucket=(int(c.data.bucket_per_octave)
                                       if c.data.bucket else 0))

  def group_size(self) -> int:
    if self.testbed:
      return self.c.testbed.group_size
    return int(self.c.data.group_size)
