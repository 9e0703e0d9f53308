"""Held-out preference metrics during and after training, on any data with pairs.

Every ``every`` steps (and at the last step) the hook scores the held-out pairs with the
current policy (the reference's scores are computed once) and logs

  heldout/accuracy          mean 1[beta * (log pi/pi_ref(y_w) - log pi/pi_ref(y_l)) > 0]
                            (implicit-reward preference accuracy; ties count wrong)
  heldout/margin            mean implicit reward margin, beta * (...) as above
  heldout/chosen_reward, heldout/rejected_reward   mean beta * log pi/pi_ref per side
  ranking/heldout_accuracy  R: mean 1[log pi(y_w|x) > log pi(y_l|x)] (ties per
                            ``prefjax.metrics.ranking``), and ``..._normalized`` (R~:
                            per-token means); ``ranking/heldout_ref_accuracy`` the
                            reference's R; ``ranking/heldout_idealized_accuracy`` R* at the
                            stage's beta (alpha from the data, else 0.75 as the authors'
                            code assumes for single labels)

and appends ``n_generations`` sampled completions of held-out prompts to
``workdir/generations.jsonl`` (one JSON object per line: stage, step, prompt, response).

Reference: Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings",
arXiv 2405.19534 (R, R~ and the idealized ranking accuracy R*).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import numpy as np

from prefjax.eval import pair_scoring
from prefjax.metrics import ranking
from prefjax.sampling.sampler import generate

SINGLE_LABEL_ALPHA = 0.75


def _alpha(pairs, kept):
  a = np.array([pairs[i].get("alpha", np.nan) for i in kept], np.float64)
  return np.where(np.isfinite(a), a, SINGLE_LABEL_ALPHA)


class HeldoutMonitor:
  """Scores fixed held-out pairs for any params; the reference once, at construction."""

  def __init__(self, graphdef, ref_params, tokenizer, pairs: Sequence[dict], *, beta: float,
               max_len: int, batch_size: int = 16):
    self.graphdef, self.beta, self.tokenizer = graphdef, float(beta), tokenizer
    self.source_pairs = list(pairs)
    self.prompts, self.chosen, self.rejected, kept, self.dropped = pair_scoring.encode_pairs(
        tokenizer, pairs, max_len=max_len)
    self.pairs = [pairs[i] for i in kept]
    self.kw = dict(max_len=max_len, batch_size=batch_size)
    self.ref = self._score(ref_params) if kept else None
    if kept:
      rc, rr = self.ref
      self.alpha = _alpha(pairs, kept)
      self.idealized = float(np.mean(ranking.idealized_ranking_correct(
          rc.sums, rr.sums, self.alpha, beta=self.beta)))

  def _score(self, params):
    return pair_scoring.score_pairs(self.graphdef, params, self.prompts, self.chosen,
                                    self.rejected, **self.kw)

  def metrics(self, params, prefix: str = "heldout") -> dict:
    if self.ref is None:
      return {}
    (pc, pr), (rc, rr) = self._score(params), self.ref
    wc, wl = self.beta * (pc.sums - rc.sums), self.beta * (pr.sums - rr.sums)
    r_pol = np.asarray(ranking.ranking_accuracy(pc.sums, pr.sums)[0])
    r_pol_n = np.asarray(ranking.ranking_accuracy(pc.means, pr.means)[0])
    r_ref = np.asarray(ranking.ranking_accuracy(rc.sums, rr.sums)[0])
    return {f"{prefix}/accuracy": float(np.mean(wc - wl > 0)),
            f"{prefix}/margin": float(np.mean(wc - wl)),
            f"{prefix}/chosen_reward": float(np.mean(wc)),
            f"{prefix}/rejected_reward": float(np.mean(wl)),
            f"{prefix}/n_pairs": float(len(self.pairs)),
            f"ranking/{prefix}_accuracy": float(r_pol.mean()),
            f"ranking/{prefix}_accuracy_normalized": float(r_pol_n.mean()),
            f"ranking/{prefix}_ref_accuracy": float(r_ref.mean()),
            f"ranking/{prefix}_idealized_accuracy": self.idealized}


def end_of_turn(tokenizer) -> int:
  """The id generation stops at: the chat template's end of turn, else EOS."""
  eot = getattr(tokenizer, "eot_id", None)
  return eot if eot is not None else tokenizer.eos_id


def write_generations(path: str, graphdef, params, tokenizer, prompts: Sequence, *, stage: str,
                      step: int, max_new_tokens: int, seed: int = 0, temperature: float = 0.0):
  """Appends one sampled (greedy at temperature 0) completion per prompt to ``path``."""
  if not prompts:
    return
  ids = [tokenizer.encode_prompt(p) for p in prompts]
  out = generate(graphdef, params, ids, max_new_tokens=max_new_tokens,
                 rng=jax.random.key(seed + step), temperature=temperature, top_p=1.0,
                 eos_id=end_of_turn(tokenizer), pad_id=tokenizer.pad_id, batch_size=len(ids))
  with open(path, "a") as f:
    for p, o in zip(prompts, out):
      f.write(json.dumps({"stage": stage, "step": int(step), "prompt": p,
                          "response": tokenizer.decode(o)}) + "\n")


def make_hook(monitor: HeldoutMonitor, *, every: int, last_step: int, stage: str,
              workdir: str, params_fn: Callable | None = None, generation_prompts=(),
              max_new_tokens: int = 64) -> Callable:
  """``on_log(state, step) -> dict`` for ``prefjax.train.loop.run_stage``."""
  path = os.path.join(workdir, "generations.jsonl")

  def on_log(state, step):
    if not (every > 0 and step % every == 0) and step != last_step:
      return {}
    params = state["params"] if params_fn is None else params_fn(state["params"])
    out = monitor.metrics(params)
    if generation_prompts:
      write_generations(path, monitor.graphdef, params, monitor.tokenizer,
                        list(generation_prompts), stage=stage, step=step,
                        max_new_tokens=max_new_tokens)
    return out

  return on_log
