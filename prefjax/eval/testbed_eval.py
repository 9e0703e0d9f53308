"""Judging a policy exactly in the testbed: oracle win rate, oracle reward, KL, implicit reward.

  * win rate vs reference: on held-out prompts, one policy sample against one reference
    sample per (prompt, draw), compared by the oracle reward r*; ties count half.
  * KL(policy || reference) ~ mean over policy samples y of log pi(y|x) - log pi_ref(y|x)
    (the sequence-level Monte-Carlo estimator; unbiased, can be slightly negative).
  * implicit-reward accuracy and margins on held-out pairs: beta * log(pi / pi_ref) of the
    chosen minus the rejected response.

The oracle is also a reward source (``"oracle"`` in ``config.rl.rewards``), registered here.
"""
from __future__ import annotations

import jax
import numpy as np

from prefjax.errors import ConfigError
from prefjax.eval.completion_scoring import score_completions
from prefjax.rl.reward_sources import RewardSource, register_reward_source
from prefjax.sampling.sampler import generate
from prefjax.testbed import world
from prefjax.testbed.tasks import get_task


def sample_responses(graphdef, params, tokenizer, prompts, *, n_samples, max_new_tokens, seed,
                     temperature=1.0, top_p=1.0, batch_size=128):
  """Decoded responses [len(prompts) * n_samples] (prompt-major) and their token ids."""
  ids = [tokenizer.encode_prompt(p) for p in prompts for _ in range(n_samples)]
  out = generate(graphdef, params, ids, max_new_tokens=max_new_tokens,
                 rng=jax.random.key(seed), temperature=temperature, top_p=top_p,
                 eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, batch_size=batch_size)
  return [tokenizer.decode(o) for o in out], ids, out


def evaluate_policy(graphdef, policy_params, ref_params, tokenizer, eval_prompts, *,
                    n_samples: int, max_new_tokens: int, max_len: int, seed: int = 0,
                    temperature: float = 1.0):
  """The summary numbers of the testbed judge (floats), plus per-sample details."""
  tasks = [t for t, _ in eval_prompts]
  prompts = [p for _, p in eval_prompts]
  pol_txt, pids, pol_ids = sample_responses(graphdef, policy_params, tokenizer, prompts,
                                            n_samples=n_samples, max_new_tokens=max_new_tokens,
                                            seed=seed, temperature=temperature)
  ref_txt, _, _ = sample_responses(graphdef, ref_params, tokenizer, prompts,
                                   n_samples=n_samples, max_new_tokens=max_new_tokens,
                                   seed=seed + 1, temperature=temperature)
  rep = lambda xs: [x for x in xs for _ in range(n_samples)]
  tasks_r, prompts_r = rep(tasks), rep(prompts)
  r_pol = np.array([get_task(t).reward(p, y) for t, p, y in zip(tasks_r, prompts_r, pol_txt)])
  r_ref = np.array([get_task(t).reward(p, y) for t, p, y in zip(tasks_r, prompts_r, ref_txt)])
  wins = (r_pol > r_ref) + 0.5 * (r_pol == r_ref)

  # KL on the policy's own samples (completions that never emitted EOS are scored as is).
  comp = [c if c else [tokenizer.eos_id] for c in pol_ids]
  lp_pol, _ = score_completions(graphdef, policy_params, pids, comp, max_len=max_len)
  lp_ref, _ = score_completions(graphdef, ref_params, pids, comp, max_len=max_len)
  summary = {
      "win_rate_vs_reference": float(wins.mean()),
      "oracle_reward_policy": float(r_pol.mean()),
      "oracle_reward_reference": float(r_ref.mean()),
      "accuracy_policy": float((r_pol >= 1.0).mean()),
      "accuracy_reference": float((r_ref >= 1.0).mean()),
      "kl_to_reference": float(np.mean(lp_pol - lp_ref)),
      "num_eval_samples": int(len(wins)),
  }
  for name in sorted(set(tasks)):
    sel = np.array([t == name for t in tasks_r])
    summary[f"win_rate/{name}"] = float(wins[sel].mean())
  details = {"prompts": prompts_r, "tasks": tasks_r, "policy": pol_txt, "reference": ref_txt,
             "r_policy": r_pol, "r_reference": r_ref}
  return summary, details


def implicit_reward_metrics(graphdef, policy_params, ref_params, tokenizer, pairs, *,
                            beta: float, max_len: int):
  """rewards/accuracies and rewards/margins of beta * log(pi / pi_ref) on held-out pairs."""
  prompts = [tokenizer.encode_prompt(ex["prompt"]) for ex in pairs]
  logps = {}
  for side in ("chosen", "rejected"):
    comps = [tokenizer.encode_completion(ex[side]) for ex in pairs]
    lp, _ = score_completions(graphdef, policy_params, prompts, comps, max_len=max_len)
    lr, _ = score_completions(graphdef, ref_params, prompts, comps, max_len=max_len)
    logps[side] = beta * (lp - lr)
  margins = logps["chosen"] - logps["rejected"]
  return {"heldout/rewards/accuracies": float((margins > 0).mean()),
          "heldout/rewards/margins": float(margins.mean())}


@register_reward_source("oracle")
def oracle_source(env=None, arg=None) -> RewardSource:
  """The testbed's exact oracle r*(x, y) in [0, 1] on the decoded completion."""
  def fn(view):
    if view.tasks is None or any(t is None for t in view.tasks):
      raise ConfigError("reward source 'oracle' needs testbed prompts (tasks are unknown)")
    return np.array([world.oracle_reward(t, p, y) for t, p, y in
                     zip(view.tasks, view.prompts, view.completions)], np.float32)
  return RewardSource("oracle", "sequence", fn)
