"""The shared frame of the real-model studies: SmolLM2-135M-Instruct on a verifiable task,
loaded once per process, sampled once per seed, judged exactly by the task's checker.

    env = load_env(FULL_SIZES, workdir)         # model, tokenizer, prompt splits, judge
    pool = env.pool(seed, cache_dir)            # K samples per training prompt from the start
    pairs = frame.examples_from_pool("pairwise", pool)      # (best, worst) per prompt
    policy, _ = env.train(env.start, "dpo", {"beta": 0.1}, pairs, steps=8, batch_size=4,
                          lr=1e-5, seed=seed)
    row = env.judge(policy, "test")             # verified accuracy, win rate vs start, KL, ...

The task is ``prefjax.train.recipes.TASK`` (reasoning-gym chain_sum, two one-digit terms,
one solved example, the answer on a final ``Answer: X`` line). Prompts: the task's training
prompts split into ``train`` (what a method learns from) and ``val`` (what its
hyper-parameters are chosen on), and the task's held-out prompts (``test``, judged once per
chosen setting). The start model's greedy answers on ``val`` and ``test`` are computed once
and reused for every policy judged against it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from prefjax import sharding
from prefjax.data import layout as layout_lib
from prefjax.data import pipeline
from prefjax.errors import DataError
from prefjax.eval import judge as judge_lib
from prefjax.rl import reward_sources as rw
from prefjax.rl.rollout import RolloutConfig, check_prompts, fixed_width, sample_view
from prefjax.studies.align_grid import Grid
from prefjax.train import model_source
from prefjax.train.data_source import DataSource
from prefjax.train.objective import make_objective
from prefjax.train.recipes import real_rl_config
from prefjax.train.stages import RunContext


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How big a study's shared pieces are (one value for --quick, one for full size)."""
  n_train: int = 96            # training prompts a method learns from
  n_val: int = 24              # training prompts held back to choose hyper-parameters
  n_test: int = 80             # the task's held-out prompts (the reported numbers)
  k: int = 4                   # samples per training prompt from the start model
  temperature: float = 1.0     # of those samples
  max_new_tokens: int = 16     # samples and greedy judging ("Answer: X" is ~5 tokens)
  max_len: int = 192
  batch_rows: int = 64         # rows per sampling / judging call


# Every study uses these, so that the start model's samples (cached per seed under
# --samples_dir) are drawn once and shared by all studies of one size.
FULL_SIZES = Sizes(n_train=96, n_val=32, n_test=64, k=4, temperature=0.7, max_new_tokens=16,
                   batch_rows=32)
QUICK_SIZES = Sizes(n_train=32, n_val=16, n_test=8, k=4, temperature=0.7, max_new_tokens=12,
                    batch_rows=16)


# ----------------------------------------------------------------------------- samples
@dataclasses.dataclass
class Pool:
  """K samples of each training prompt with the verifier's score: ``responses[i][k]``,
  ``correct [N, K]``, ``tokens [N, K]`` (completion length)."""
  items: list
  responses: list
  correct: np.ndarray
  tokens: np.ndarray

  def to_json(self) -> dict:
    return {"ids": [x.id for x in self.items], "responses": self.responses,
            "correct": self.correct.tolist(), "tokens": self.tokens.tolist()}

  @classmethod
  def from_json(cls, d: dict, items_by_id: dict) -> "Pool":
    return cls([items_by_id[i] for i in d["ids"]], d["responses"],
               np.asarray(d["correct"], np.float64), np.asarray(d["tokens"], np.float64))

  def subset(self, n: int) -> "Pool":
    return Pool(self.items[:n], self.responses[:n], self.correct[:n], self.tokens[:n])


def fill_batch(examples: Sequence[dict], batch_size: int) -> list[dict]:
  """``examples`` repeated up to one batch when there are fewer (a tiny set still trains)."""
  out = list(examples)
  while out and len(out) < batch_size:
    out += out[:batch_size - len(out)]
  return out


def noisy_scores(scores: np.ndarray, p: float, seed: int) -> np.ndarray:
  """``scores [N, K]`` with each prompt's preference reversed (scores negated) with
  probability ``p`` (seeded): label noise on the verifier's preferences."""
  flip = np.random.default_rng([seed, 17]).random(len(scores)) < p
  return np.where(flip[:, None], -scores, scores)


