"""Post-hoc reward calibration against a length bias (arXiv 2409.17407, "Post-hoc reward
calibration: a case study on length bias").

Per seed, from the start model's K samples of each training prompt (scored by the verifier):

1. A length-biased preference set: every (correct, wrong) pair of a prompt's samples, where
   the chosen (correct) answer is given a verbose preamble (``PREAMBLE``: more tokens, the
   same final "Answer: X" line, so the verifier's verdict is unchanged) with probability
   ``bias`` and the rejected one with probability 1 - ``bias``: the chosen response is the
   longer one in most pairs.
2. A Bradley-Terry reward model (SmolLM2 backbone + a scalar head) trained on it.
3. Judged on the validation prompts' samples with the preamble added at random (probability
   1/2, independent of correctness): pairwise accuracy against the verifier and Spearman
   correlation of the reward with length, for the raw reward, RC-Mean and RC-LWR
   (``prefjax.rewards.calibration``; the bias is estimated on the judged responses
   themselves, post hoc, as in the paper; the LOWESS window fraction is 0.3, widened by
   ``frac_for_ties`` where more answers share one length than a window holds).
4. RL with the reward model as the reward: PPO with a critic from the start model (the
   recipe of experiments/real/smollm2_ppo.py, shortened; ``rl_arm``; ``recipe="grpo"`` for
   GRPO) with the raw reward, the RC-LWR-calibrated one (the ``calibrated:`` reward source:
   the LOWESS bias fitted once on the start model's samples of the training prompts, then
   subtracted from every rollout's reward) or, as a control, the verifier's exact reward.
   Held-out greedy verified accuracy and mean length of the policy, and how far the policy
   moved toward the verbose form: ``preamble_margin``, the mean over held-out prompts of
   log pi(PREAMBLE + y | x) - log pi(y | x) for the start model's greedy answer y, minus the
   start model's (greedy answers rarely write the preamble, so their length alone cannot
   show the bias being learned).
"""
from __future__ import annotations

import functools
import itertools
import time

import numpy as np
from flax import nnx

from prefjax.errors import ConfigError
from prefjax.eval.completion_scoring import score_completions
from prefjax.rewards import calibration as cal
from prefjax.rewards.model import RewardModel, reward_params_from_backbone
from prefjax.rewards.scorer import RewardScorer
from prefjax.rl import reward_sources as rw
from prefjax.studies.real import report
from prefjax.studies.real.common import FULL_SIZES, QUICK_SIZES, reward_grid
from prefjax.studies.real.frame import (edits, judge_fields, register_study, seeds,
                                        tune_once)
from prefjax.studies.real.rl_arm import RECIPES, Arm, hold, run_rl

PREAMBLE = ("Let me work this out carefully, one step at a time, and then check the sum "
            "again before I give the final answer.\n")
KEYS = ("reward",)
METRICS = ("rm_accuracy", "length_spearman", "accuracy", "gain", "length", "preamble_margin",
           "win_rate", "kl")


def verbose(response: str) -> str:
  return PREAMBLE + response


def biased_pairs(pool, bias: float, seed: int, edit_pairs=()) -> list[dict]:
  """Every (correct, wrong) pair of each prompt's samples, then every (edited, original)
  pair of ``edit_pairs`` (``frame.edits``: a wrong sample and its minimal fix); the chosen
  one gets the preamble with probability ``bias``, the rejected one with 1 - ``bias``."""
  rng = np.random.default_rng([seed, 23])
  out = []
  for pid, prompt, g, b in itertools.chain(_sample_pairs(pool), (
      (f"{e['id']}/edit", e["prompt"], e["edited"], e["original"]) for e in edit_pairs)):
    out.append({"id": pid, "prompt": prompt,
                "chosen": verbose(g) if rng.random() < bias else g,
                "rejected": verbose(b) if rng.random() < 1 - bias else b})
  return out


def _sample_pairs(pool):
  """(id, prompt, correct answer, wrong answer) for every such pair of a prompt's samples."""
  for item, responses, c in zip(pool.items, pool.responses, pool.correct):
    good = [r for r, x in zip(responses, c) if x > 0]
    bad = [r for r, x in zip(responses, c) if x <= 0]
    for n, (g, b) in enumerate(itertools.product(good, bad)):
      yield f"{item.id}/{n}", item.prompt, g, b


