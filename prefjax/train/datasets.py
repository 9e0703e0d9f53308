"""The data source of a run: ``config.data`` -> examples by kind -> row encoders.

  data.train = "testbed" | "testbed:TASK[,TASK]"   the synthetic world (default)
             | any spec of ``prefjax.data.sources``  (hh:PATH, pandalm:, llmbar:,
               alpaca_eval:, jsonl:, sft:, groups:, alpaca_eval_groups:, unpaired:, a path)
  data.sft   = SFT spec for the sft stage ("" = derived from data.train: testbed
               demonstrations, or the chosen responses of a preference file)
  data.eval  = held-out spec ("" = a seeded held-out fraction of data.train, disjoint
               by prompt)
  data.max_len, data.truncate (prompt policy), data.completion (truncate | drop | error),
  data.n_train / data.n_eval (0 = all / the default size), data.eval_fraction

Examples are dicts of four kinds (sft, pairwise, multi, unpaired); see
``prefjax.data.sources``. The testbed's sizes come from ``config.testbed`` (n_sft, n_pairs,
n_eval_pairs).
"""
from __future__ import annotations

from prefjax.data import layout
from prefjax.errors import ConfigError
from prefjax.testbed import source as testbed_source


class DataSource:
  """Examples for each stage, read once and cached by (spec, kind, split)."""

  def __init__(self, c, tokenizer):
    self.c = c
    self.tokenizer = tokenizer
    self.train_spec = c.data.get("train", "testbed") or "testbed"
    self.testbed = testbed_source.is_testbed(self.train_spec)
    self._cache: dict = {}
    self.reports: dict = {}

  # ------------------------------------------------------------------ examples
  def examples(self, kind: str, split: str = "train", spec: str | None = None) -> list[dict]:
    """``kind`` examples of ``split`` ("train" or "eval")."""
    c = self.c
    spec = spec or (c.data.get("sft", "") if kind == "sft" else "") or self.train_spec
    key = (spec, kind, split)
    if key in self._cache:
      return self._cache[key]
    if testbed_source.is_testbed(spec):
      n = {"sft": c.testbed.n_sft}.get(kind, c.testbed.n_pairs)
      if split != "train":
        n = c.testbed.n_eval_pairs
      out = testbed_source.examples(c, kind, split, n, spec)
    else:
      out = self._file_examples(spec, kind, split)
    self._cache[key] = out
    return out

  def _file_examples(self, spec, kind, split):
    from prefjax.data import sources
    c = self.c
    key = (spec, kind)
    if key not in self._cache:
      res = sources.load_examples(spec, kind, seed=c.seed, chat=self._chat,
                                  group_size=self.group_size() if kind == "multi" else None)
      self._check_chat(spec, res.examples)
      self.reports[f"{spec} ({kind})"] = {
          "examples": len(res.examples), "skipped": res.skipped,
          "first_skipped": [f"{loc}: {r}" for loc, r in res.skipped_rows[:5]]}
      eval_spec = c.data.get("eval", "") or None
      n_eval = c.data.get("n_eval", 0) or None
      if kind == "sft" and spec != self.train_spec:
        split_ = (res.examples, [])
      else:
        split_ = sources.split_heldout(res.examples, eval_spec=eval_spec, n_eval=n_eval,
                                       fraction=c.data.get("eval_fraction", 0.1), seed=c.seed,
                                       kind=kind, chat=self._chat)
      self._cache[key] = split_
    train, ev = self._cache[key]
    if split == "train":
      n = c.data.get("n_train", 0)
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

  # ------------------------------------------------------------------ encoders
  def encoder(self, kind: str, tokenizer=None, max_len: int | None = None,
              batch_size: int | None = None):
    """The row encoder of ``kind`` in ``config.data.layout`` ("plain" | "prefix" | "packed",
    ``prefjax.data.layout``); reward models read pairwise rows. Without ``batch_size``,
    plain rows."""
    c, tok = self.c, tokenizer or self.tokenizer
    max_len = max_len or c.data.max_len
    lay = c.data.get("layout", "plain")
    kind = "pairwise" if kind == "reward" else kind
    if batch_size is None:
      lay = "plain"
    if kind not in ("sft", "pairwise", "unpaired", "multi"):
      raise ConfigError(f"no row encoder for batch kind {kind!r}")
    return layout.make_encoder(kind, tok, max_len, layout=lay, group_size=self.group_size(),
                               truncate=c.data.truncate,
                               completion=c.data.get("completion", "truncate"),
                               batch_size=batch_size, rows=c.data.get("rows") or None,
                               row_len=c.data.get("row_len") or None,
                               bucket=(int(c.data.get("bucket_per_octave", 4))
                                       if c.data.get("bucket", True) else 0))

  def group_size(self) -> int:
    if self.testbed:
      return self.c.testbed.group_size
    return int(self.c.data.get("group_size", 4))