# ----------------------------------------------------------------------------- the env
@dataclasses.dataclass
class Env:
  """Everything a study needs, built once per process by ``load_env``."""
  ctx: RunContext
  start: dict                  # the instruct model's params
  sizes: Sizes
  train_items: list
  val_items: list
  test_items: list
  grid: Grid                   # compiled train steps shared by every run
  _sides: dict = dataclasses.field(default_factory=dict)

  @property
  def tokenizer(self):
    return self.ctx.tokenizer

  @property
  def taskset(self):
    return self.ctx.data.taskset

  def items(self, split: str) -> list:
    return {"train": self.train_items, "val": self.val_items, "test": self.test_items}[split]

  # ------------------------------------------------------------------ sampling
  def _rollout_cfg(self, temperature: float, items) -> tuple[RolloutConfig, list]:
    s, tok = self.sizes, self.tokenizer
    cfg = RolloutConfig.for_tokenizer(tok, max_len=s.max_len, max_new_tokens=s.max_new_tokens,
                                      temperature=temperature, missing_eos="none")
    ids = [tok.encode_prompt(x.prompt) for x in items]
    check_prompts(ids, cfg)
    return fixed_width(ids, cfg), ids

  def sample(self, params, items: Sequence, k: int, *, seed: int,
             temperature: float | None = None, desc: str | None = None) -> Pool:
    """``k`` samples of each of ``items`` from ``params``, scored by the verifier."""
    temp = self.sizes.temperature if temperature is None else temperature
    rows = [x for x in items for _ in range(k)]
    cfg, ids = self._rollout_cfg(temp, rows)
    texts, correct, tokens = [], [], []
    n = self.sizes.batch_rows
    for b in tqdm(range(0, len(rows), n), desc=desc, disable=desc is None, leave=False):
      view = sample_view((self.ctx.graphdef, params), rows[b:b + n], ids[b:b + n],
                         rng=jax.random.fold_in(jax.random.key(seed), b), cfg=cfg,
                         tokenizer=self.tokenizer)
      texts += list(view.completions)
      correct += [s.correct for s in rw.task_scores(view, self.taskset)]
      tokens += view.lengths.tolist()
    shape = (len(items), k)
    return Pool(list(items), [texts[i * k:(i + 1) * k] for i in range(len(items))],
                np.asarray(correct, np.float64).reshape(shape),
                np.asarray(tokens, np.float64).reshape(shape))

  def pool(self, seed: int, cache_dir: str | None = None, split: str = "train") -> Pool:
    """The start model's ``k`` samples of every ``split`` prompt (train or val; seeded);
    cached as ``cache_dir/samples[_val]_seed{seed}.json`` so that every study and re-run
    shares them."""
    offset, name = {"train": (1000, "samples"), "val": (2000, "samples_val")}[split]
    path = cache_dir and os.path.join(cache_dir, f"{name}_seed{seed}.json")
    items = self.items(split)
    by_id = {x.id: x for x in items}
    if path and os.path.exists(path):
      with open(path) as f:
        d = json.load(f)
      if d.get("sizes") == dataclasses.asdict(self.sizes):
        return Pool.from_json(d, by_id)
    pool = self.sample(self.start, items, self.sizes.k, seed=offset + seed,
                       desc=f"samples of the start model ({split}, seed {seed})")
    if path:
      os.makedirs(cache_dir, exist_ok=True)
      with open(path, "w") as f:
        json.dump(dict(pool.to_json(), sizes=dataclasses.asdict(self.sizes)), f)
    return pool

  # ------------------------------------------------------------------ training
  def train(self, params, loss: str, loss_kwargs: dict, examples: list, *, steps: int,
            batch_size: int, lr: float, seed: int, reference=None, kind: str | None = None,
            log_every: int | None = None, on_log=None, grid: Grid | None = None,
            lr_multipliers: dict | None = None):
    """``steps`` updates of a registered loss from ``params`` (reference: ``reference`` or
    ``params``) through the shared step; returns (params, final loss). ``on_log(state,
    step)`` sees the state every ``log_every`` steps. ``grid``: another model's compiled
    steps (a reward model's, ``reward_grid``; its rows are ``grid.max_len`` long);
    ``lr_multipliers``: per top-level parameter group (``Grid.train``)."""
    objective = make_objective(loss, dict(loss_kwargs), logps_chunk=128)
    kind = kind or objective.spec.kind
    grid = grid or self.grid
    if not examples:               # nothing separates the samples: no update, said so
      print(f"warning: no {kind} examples to train {loss!r} on; the policy stays at its "
            "start", flush=True)
      return params, float("nan")
    examples = fill_batch(examples, batch_size)
    # Preference rows share their prompt ([prompt | y_1 .. y_K], config.data.layout):
    # the prompt is ~120 tokens and an answer ~6, so this is most of the saving.
    encode = self.ctx.data.encoder(kind, max_len=grid.max_len,
                                   batch_size=None if kind == "sft" else batch_size,
                                   row_len=grid.max_len)
    batches = None
    if isinstance(encode, layout_lib.RowsEncoder):
      examples = pipeline.filter_examples(examples, encode, source=f"{loss} examples")[0]
      batches = layout_lib.plan_batches(examples, encode, seed=seed, num_steps=steps)
    return grid.train(params, objective, examples, encode, steps=steps,
                      batch_size=batch_size, lr=lr,
                      ref_params=params if reference is None else reference, seed=seed,
                      batches=batches, log_every=log_every, on_log=on_log,
                      lr_multipliers=lr_multipliers)

  # ------------------------------------------------------------------ judging
  def _settings(self) -> judge_lib.JudgeSettings:
    s = self.sizes
    return judge_lib.JudgeSettings(n_samples=1, max_new_tokens=s.max_new_tokens,
                                   temperature=0.0, max_len=s.max_len,
                                   batch_size=s.batch_rows, logps_chunk=128)

  def side(self, params, split: str, key=None) -> judge_lib.Side:
    """Greedy answers of ``params`` on ``split``; with ``key``, computed once and kept."""
    if key is not None and (key, split) in self._sides:
      return self._sides[(key, split)]
    side = judge_lib.judge_side((self.ctx.graphdef, params), self.tokenizer, self.items(split),
                                source=rw.make_source("verifier", rw.SourceEnv(ctx=self.ctx)),
                                taskset=self.taskset, settings=self._settings())
    if key is not None:
      self._sides[(key, split)] = side
    return side

  def judge(self, policy, split: str = "test", *, reference=None, reference_key="start"):
    """Held-out greedy judge of ``policy`` against ``reference`` (default: the start model):
    verified accuracy of both, win rate, KL, length, format rate (flat dict)."""
    ref = self.start if reference is None else reference
    metrics, _ = judge_lib.judge(
        (self.ctx.graphdef, policy), (self.ctx.graphdef, ref), self.tokenizer,
        self.items(split), source=rw.make_source("verifier", rw.SourceEnv(ctx=self.ctx)),
        taskset=self.taskset, settings=self._settings(),
        reference_side=self.side(ref, split, key=reference_key))
    keys = ("verified_accuracy/policy", "verified_accuracy/reference",
            "win_rate_vs_reference", "kl_to_reference", "length/policy", "length/reference",
            "format_rate/policy")
    return {k: float(metrics[k]) for k in keys}

  def accuracy(self, params, split: str = "val") -> float:
    """Greedy verified accuracy of ``params`` on ``split`` (for choosing hyper-parameters)."""
    side = self.side(params, split)
    return float(np.mean([x.correct for v in side.views for x in v.cache["scores"]]))