def randomly_verbose(pool, seed: int):
  """(prompts, responses, correct, item index) of every sample, the preamble added with
  probability 1/2 independently of correctness."""
  rng = np.random.default_rng([seed, 29])
  prompts, responses, correct, index = [], [], [], []
  for i, (item, rs, c) in enumerate(zip(pool.items, pool.responses, pool.correct)):
    for r, x in zip(rs, c):
      prompts.append(item.prompt)
      responses.append(verbose(r) if rng.random() < 0.5 else r)
      correct.append(float(x))
      index.append(i)
  return prompts, responses, np.asarray(correct), np.asarray(index)


def train_reward_model(env, pairs, rm, seed):
  """(graphdef, params) of a Bradley-Terry reward model on the start model's backbone,
  trained on prefix-shared pair rows ([prompt | chosen | rejected], ``env.train``)."""
  graphdef, params, g = reward_grid(env, RewardModel(env.ctx.model_cfg, nnx.Rngs(seed)),
                                    reward_params_from_backbone, max_len=env.sizes.max_len + 32)
  params, _ = env.train(params, "bradley_terry", {}, pairs, steps=rm["steps"],
                        batch_size=rm["batch_size"], lr=rm["lr"], seed=seed, grid=g,
                        lr_multipliers={"head": rm.get("head_lr_multiplier", 1.0)})
  return graphdef, params


def verbosity(env, params, split: str = "test") -> float:
  """Mean over ``split``'s prompts of log pi(PREAMBLE + y | x) - log pi(y | x), y the start
  model's greedy answer: how much ``params`` prefers the verbose form of the same answer."""
  side = env.side(env.start, split, key="start")
  answers = [c for v in side.views for c in v.completions]
  tok = env.tokenizer
  prompts = [tok.encode_prompt(x.prompt) for x in side.items]
  lp = {}
  for name, texts in (("plain", answers), ("verbose", [verbose(a) for a in answers])):
    lp[name] = score_completions(env.ctx.graphdef, params, prompts,
                                 [tok.encode_completion(t) for t in texts],
                                 max_len=env.sizes.max_len + 32,
                                 batch_size=env.sizes.batch_rows)[0]
  return float(np.mean(lp["verbose"] - lp["plain"]))


def calibrated(rewards, lengths, pairs_idx=None) -> dict:
  """{"raw", "rc_mean", "rc_lwr"}: rewards [N] with the length bias removed post hoc."""
  # frac 0.3 (rc_lwr's default), widened where one length holds more points than a window: most
  # answers here have the same token count, and a zero-width window's "fit" is one sample.
  frac = cal.frac_for_ties(lengths, 0.3)
  out = {"raw": np.asarray(rewards, np.float64),
         "rc_lwr": np.asarray(cal.rc_lwr(rewards, lengths, frac=frac).rewards, np.float64)}
  if pairs_idx is not None:
    i, j = pairs_idx
    if not len(i):                  # no pair to calibrate: nothing to compare either
      out["rc_mean"] = out["raw"]
      return out
    r1, r2 = cal.rc_mean(rewards[i], rewards[j], lengths[i], lengths[j], min_count=5)
    rc = np.array(out["raw"])
    rc[i], rc[j] = np.asarray(r1.rewards), np.asarray(r2.rewards)
    out["rc_mean"] = rc
  return out


def mixed_pairs(correct, index):
  """Index pairs (i, j) of samples of the same prompt with correct[i] > correct[j]."""
  i, j = [], []
  for a in range(len(correct)):
    for b in range(len(correct)):
      if index[a] == index[b] and correct[a] > correct[b]:
        i.append(a)
        j.append(b)
  return np.asarray(i, int), np.asarray(j, int)


