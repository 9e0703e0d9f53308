"""Shared machinery for alignment study grids: one model shape, many short runs.

A study trains many small policies (methods x starting points x data sizes x tasks). Every
run goes through the shared train step (``prefjax.train.step``); what this module adds is
re-use: one compiled step per (objective, optimiser) for the whole grid, starting models
trained once and passed around as param dicts, and one evaluation path (the testbed judge).
No checkpoints are written: each run is seconds long and recomputed from its seed.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from prefjax import sharding
from prefjax.data import pipeline
from prefjax.eval import testbed_eval
from prefjax.models import Transformer, make_config
from prefjax.train.data_source import default_tokenizer
from prefjax.train.loop import LastValues, NoCheckpoints, run_stage
from prefjax.train.objective import Objective, make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step
from flax import nnx


@dataclasses.dataclass
class Grid:
  """A model shape plus caches of compiled steps. Build with ``Grid.make``."""
  tok: object                 # the testbed tokenizer
  graphdef: nnx.GraphDef
  init_params: dict
  param_sh: dict
  batch_sh: object
  max_len: int
  seed: int = 0
  _steps: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def make(cls, *, n_layers=1, dim=64, max_len=32, seed=0, preset="testbed-tiny"):
    tok = default_tokenizer("testbed")
    mcfg = make_config(preset, vocab_size=tok.vocab_size,
                       overrides={"n_layers": n_layers, "dim": dim})
    model = Transformer(mcfg, nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    mesh = sharding.make_mesh(-1, 1, 1)
    param_sh = sharding.param_shardings(model, mesh)
    # Placed like trained params, so the base model hits the same compiled steps.
    init = jax.device_put(nnx.to_pure_dict(state), param_sh)
    return cls(tok=tok, graphdef=graphdef, init_params=init, param_sh=param_sh,
               batch_sh=sharding.batch_sharding(mesh), max_len=max_len, seed=seed)

  def _step(self, objective: Objective, lr: float, steps: int, warmup: int,
            lr_multipliers: tuple = ()):
    key = (objective, lr, steps, warmup, lr_multipliers)
    if key not in self._steps:
      tx, schedule = make_optimizer(lr, steps, warmup_steps=warmup,
                                    lr_multipliers=dict(lr_multipliers))
      _, state_sh = init_state(self.init_params, tx, self.param_sh)
      step = make_train_step(self.graphdef, objective, tx, schedule, state_shardings=state_sh,
                             batch_sharding=self.batch_sh, ref_shardings=self.param_sh,
                             donate=False)
      self._steps[key] = (tx, step)
    return self._steps[key]

  def train(self, params, objective: Objective, examples, encode, *, steps: int,
            batch_size: int, lr: float, warmup: int = 0, ref_params=None,
            seed: int | None = None, batches=None, log_every: int | None = None,
            on_log=None, lr_multipliers: dict | None = None):
    """``steps`` updates of ``objective`` from ``params``; returns (params, last loss).
    ``seed`` orders the batches (default: the grid's seed); ``batches``: a random-access
    dataset of at least ``steps`` batches made by the caller (e.g. prefix-shared rows),
    used instead of batching ``examples`` with ``encode``; ``on_log(state, step)`` runs every
    ``log_every`` steps (e.g. to keep intermediate policies; steps never donate params);
    ``lr_multipliers`` scales the lr of top-level parameter groups (e.g. ``{"head": 100.0}``
    for a reward head that starts at zero)."""
    tx, step = self._step(objective, lr, steps, warmup,
                          tuple(sorted((lr_multipliers or {}).items())))
    state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, self.param_sh)
    if batches is None:
      batches = pipeline.batched(examples, encode, batch_size,
                                 seed=self.seed if seed is None else seed, num_steps=steps)
    last = LastValues()
    # The shared loop, without checkpoints or a metrics file: one line at the end, and a
    # non-finite final loss stops the grid (NonFiniteLossError).
    state = run_stage(objective.spec.name, train_step=step, state=state,
                      state_shardings=state_sh,
                      ref_params=ref_params if objective.needs_reference else None,
                      batches=batches, batch_sharding=self.batch_sh, num_steps=steps,
                      checkpointer=NoCheckpoints(), writer=last,
                      log_every=log_every or steps, on_log=on_log, progress=False,
                      handle_signals=False)
    return state["params"], last.values["loss"]

  def sft(self, params, examples, *, steps, batch_size, lr, warmup=0):
    enc = pipeline.encode_sft(self.tok, self.max_len)
    return self.train(params, make_objective("sft"), examples, enc, steps=steps,
                      batch_size=batch_size, lr=lr, warmup=warmup)[0]

  def evaluate(self, policy, reference, eval_prompts, *, n_samples=1, max_new_tokens=16,
               seed=1234):
    """The testbed judge: win rate vs ``reference``, oracle rewards, KL (see testbed_eval)."""
    res, details = testbed_eval.evaluate_policy(
        self.graphdef, policy, reference, self.tok, eval_prompts, n_samples=n_samples,
        max_new_tokens=max_new_tokens, max_len=self.max_len, seed=seed)
    return res, details

  def samples(self, params, prompts, *, n_samples, max_new_tokens=4, seed=7):
    txt, _, _ = testbed_eval.sample_responses(self.graphdef, params, self.tok, prompts,
                                              n_samples=n_samples,
                                              max_new_tokens=max_new_tokens, seed=seed)
    return [txt[i * n_samples:(i + 1) * n_samples] for i in range(len(prompts))]
