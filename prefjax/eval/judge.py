"""Judging a real policy: held-out prompts sampled from the policy and its reference (same
seeds, same settings) and scored by a reward source.

    metrics, rows = judge(policy, reference, tokenizer, items, source=verifier, taskset=ts,
                          settings=JudgeSettings(n_samples=1, max_new_tokens=64))

Metrics (floats; ``/policy`` and ``/reference`` sides):
  verified_accuracy/*     the task's exact score (``tasks:`` prompts; strict answer format)
  format_rate/*           answers given in the requested format
  lenient_accuracy/*      the lenient read (e.g. the last number), reported beside, never instead
  score/*                 the reward source's mean score
  win_rate_vs_reference   P(score_policy > score_reference) + 1/2 P(tie), sample by sample
  length/*                mean completion tokens
  kl_to_reference         mean over the policy's samples of sum_t log pi - log pi_ref
Rows (one per sample, ``generations.jsonl``): model (policy | reference), id, task, prompt
(the user message's text), response, score, and correct / formatted on ``tasks:`` prompts.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import numpy as np

from prefjax.rl.reward_sources import task_scores
from prefjax.rl.rollout import RolloutConfig, fixed_width, sample_view, score


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
  n_samples: int = 1              # samples per prompt and side
  max_new_tokens: int = 64
  temperature: float = 1.0        # 0: greedy
  top_p: float = 1.0
  top_k: int = 0
  seed: int = 1234
  max_len: int = 512
  batch_size: int = 32
  logps_chunk: int | None = 128


def _rollout_config(s: JudgeSettings, tokenizer) -> RolloutConfig:
  return RolloutConfig.for_tokenizer(tokenizer, max_len=s.max_len,
                                     max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                     top_p=s.top_p, top_k=s.top_k, missing_eos="none",
                                     logps_chunk=s.logps_chunk)


def _side(model, items, ids, s: JudgeSettings, cfg, tokenizer, source, taskset):
  """Views (batch by batch) of one side's samples, with scores."""
  views = []
  for start in range(0, len(items), s.batch_size):
    rng = jax.random.fold_in(jax.random.key(s.seed), start)      # the same for both sides
    v = sample_view(model, items[start:start + s.batch_size], ids[start:start + s.batch_size],
                    rng=rng, cfg=cfg, tokenizer=tokenizer)
    v.cache["score"] = np.asarray(source.fn(v), np.float64)
    if taskset is not None:
      v.cache["scores"] = task_scores(v, taskset)
    views.append(v)
  return views


@dataclasses.dataclass
class Side:
  """One model's judged samples: its (graphdef, params), the rows it was asked and the views
  (rows, text, scores) of its answers. A side of a model that does not change (a start
  model judged against many policies) is computed once and passed to ``judge`` again."""
  model: tuple
  items: list
  views: list


def judge_side(model, tokenizer, items: Sequence, *, source, taskset=None,
               settings: JudgeSettings = JudgeSettings()) -> Side:
  """The samples of ``model`` = (graphdef, params) on ``items`` (``n_samples`` each), scored."""
  s = settings
  cfg = _rollout_config(s, tokenizer)
  items = [x for x in items for _ in range(s.n_samples)]
  ids = [tokenizer.encode_prompt(x.prompt) for x in items]
  keep = [i for i, p in enumerate(ids) if len(p) <= cfg.prompt_width]
  items, ids = [items[i] for i in keep], [ids[i] for i in keep]
  cfg = fixed_width(ids, cfg)
  return Side(model, items, _side(model, items, ids, s, cfg, tokenizer, source, taskset))


def judge(policy, reference, tokenizer, items: Sequence, *, source, taskset=None,
          settings: JudgeSettings = JudgeSettings(), progress: bool = False,
          reference_side: Side | None = None):
  """(metrics, rows) of ``policy`` vs ``reference`` = (graphdef, params) Transformers.

  ``reference_side``: the reference's ``judge_side`` on the same items and settings, reused
  instead of sampled again."""
  s = settings
  n_asked = len(items) * s.n_samples
  pol = judge_side(policy, tokenizer, items, source=source, taskset=taskset, settings=s)
  ref = reference_side or judge_side(reference, tokenizer, items, source=source,
                                     taskset=taskset, settings=s)
  if [x.id for x in ref.items] != [x.id for x in pol.items]:
    raise ValueError("reference_side was judged on other prompts than the policy")
  items = pol.items
  sides = {"policy": pol.views, "reference": ref.views}
  out: dict = {"judge/samples": float(len(items)),
               "judge/dropped_long_prompts": float(n_asked - len(items))}
  rows = []
  scores = {}
  for name, views in sides.items():
    sc = np.concatenate([v.cache["score"] for v in views])
    scores[name] = sc
    lengths = np.concatenate([v.lengths for v in views])
    out[f"score/{name}"] = float(sc.mean())
    out[f"length/{name}"] = float(lengths.mean())
    if taskset is not None:
      ts = [x for v in views for x in v.cache["scores"]]
      out[f"verified_accuracy/{name}"] = float(np.mean([x.correct for x in ts]))
      out[f"format_rate/{name}"] = float(np.mean([x.formatted for x in ts]))
      out[f"lenient_accuracy/{name}"] = float(np.mean([x.lenient for x in ts]))
    k = 0
    for v in views:
      for j, (item, resp) in enumerate(zip(v.items, v.completions)):
        row = {"model": name, "id": item.id, "task": item.task, "prompt": item.text,
               "response": resp, "score": float(sc[k]), "tokens": int(v.lengths[j])}
        if taskset is not None:
          t = v.cache["scores"][j]
          row.update(correct=float(t.correct), formatted=bool(t.formatted),
                     lenient=float(t.lenient), answer=item.meta.answer)
        rows.append(row)
        k += 1
  p, r = scores["policy"], scores["reference"]
  out["win_rate_vs_reference"] = float(np.mean((p > r) + 0.5 * (p == r)))
  # KL(policy || reference) on the policy's own samples: the policy's log-probs are the
  # sampler's (the unmodified logits at each drawn token), the reference's one forward.
  kls = []
  for v in sides["policy"]:
    _, _, ref_lp = score(policy[0], policy[1], reference[0], reference[1],
                         jax.tree.map(np.asarray, v.batch), chunk_size=s.logps_chunk,
                         policy=False)
    kls.append((v.cache["sampler_logps"] - np.asarray(ref_lp)).sum(-1))
  out["kl_to_reference"] = float(np.concatenate(kls).mean())
  return out, rows


def write_generations(path: str, rows) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def headline(metrics: dict) -> str:
  """``policy/reference verified accuracy: P / R (n=N, win rate W)`` (or the mean score
  without a verifier)."""
  n = int(metrics["judge/samples"])
  w = metrics["win_rate_vs_reference"]
  if "verified_accuracy/policy" in metrics:
    return (f"policy/reference verified accuracy: {metrics['verified_accuracy/policy']:.3f} / "
            f"{metrics['verified_accuracy/reference']:.3f} (n={n}, win rate {w:.3f})")
  return (f"policy/reference mean score: {metrics['score/policy']:.3f} / "
          f"{metrics['score/reference']:.3f} (n={n}, win rate {w:.3f})")