def _report(rows, settings):
  claims = [report.claim_line("RC-Mean raises RM accuracy", rows, "rm_accuracy",
                              {"reward": "rc_mean"}, {"reward": "raw"}),
            report.claim_line("RC-LWR raises RM accuracy", rows, "rm_accuracy",
                              {"reward": "rc_lwr"}, {"reward": "raw"}),
            report.claim_line("RC-LWR lowers the absolute Spearman(reward, length)", rows,
                              "abs_length_spearman", {"reward": "rc_lwr"}, {"reward": "raw"},
                              claim_sign=-1),
            report.claim_line("policy of the RC-LWR reward: higher verified accuracy", rows,
                              "accuracy", {"reward": "rc_lwr"}, {"reward": "raw"}),
            report.claim_line("policy of the RC-LWR reward: higher win rate vs the start", rows,
                              "win_rate", {"reward": "rc_lwr"}, {"reward": "raw"}),
            report.claim_line("policy of the RC-LWR reward: shorter answers", rows, "length",
                              {"reward": "rc_lwr"}, {"reward": "raw"}, claim_sign=-1),
            report.claim_line("policy of the RC-LWR reward: moves less toward the verbose "
                              "form (preamble_margin)", rows, "preamble_margin",
                              {"reward": "rc_lwr"}, {"reward": "raw"}, claim_sign=-1)]
  b = settings.budget
  return dict(title="Post-hoc reward calibration on a length-biased reward model (arXiv "
              "2409.17407), SmolLM2-135M-Instruct, chain_sum",
              keys=KEYS, metrics=METRICS + ("abs_length_spearman",), claims=claims,
              notes=["rm_accuracy / length_spearman: validation prompts' samples, preamble at "
                     f"random; accuracy / length / win_rate / kl: the {b['recipe']} policy "
                     "trained with that reward (rc_mean: no policy, the RM-side numbers only; "
                     "verifier: the exact reward, a control without a reward model); "
                     f"lr chosen from {b['space']} on the validation prompts "
                     "(first seed; val_accuracy); preamble_margin: "
                     "the policy's log-prob gain of the verbose form of the start model's "
                     "greedy test answers over the plain form, minus the start model's"],
              plot=_plot)


def _plot(table, path):
  """Left: the reward model's pairwise accuracy per calibration; right: the held-out verified
  accuracy of the policy trained with each reward, the start model's as a line."""
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
  for ax, metric, label in ((axes[0], "rm_accuracy", "RM pairwise accuracy vs verifier"),
                            (axes[1], "accuracy", "policy verified accuracy (test)")):
    ds = [d for d in table if np.isfinite(d.get(metric, np.nan))]
    ax.bar(range(len(ds)), [d[metric] for d in ds], capsize=3,
           yerr=[d[metric + "_se"] if np.isfinite(d[metric + "_se"]) else 0.0 for d in ds])
    ax.set_xticks(range(len(ds)), [d["reward"] for d in ds])
    ax.set_xlabel("reward")
    ax.set_ylabel(label)
  starts = [r for r in table if np.isfinite(r.get("accuracy", np.nan))]
  if starts and np.isfinite(starts[0].get("gain", np.nan)):
    axes[1].axhline(starts[0]["accuracy"] - starts[0]["gain"], color="gray", ls="--", lw=1,
                    label="start model")
    axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# The RL arms: PPO with a critic (experiments/real/smollm2_ppo.py) shortened to 4 iterations of
# 16 rollouts at temperature 0.5, each arm's lr chosen from ``space`` on the validation prompts
# with the first seed; PPO with the verifier's reward is the control that shows what the same
# RL budget does with an exact reward. GRPO (``recipe="grpo"``) failed here: most groups of 8
# samples held no correct answer, the reward model still ranked their wrong answers, and the
# group-normalised advantages made that ranking a full-size update (both arms fell below
# their start). From {3e-6, 1e-5} both reward-model arms chose 3e-6 and still fell below
# their start, hence the lower grid. The reward model's head learns at 100x the backbone's
# lr, as in experiments/real/smollm2_reward.py; ``edit_pairs`` adds the verifier's minimal
# edits of the wrong samples to its pairs (same bias).
BUDGET = dict(seeds=3, bias=0.8, edit_pairs=False,
              rm=dict(steps=32, batch_size=8, lr=1e-5, head_lr_multiplier=100.0),
              recipe="ppo", iterations=4, rollout_batch_size=16, minibatch_size=8,
              group_size=4, n_prompts=96, temperature=0.5, space={"lr": [1e-6, 3e-6]},
              policies=("raw", "rc_lwr", "verifier"))
