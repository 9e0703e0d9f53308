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

import inspect

from prefjax.data import pipeline
from prefjax.errors import ConfigError
from prefjax.testbed import source as testbed_source


def _encoder_kw(fn, c):
  kw = {"truncate": c.data.truncate}
  if "completion" in inspect.signature(fn).parameters:
    kw["completion"] = c.data.get("completion", "truncate")
  return kw


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
    res = sources.load_examples(spec, kind, seed=c.seed)
    if kind == "multi":                 # at most group_size responses per side
      k = self.group_size()
      res.examples[:] = [dict(e, chosen=list(e["chosen"])[:k], rejected=list(e["rejected"])[:k])
                         for e in res.examples]
    self.reports[f"{spec} ({kind})"] = {"examples": len(res.examples), "skipped": res.skipped}
    eval_spec = c.data.get("eval", "") or None
    if eval_spec:
      ev = sources.load_examples(eval_spec, kind, seed=c.seed).examples
      train = res.examples
    else:
      train, ev = sources.split_heldout(res.examples, n_eval=c.data.get("n_eval", 0) or None,
                                        fraction=c.data.get("eval_fraction", 0.1),
                                        seed=c.seed)
    if split == "train":
      n = c.data.get("n_train", 0)
      return train[:n] if n else train
    n = c.data.get("n_eval", 0)
    return ev[:n] if n else ev

  def eval_pairs(self) -> list[dict]:
    return self.examples("pairwise", "eval")

  # ------------------------------------------------------------------ encoders
  def encoder(self, kind: str, tokenizer=None, max_len: int | None = None):
    """The row encoder of ``kind`` (``prefjax.data.pipeline``)."""
    c, tok = self.c, tokenizer or self.tokenizer
    max_len = max_len or c.data.max_len
    if kind == "sft":
      return pipeline.encode_sft(tok, max_len, **_encoder_kw(pipeline.encode_sft, c))
    if kind in ("pairwise", "reward"):
      return pipeline.encode_pair(tok, max_len, **_encoder_kw(pipeline.encode_pair, c))
    if kind == "unpaired":
      return pipeline.encode_unpaired(tok, max_len, **_encoder_kw(pipeline.encode_unpaired, c))
    if kind == "multi":
      return pipeline.encode_group(tok, max_len, self.group_size(),
                                   **_encoder_kw(pipeline.encode_group, c))
    raise ConfigError(f"no row encoder for batch kind {kind!r}")

  def group_size(self) -> int:
    if self.testbed:
      return self.c.testbed.group_size
    return int(self.c.data.get("group_size", 4))
