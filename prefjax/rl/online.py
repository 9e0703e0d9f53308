"""Online / iterative preference optimisation: per round, sample K responses per prompt from
the current policy, score them with a reward source, form pairs (or groups, or labelled
singles) and update with ANY registered preference loss through THE step.

    round r (prompts drawn with (seed, r); sampling RNG fold_in(key(seed), r)):
      y_1..y_K ~ pi(.|x)                       for prompts_per_round prompts x
      s_k = sum_source weight * score(x, y_k)  (``config.online.rewards``, one registry)
      pairwise loss (dpo, ipo, simpo, ...):  "best_worst": (argmax s, argmin s) per prompt;
                                             "all": every (y_i, y_j) with s_i > s_j
      multi loss (mdpo, mipo):               the K samples sorted by score, the top half
                                             chosen, the bottom half rejected
      unpaired loss (kto, ...):              y_k labelled 1 above its prompt's mean score,
                                             0 below (ties dropped)
      steps_per_round updates on those examples (the run's layout and row encoders); the
      reference's log-probs travel as batch fields, computed at the start of the round from
      the start model (``reference="start"``) or the policy of that moment ("previous").

Rounds are ``prefjax.train.rounds.RoundBatches`` of the shared loop (resume, SIGTERM,
non-finite policy, logging). Prompts without a score difference give no examples; a round
with none trains on nothing (every example masked) and says so in ``online/examples``.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from prefjax import losses, sharding
from prefjax.data import layout as layout_lib
from prefjax.data import pipeline
from prefjax.errors import ConfigError, DataError
from prefjax.rl import reward_models  # noqa: F401  (registers sequence_rm, token_rm)
from prefjax.rl import reward_sources as rw
from prefjax.rl.rollout import RolloutConfig, check_prompts, fixed_width, sample_view
from prefjax.rl.stage import judge_metrics
from prefjax.train import ref_cache
from prefjax.train.loop import run_stage, stage_checkpointer
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.rounds import RoundBatches
from prefjax.train.stages import logps_chunk
from prefjax.train.step import init_state, make_train_step

PAIRINGS = ("best_worst", "all")
REFERENCES = ("start", "previous")


def online_config() -> ml_collections.ConfigDict:
  """Defaults of the ``online`` section."""
  o = ml_collections.ConfigDict()
  o.name = "online"
  o.rounds = 8
  o.prompts_per_round = 16
  o.k = 4                          # samples per prompt
  o.pairs = "best_worst"           # best_worst | all (pairwise losses)
  o.loss = "dpo"                   # any registered loss (pairwise, multi or unpaired kind)
  o.loss_kwargs = ml_collections.ConfigDict(dict(beta=0.1))
  o.reference = "start"            # start | previous (the policy at the start of each round)
  o.steps_per_round = 4
  o.batch_size = 8
  o.lr, o.warmup_steps, o.weight_decay = 1e-6, 0, 0.0
  o.b1, o.b2, o.clip_norm, o.final_lr_fraction = 0.9, 0.95, 1.0, 1.0
  o.max_new_tokens = 64
  o.temperature, o.top_p, o.top_k = 1.0, 1.0, 0
  o.n_prompts = 2000               # training-prompt pool
  o.rewards = ml_collections.ConfigDict({"verifier": 1.0})
  o.reward_kwargs = ml_collections.ConfigDict()
  o.checkpoint_every = 1           # rounds between checkpoints; 0 writes none
  return o


def check_config(c) -> None:
  if "online" not in c:
    raise ConfigError("config.stages has an 'online' stage but the config has no 'online' "
                      "section (see experiments/real/smollm2_online_dpo.py)")
  o = c.online
  for f in ("rounds", "prompts_per_round", "k", "steps_per_round", "batch_size",
            "max_new_tokens", "n_prompts"):
    if o[f] < 1:
      raise ConfigError(f"config.online.{f} must be >= 1, got {o[f]}")
  if o.k < 2:
    raise ConfigError(f"config.online.k must be >= 2 (responses to compare), got {o.k}")
  if o.pairs not in PAIRINGS:
    raise ConfigError(f"config.online.pairs: unknown {o.pairs!r}; valid: {', '.join(PAIRINGS)}")
  if o.reference not in REFERENCES:
    raise ConfigError(f"config.online.reference: unknown {o.reference!r}; valid: "
                      f"{', '.join(REFERENCES)}")
  spec = losses.get_spec(o.loss) if o.loss in losses.names() else None
  if spec is None:
    raise ConfigError(f"config.online.loss: unknown loss {o.loss!r}; registered: "
                      f"{', '.join(losses.names())}")
  if spec.kind not in ("pairwise", "multi", "unpaired"):
    raise ConfigError(f"config.online.loss={o.loss!r} is a {spec.kind!r} loss; online rounds "
                      "make pairwise, multi or unpaired examples")
  if spec.kind == "multi" and o.k % 2:
    raise ConfigError(f"config.online.k={o.k} must be even for a multi-sample loss "
                      "(top half chosen, bottom half rejected)")
  make_objective(o.loss, o.loss_kwargs.to_dict())
  rw.check_sources(dict(o.rewards), o.reward_kwargs.to_dict())


# ----------------------------------------------------------------------------- examples
def make_examples(kind: str, item, responses, scores, *, pairs: str = "best_worst",
                  uid: str = "") -> list[dict]:
  """Training examples of ``kind`` from one prompt's K scored responses (see the module
  docstring); [] when the scores do not separate any responses."""
  s = np.asarray(scores, np.float64)
  order = np.argsort(-s, kind="stable")                       # best first
  prompt = item.prompt
  if kind == "pairwise":
    if pairs == "best_worst":
      i, j = order[0], order[-1]
      cand = [(i, j)] if s[i] > s[j] else []
    else:
      cand = [(i, j) for i in range(len(s)) for j in range(len(s)) if s[i] > s[j]]
    return [{"id": f"{uid}/{i}-{j}", "prompt": prompt, "chosen": responses[i],
             "rejected": responses[j]} for i, j in cand]
  if kind == "multi":
    h = len(s) // 2
    top, bottom = order[:h], order[::-1][:h]                  # best first / worst first
    if s[top].mean() <= s[bottom].mean():
      return []
    return [{"id": uid, "prompt": prompt, "chosen": [responses[i] for i in top],
             "rejected": [responses[i] for i in bottom]}]
  if kind == "unpaired":
    m = s.mean()
    return [{"id": f"{uid}/{k}", "prompt": prompt, "response": responses[k],
             "label": int(s[k] > m)} for k in range(len(s)) if s[k] != m]
  raise ConfigError(f"online rounds make pairwise, multi or unpaired examples, not {kind!r}")


def _batches(ctx, kind, examples, encode, o, seed):
  """steps_per_round batches of ``examples`` (cycled up to one batch when fewer)."""
  if isinstance(encode, layout_lib.RowsEncoder):
    ds = layout_lib.plan_batches(examples, encode, seed=seed, num_steps=o.steps_per_round,
                                 shuffle=True)
  else:
    exs = list(examples)
    while len(exs) < o.batch_size:
      exs += examples[:o.batch_size - len(exs)]
    ds = pipeline.batched(exs, encode, o.batch_size, seed=seed, num_steps=o.steps_per_round,
                          shuffle=True)
  return [ds[i] for i in range(o.steps_per_round)]


def _placeholder(kind: str, item, response: str, k: int) -> dict:
  """An example of ``kind`` that a round without examples trains on with weight 0."""
  if kind == "pairwise":
    return {"id": "none", "prompt": item.prompt, "chosen": response, "rejected": response}
  if kind == "multi":
    return {"id": "none", "prompt": item.prompt, "chosen": [response] * (k // 2),
            "rejected": [response] * (k // 2)}
  return {"id": "none", "prompt": item.prompt, "response": response, "label": 1}


# ----------------------------------------------------------------------------- the stage
def run_online_stage(ctx, o, policy_params):
  """Runs ``config.online`` from ``policy_params``; returns the final policy params."""
  c, tok = ctx.config, ctx.tokenizer
  objective = make_objective(o.loss, o.loss_kwargs.to_dict(), logps_chunk=logps_chunk(c))
  kind = objective.spec.kind
  rcfg = RolloutConfig.for_tokenizer(tok, max_len=c.data.max_len,
                                     max_new_tokens=o.max_new_tokens, temperature=o.temperature,
                                     top_p=o.top_p, top_k=o.top_k, missing_eos="none")
  pool = ctx.data.prompts("train", o.n_prompts)
  pool_ids = [tok.encode_prompt(x.prompt) for x in pool]
  check_prompts(pool_ids, rcfg)
  rcfg = fixed_width(pool_ids, rcfg)
  if len(pool) < o.prompts_per_round:
    raise ConfigError(f"config.online.prompts_per_round={o.prompts_per_round} but the data "
                      f"source has {len(pool)} training prompts")
  start = policy_params           # the reference="start" model (read only: the step's
                                  # state holds its own copy)
  env = rw.SourceEnv(ctx=ctx, policy_params=start)
  sources = rw.build_sources(env, dict(o.rewards), o.reward_kwargs.to_dict())
  encode = ctx.data.encoder(kind, batch_size=o.batch_size)
  batch_sh = sharding.batch_sharding(ctx.mesh)
  tx, schedule = make_optimizer(o.lr, o.rounds * o.steps_per_round,
                                warmup_steps=o.warmup_steps, weight_decay=o.weight_decay,
                                b1=o.b1, b2=o.b2, clip_norm=o.clip_norm,
                                final_lr_fraction=o.final_lr_fraction)
  state, state_sh = init_state(jax.tree.map(jnp.copy, policy_params), tx, ctx.param_shardings)
  step = make_train_step(ctx.graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=batch_sh,
                         skip_nonfinite=c.nonfinite == "skip")

  def build(r, state):
    pick = np.random.default_rng([c.seed, r]).choice(len(pool), o.prompts_per_round,
                                                     replace=False)
    idx = np.repeat(pick, o.k)
    view = sample_view((ctx.graphdef, state["params"]), [pool[i] for i in idx],
                       [pool_ids[i] for i in idx],
                       rng=jax.random.fold_in(jax.random.key(c.seed), r), cfg=rcfg,
                       tokenizer=tok)
    total, _, metrics = rw.compute_rewards(sources, view, missing_eos="none")
    scores = total.sum(-1)
    metrics.update(judge_metrics(ctx, view))
    examples = []
    for g, i in enumerate(pick):
      sl = slice(g * o.k, (g + 1) * o.k)
      examples += make_examples(kind, pool[i], view.completions[sl], scores[sl],
                                pairs=o.pairs, uid=f"round{r}/{pool[i].id}")
    if examples:
      try:
        examples = pipeline.filter_examples(examples, encode, source=f"online round {r}")[0]
      except DataError:
        examples = []
    n = len(examples)
    if not n:            # nothing separates the samples: one placeholder, masked out below
      examples = [_placeholder(kind, pool[pick[0]], view.completions[0], o.k)]
    batches = _batches(ctx, kind, examples, encode, o, seed=c.seed * 100003 + r)
    if not n:
      for b in batches:
        b["example_mask"] = np.zeros_like(b["example_mask"])
    reference = start if o.reference == "start" else state["params"]
    if objective.needs_reference:
      refs = ref_cache.compute(ctx.graphdef, objective, reference, batches, len(batches),
                               batch_sh)
      batches = [dict(b, **{k: v[i] for k, v in refs.items()}) for i, b in enumerate(batches)]
    metrics.update({"online/round": r + 1, "online/examples": n,
                    "online/mean_score": float(scores.mean()),
                    "online/completion_tokens": float(view.lengths.mean())})
    return batches, metrics

  src = RoundBatches(build, o.steps_per_round, os.path.join(ctx.workdir, "rounds", o.name))
  ckpt = stage_checkpointer(os.path.join(ctx.workdir, "checkpoints", o.name),
                            every=o.steps_per_round * o.checkpoint_every, keep=c.checkpoint.keep)
  state = run_stage(o.name, train_step=step, state=state, state_shardings=state_sh,
                    ref_params=None, batches=src, batch_sharding=batch_sh,
                    num_steps=o.rounds * o.steps_per_round, checkpointer=ckpt,
                    writer=ctx.writer, log_every=o.steps_per_round, on_log=src.on_log,
                    progress=c.progress, nonfinite=c.nonfinite,
                    max_skips_in_a_row=c.max_skips_in_a_row)
  ckpt.close()
  return state["params"]


def online_stage(ctx, models) -> None:
  """Stage function: online rounds from the current policy; reference = that start."""
  reference = models.policy       # read only: no second copy
  models.policy = run_online_stage(ctx, ctx.config.online, models.policy)
  models.reference = reference
