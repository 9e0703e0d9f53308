"""RL arms of the real-model studies: an ``experiments/real`` recipe (PPO with a critic, or
GRPO) shortened to a study's budget, run from the start model with any reward source,
including reward models a study trained in memory (``study_held:NAME``, see ``hold``).

    with hold("token0", rw.token_rm_source(graphdef, params)):
      params = run_rl(env, Arm("fine_grained_ppo", "ppo", "study_held:token0"), budget,
                      seed=0, out=out, lr=1e-6)

Every knob a study tunes (``lr``, ``kl_coef``) is a keyword argument of ``run_rl``, so
``frame.tune_once`` gives each arm the same hyper-parameter budget, chosen on the
validation prompts.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os

from prefjax import cli
from prefjax.errors import ConfigError
from prefjax.rl import reward_sources as rw
from prefjax.rl.stage import run_rl_stage
from prefjax.train.metrics_writer import MetricsWriter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
RECIPES = {"ppo": "smollm2_ppo.py", "grpo": "smollm2_grpo.py"}
_HELD: dict = {}


@rw.register_reward_source("study_held", takes_arg=True)
def held_source(env, arg):
  """A reward source a study built in memory (registered by ``hold``)."""
  if arg not in _HELD:
    raise ConfigError(f"reward source 'study_held:{arg}': nothing held under {arg!r} "
                   f"(held: {', '.join(_HELD) or 'none'})")
  return _HELD[arg]


@contextlib.contextmanager
def hold(name: str, source):
  """``source`` is the reward source ``study_held:name`` inside the block."""
  _HELD[name] = source
  try:
    yield f"study_held:{name}"
  finally:
    _HELD.pop(name, None)


@dataclasses.dataclass(frozen=True)
class Arm:
  """One RL method of a study: its row name, recipe (``RECIPES``) and reward source."""
  name: str
  recipe: str
  reward: str


def rl_section(arm: Arm, budget: dict, *, lr: float, kl_coef: float | None = None):
  """The recipe's ``rl`` section (experiments/real/), shortened to the study's ``budget``
  (iterations, rollout_batch_size, minibatch_size, group_size, n_prompts, and optionally the
  rollout ``temperature``); no checkpoints (an arm is a short in-memory run)."""
  c = cli._load_config(os.path.join(REPO, "experiments", "real", RECIPES[arm.recipe]))
  r = c.rl
  r.name = arm.name
  r.rewards = {arm.reward: 1.0}
  r.iterations, r.rollout_batch_size = budget["iterations"], budget["rollout_batch_size"]
  r.minibatch_size = budget["minibatch_size"]
  if r.group_size > 1:
    r.group_size = budget["group_size"]
  r.n_prompts = budget["n_prompts"]
  r.temperature = budget.get("temperature", r.temperature)
  r.lr = lr
  if kl_coef is not None:
    r.kl.coef = kl_coef
  r.checkpoint_every = 0
  return r


def run_rl(env, arm: Arm, budget: dict, *, seed: int, out: str, lr: float,
           kl_coef: float | None = None):
  """The policy params after ``arm``'s RL run from the start model (metrics under
  ``out/rl/<arm>_seed<seed>_lr<lr>[_kl<coef>]``)."""
  c = copy.deepcopy(env.ctx.config)
  c.seed = seed
  c.rl = rl_section(arm, budget, lr=lr, kl_coef=kl_coef)
  c.rl.max_new_tokens = env.sizes.max_new_tokens
  tag = f"{arm.name}_seed{seed}_lr{lr:g}" + ("" if kl_coef is None else f"_kl{kl_coef:g}")
  work = os.path.join(out, "rl", tag)
  os.makedirs(work, exist_ok=True)
  with MetricsWriter(work, tensorboard=False) as writer:
    ctx = dataclasses.replace(env.ctx, config=c, workdir=work, writer=writer, summary={})
    return run_rl_stage(ctx, c.rl, env.start, env.start)