def reward_grid(env: Env, model, with_backbone, *, max_len: int | None = None):
  """(graphdef, params, Grid) of a reward model (``model``: a sequence or token reward
  head on the language model) whose backbone is the start model's
  (``with_backbone(params, backbone)``), trained through the shared step."""
  from flax import nnx
  graphdef, state = nnx.split(model)
  param_sh = sharding.param_shardings(model, env.ctx.mesh)
  params = jax.device_put(with_backbone(nnx.to_pure_dict(state), env.start), param_sh)
  return graphdef, params, Grid(tok=env.tokenizer, graphdef=graphdef, init_params=params,
                                param_sh=param_sh, batch_sh=env.grid.batch_sh,
                                max_len=max_len or env.sizes.max_len)


def rl_config(sizes: Sizes):
  """The real-model RL recipe's config (``prefjax.train.recipes.real_rl_config``) at
  ``sizes``: the task, the model, short rows."""
  c = real_rl_config(stages=())
  c.data.max_len = sizes.max_len
  c.tasks.n_train = sizes.n_train + sizes.n_val
  c.tasks.n_eval = sizes.n_test
  c.eval.n_prompts, c.eval.max_new_tokens = sizes.n_test, sizes.max_new_tokens
  c.data.layout, c.data.row_len, c.data.bucket = "prefix", sizes.max_len, False
  c.data.group_size = sizes.k // 2          # multi-sample losses: top half vs bottom half
  c.progress, c.tensorboard = False, False
  return c


def load_env(sizes: Sizes, workdir: str) -> Env:
  """Loads the model and the task once; ``workdir`` holds what sub-runs write (RL stages)."""
  from prefjax.train.metrics_writer import MetricsWriter
  c = rl_config(sizes)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  model = model_source.load(c, mesh)
  os.makedirs(workdir, exist_ok=True)
  data = DataSource(c, model.tokenizer)
  ctx = RunContext(config=c, graphdef=model.graphdef, model_cfg=model.cfg,
                   tokenizer=model.tokenizer, mesh=mesh, param_shardings=model.param_shardings,
                   workdir=workdir, writer=MetricsWriter(workdir, tensorboard=False),
                   data=data)
  train = data.prompts("train", sizes.n_train + sizes.n_val)
  if len(train) < sizes.n_train + sizes.n_val:
    raise DataError(f"the task has {len(train)} training prompts; the study asks for "
                    f"{sizes.n_train} + {sizes.n_val} (train + validation)")
  grid = Grid(tok=model.tokenizer, graphdef=model.graphdef, init_params=model.params,
              param_sh=model.param_shardings, batch_sh=sharding.batch_sharding(mesh),
              max_len=sizes.max_len)
  return Env(ctx=ctx, start=model.params, sizes=sizes, train_items=train[:sizes.n_train],
             val_items=train[sizes.n_train:], test_items=data.prompts("eval", sizes.n_test),
             grid=grid)


__all__ = ["FULL_SIZES", "QUICK_SIZES", "Sizes", "Pool", "Env", "load_env", "noisy_scores", "rl_config"]