QUICK_BUDGET = dict(BUDGET, seeds=1, rm=dict(BUDGET["rm"], steps=2, batch_size=4),
                    iterations=1, rollout_batch_size=8, minibatch_size=8, group_size=4,
                    n_prompts=16, space={"lr": [3e-6]}, policies=("raw", "rc_lwr"))
# policy -> reward source ("{}": the held reward model's name)
SOURCES = {"raw": "{}", "rc_lwr": "calibrated:{}", "verifier": "verifier"}
RM_REWARDS = ("raw", "rc_mean", "rc_lwr")


@register_study("calibration", paper="2409.17407", report=_report, sizes=FULL_SIZES,
                quick_sizes=QUICK_SIZES, budget=BUDGET, quick_budget=QUICK_BUDGET)
def run(env, settings):
  """One row per (reward: raw | rc_mean | rc_lwr | verifier, seed): the reward model's
  accuracy and length correlation under each calibration (not for the verifier), and the
  fields of the RL policy trained with it (for the rewards in ``policies``)."""
  b = settings.budget
  unknown = set(b["policies"]) - set(SOURCES)
  if unknown:
    raise ConfigError(f"calibration budget: unknown policies {sorted(unknown)} "
                      f"(known: {', '.join(SOURCES)})")
  if b["recipe"] not in RECIPES:
    raise ConfigError(f"calibration budget: unknown recipe {b['recipe']!r} "
                      f"(known: {', '.join(RECIPES)})")
  rows, chosen = settings.new_rows(), {}
  start_margin = verbosity(env, env.start)
  for seed in seeds(settings):
    t0 = time.perf_counter()
    pool = env.pool(seed, settings.samples_dir)
    pairs = biased_pairs(pool, b["bias"], seed,
                         edits(pool, env.taskset) if b["edit_pairs"] else ())
    rm_graphdef, rm_params = train_reward_model(env, pairs, b["rm"], seed)
    scorer = RewardScorer(rm_graphdef, rm_params, env.tokenizer, max_len=env.sizes.max_len + 32,
                          batch_size=env.sizes.batch_rows, progress=False)
    # -- the reward model judged on the validation prompts' samples
    val_pool = env.pool(seed, settings.samples_dir, split="val")
    prompts, responses, correct, index = randomly_verbose(val_pool, seed)
    rewards = scorer.score(prompts, responses)
    lengths = np.asarray(scorer.last_tokens, np.float64)
    pi, pj = mixed_pairs(correct, index)
    val_scores = calibrated(rewards, lengths, (pi, pj))
    rm_seconds = time.perf_counter() - t0
    del scorer
    with hold(f"rm{seed}", rw.sequence_rm_source(rm_graphdef, rm_params)) as rm:
      for name in RM_REWARDS + ("verifier",):
        row = dict(reward=name, seed=seed)
        if name in RM_REWARDS:
          v = val_scores[name]
          rho = float(cal.spearman(v, lengths))
          row.update(rm_pairs=len(pairs), rm_seconds=rm_seconds,
                     rm_accuracy=float(np.mean(v[pi] > v[pj])) if len(pi) else float("nan"),
                     length_spearman=rho, abs_length_spearman=abs(rho))
        if name in b["policies"]:
          t1 = time.perf_counter()
          train = functools.partial(run_rl, env, Arm(f"{b['recipe']}_{name}", b["recipe"],
                                                     SOURCES[name].format(rm)),
                                    b, seed=seed, out=settings.out)
          params, hp, val_accuracy = tune_once(env, chosen, name, train, b["space"])
          j = env.judge(params, "test")
          row.update(hp, val_accuracy=val_accuracy,
                     preamble_margin=verbosity(env, params) - start_margin,
                     **judge_fields(j), seconds=time.perf_counter() - t1)
          del params
        if name in RM_REWARDS or name in b["policies"]:
          rows.append(row)
    del rm_params
  return rows
