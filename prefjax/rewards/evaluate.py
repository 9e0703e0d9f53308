"""RewardBench-style evaluation of a scorer on preference files.

accuracy(subset) = mean over its pairs of 1[r(x, y_w) > r(x, y_l)]  (a tie counts as wrong);
a section's score is the example-weighted mean over its subsets' pairs; the overall score is
the unweighted mean of the section scores (as RewardBench averages its sections).

Each scored response becomes one row of ``scores.jsonl`` in the format
``prefjax.rewards.scores_io.read_scores`` (and scripts/calibrate_rewards.py) reads:
``id``, ``pair_id``, ``chosen`` (1 / 0), ``reward``, feature columns ``chars`` and ``tokens``
(completion tokens incl. EOS, before any cut to max_len), ``subset``, ``section``,
``generator`` (AlpacaEval), ``truncated``.

Reference: Lambert et al., "RewardBench: Evaluating Reward Models for Language Modeling",
arXiv 2403.13787.
"""
from __future__ import annotations

import collections
import re

import numpy as np

SECTIONS = (  # (pattern on the subset name, section)
    (r"^LLMBar_", "chat_hard"), (r"^Processed_", "human_judged"),
    (r"harmless", "safety"), (r"helpful", "chat"), (r"^alpaca_eval|^gpt|^claude|-7b", "alpaca_eval"),
)


def section_of(subset: str, fmt: str | None = None) -> str:
  """The section of a subset: LLMBar -> chat_hard, HH harmless -> safety, ..."""
  if fmt == "alpaca_eval":
    return "alpaca_eval"
  for pattern, name in SECTIONS:
    if re.search(pattern, subset):
      return name
  return subset


class MemoScorer:
  """Wraps a scorer so that each distinct (prompt, response) is scored once, within a call
  and across calls (AlpacaEval files repeat the same baseline outputs in every file).

  ``score`` runs the wrapped scorer on the pairs it has not seen, in one call, and sets
  ``last_tokens`` / ``last_truncated`` (when the wrapped scorer has them) for the whole call.
  Valid while the wrapped scorer's weights do not change.
  """

  def __init__(self, scorer):
    self.scorer = scorer
    self._memo: dict[tuple[str, str], tuple] = {}
    self.scored = 0                   # distinct pairs the wrapped scorer was asked for
    self.last_tokens = self.last_truncated = None

  def score(self, prompts, responses) -> np.ndarray:
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    keys = list(zip(prompts, responses))
    new = list(dict.fromkeys(k for k in keys if k not in self._memo))
    if new:
      rewards = self.scorer.score([k[0] for k in new], [k[1] for k in new])
      tokens = getattr(self.scorer, "last_tokens", None)
      cut = getattr(self.scorer, "last_truncated", None)
      for i, k in enumerate(new):
        self._memo[k] = (rewards[i], None if tokens is None else tokens[i],
                         None if cut is None else cut[i])
      self.scored += len(new)
    got = [self._memo[k] for k in keys]
    has = lambda j: bool(got) and all(g[j] is not None for g in got)
    self.last_tokens = np.asarray([g[1] for g in got]) if has(1) else None
    self.last_truncated = np.asarray([g[2] for g in got], bool) if has(2) else None
    return np.asarray([g[0] for g in got], np.float32)


def score_examples(scorer, examples, *, fmt: str | None = None):
  """Scores both responses of each pair; returns (rows for scores.jsonl, [P] accuracies)."""
  pairs = [e for e in examples if len(e.responses) == 2]
  prompts = [e.prompt for e in pairs for _ in range(2)]
  responses = [r for e in pairs for r in e.responses]
  rewards = scorer.score(prompts, responses) if pairs else np.zeros((0,), np.float32)
  tokens = getattr(scorer, "last_tokens", None)
  cut = getattr(scorer, "last_truncated", None)
  rows = []
  for i, e in enumerate(pairs):
    gens = e.meta.get("generators") or (None, None)
    for j in range(2):
      k = 2 * i + j
      rows.append({"id": f"{e.id}:{j}", "pair_id": e.id, "chosen": int(j == 0),
                   "reward": float(rewards[k]), "chars": len(e.responses[j]),
                   "tokens": None if tokens is None else int(tokens[k]),
                   "subset": e.subset, "section": section_of(e.subset, fmt),
                   "generator": gens[j], "alpha": e.alpha,
                   "truncated": None if cut is None else bool(cut[k])})
  r = rewards.reshape(-1, 2)
  return rows, (r[:, 0] > r[:, 1]).astype(np.float64)


def summarize(rows) -> dict:
  """Per-subset accuracy, per-section example-weighted means, overall = mean of sections."""
  by_pair = collections.OrderedDict()
  for row in rows:
    by_pair.setdefault(row["pair_id"], []).append(row)
  subsets = collections.defaultdict(list)
  sections = collections.defaultdict(list)
  for pid, rs in by_pair.items():
    if len(rs) != 2:
      continue
    w = next(r for r in rs if r["chosen"] == 1)
    l = next(r for r in rs if r["chosen"] == 0)
    acc = float(w["reward"] > l["reward"])
    subsets[w["subset"]].append(acc)
    sections[w["section"]].append(acc)
  out = {"subsets": {s: {"accuracy": float(np.mean(a)), "n": len(a)}
                     for s, a in subsets.items()},
         "sections": {s: {"accuracy": float(np.mean(a)), "n": len(a),
                          "subsets": sorted({r["subset"] for r in rows if r["section"] == s})}
                      for s, a in sections.items()}}
  out["overall"] = float(np.mean([v["accuracy"] for v in out["sections"].values()])) \
      if sections else float("nan")
  return out


def render_markdown(summary: dict) -> str:
  lines = ["| section | subset | pairs | accuracy |", "|---|---|---:|---:|"]
  for sec, v in summary["sections"].items():
    for sub in v["subsets"]:
      s = summary["subsets"][sub]
      lines.append(f"| {sec} | {sub} | {s['n']} | {s['accuracy']:.3f} |")
    lines.append(f"| **{sec}** | (example-weighted) | {v['n']} | **{v['accuracy']:.3f}** |")
  lines.append(f"| **overall** | mean of sections | | **{summary['overall']:.3f}** |")
  return "\n".join(lines)
