"""Stages of a run: what each trains, from where, against which reference, on what data.

A stage is a name in ``config.stages`` with a function in the ``STAGES`` registry:

  sft     next-token loss on demonstrations               start: the model source
  dpo     ``config.dpo.loss``: any registered loss of any  start: the SFT output (or the
          kind (pairwise, multi, unpaired, combo)          source); reference = that start
  reward  Bradley-Terry reward model: the LM backbone      start: the SFT output's backbone
          plus a scalar head                               (``prefjax.rewards.training``)
  eval    evaluators (the testbed oracle judge, or held-out preference metrics on files)

Every training stage goes through ``train_stage``: examples -> filtered rows -> batches ->
THE step (``prefjax.train.step``) -> the loop (resume, log, checkpoint). A new stage (PPO, a
token reward model) is a registered function of ``(ctx, params) -> params``.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from prefjax import hostmem, losses, sharding
from prefjax.data import layout as layout_lib
from prefjax.data import pipeline
from prefjax.errors import ConfigError
from prefjax.models import lora as lora_lib
from prefjax.models import quant
from prefjax.train import ref_cache
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.loop import run_stage
from prefjax.train.metrics_writer import MetricsWriter
from prefjax.train.model_source import check_gguf_quantized
from prefjax.train.objective import Objective, make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step


@dataclasses.dataclass
class RunContext:
  """What every stage may read: the config, the model, the data source and the outputs."""
  config: ml_collections.ConfigDict
  graphdef: Any
  model_cfg: Any
  tokenizer: Any
  mesh: Any
  param_shardings: Any
  workdir: str
  writer: MetricsWriter
  data: Any                      # prefjax.train.data_source.DataSource
  summary: dict = dataclasses.field(default_factory=dict)
  reward: tuple | None = None    # (graphdef, params) of a reward model trained in this run
  monitor: Any = None            # the held-out monitor of the preference stage (eval reuses it)


@dataclasses.dataclass(frozen=True)
class StageDef:
  """A registered stage: ``run(ctx, models)`` updates ``models`` in place; ``check(config)``
  raises ConfigError before anything is written (unknown loss, hyper-parameter, ...);
  ``section`` names the config section it reads and ``defaults()`` builds that section
  (``base_config`` is assembled from them)."""
  name: str
  run: Callable
  check: Callable
  section: str | None = None
  defaults: Callable[[], ml_collections.ConfigDict] | None = None

  def __call__(self, ctx, models):
    return self.run(ctx, models)


STAGES: dict[str, StageDef] = {}


def register_stage(name: str, check: Callable | None = None, *, section: str | None = None,
                   defaults: Callable[[], ml_collections.ConfigDict] | None = None):
  """Registers ``fn(ctx, models)`` as stage ``name``; ``section`` / ``defaults``: the config
  section it owns and a function returning its default values."""
  def deco(fn):
    if name in STAGES:
      raise ValueError(f"stage {name!r} is already registered")
    STAGES[name] = StageDef(name, fn, check or (lambda c: None), section, defaults)
    return fn
  return deco


def section_defaults() -> dict[str, ml_collections.ConfigDict]:
  """{section: its defaults} over the registered stages (a shared section once)."""
  out = {}
  for st in STAGES.values():
    if st.section and st.defaults is not None and st.section not in out:
      out[st.section] = st.defaults()
  return out


def names() -> tuple[str, ...]:
  return tuple(STAGES)


# ----------------------------------------------------------------------------- objectives
def logps_chunk(c) -> int | None:
  """``config.model.logps_chunk``: tokens per chunk of the vocabulary log-softmax (0: off)."""
  n = c.model.logps_chunk if c is not None else 0
  return int(n) if n else None


def preference_objective(section, c=None) -> Objective:
  """A stage's loss: a registered name, or ``"combo"`` of ``section.loss_weights``.

  A combination's parts each take the keys of ``section.loss_kwargs`` they accept.
  """
  kwargs = section.loss_kwargs.to_dict()
  if section.loss != "combo":
    return make_objective(section.loss, kwargs, logps_chunk=logps_chunk(c))
  weights = dict(section.loss_weights.to_dict())
  try:
    hp = {n: {k: v for k, v in kwargs.items()
              if k in inspect.signature(losses.get_spec(n).fn).parameters} for n in weights}
    spec = losses.make_combined_spec(weights, hp)
  except (ValueError, KeyError) as e:
    raise ConfigError(f"config.dpo.loss_weights: {e}") from None
  return Objective(spec=spec, logps_chunk=logps_chunk(c))


# ----------------------------------------------------------------------------- LoRA
@dataclasses.dataclass
class Lora:
  """Adapters on a frozen base: the base is also the reference (one copy of it).

  ``quant_bits`` 8 / 4 (``config.lora.quantize`` "int8" / "int4"): the base is quantized in
  blocks of ``quant_block`` input values (prefjax/models/quant.py) when the stage starts, and
  the policy (base + adapters) and the reference (adapters off) both run on that quantized
  base, dequantized one layer at a time inside the forward; 0 keeps the float base.
  ``config.lora.quantize="gguf"``: the model source already holds a GGUF file's own quantized
  projections (prefjax/models/gguf_quant.py), used as they are.
  """
  cfg: lora_lib.LoraConfig
  quant_bits: int = 0
  quant_block: int = quant.DEFAULT_BLOCK

  @classmethod
  def from_config(cls, c):
    fmt = c.lora.get("quantize", "") or ""
    if fmt and fmt not in (*quant.FORMATS, "gguf"):
      raise ConfigError(f"lora.quantize: unknown format {fmt!r}; valid: "
                        f"{', '.join(quant.FORMATS)}, gguf or \"\" (float base)")
    if fmt == "gguf":
      check_gguf_quantized(c)
    if c.lora.rank <= 0:
      if fmt:
        raise ConfigError(f"lora.quantize={fmt!r} quantizes the frozen base of LoRA training "
                          "and needs lora.rank > 0")
      return None
    block = int(c.lora.get("quant_block", quant.DEFAULT_BLOCK))
    if block <= 0 or block % 2:
      raise ConfigError(f"lora.quant_block must be a positive even number, got {block}")
    return cls(lora_lib.LoraConfig(rank=c.lora.rank, alpha=c.lora.alpha,
                                   targets=tuple(c.lora.targets)),
               quant_bits=quant.FORMATS.get(fmt, 0), quant_block=block)

  def base(self, params, shardings=None):
    """The frozen base the adapters train on: ``params``, quantized when configured (and
    placed by ``quant.quantized_shardings`` of the float ``shardings``, when given)."""
    if not self.quant_bits:
      return params
    q = quant.quantize_params(params, bits=self.quant_bits, block=self.quant_block,
                              targets=self.cfg.targets)
    if shardings is None:
      return q
    return jax.device_put(q, quant.quantized_shardings(q, shardings))

  def init(self, base, seed):
    return lora_lib.init_lora(base, self.cfg, jax.random.PRNGKey(seed))

  def compose(self, adapters, base):
    return lora_lib.apply_lora(base, adapters, self.cfg.scale)

  def merge(self, base, adapters):
    return lora_lib.merge_lora(base, adapters, self.cfg.scale)


# ----------------------------------------------------------------------------- training
def _step_kwargs(fn, **maybe):
  """The keywords ``fn`` accepts among ``maybe`` (options other modules add over time)."""
  params = inspect.signature(fn).parameters
  return {k: v for k, v in maybe.items() if k in params and v is not None}


def train_stage(ctx: RunContext, name: str, section, objective: Objective, *, params,
                examples, encode, reference=None, lora: Lora | None = None,
                graphdef=None, param_shardings=None, on_log=None):
  """Optimises ``objective`` from ``params`` through the shared step; returns the params.

  ``reference`` (pure params) feeds losses that need one (or, with
  ``config.reference_cache``, their cached log-probs; the step then gets no reference). With
  ``lora``, ``params`` and the returned value are the adapters and ``reference`` is the
  frozen base (also the policy's). ``params=None`` starts from a copy of ``reference``, or,
  with ``config.reference_cache.release`` and cached log-probs, from the reference's own
  buffers (donated to the step: ``reference`` must not be read afterwards; the summary says
  ``reference_cache/<name>/released``).
  ``graphdef`` / ``param_shardings`` default to the run's language model.
  """
  c = ctx.config
  graphdef = graphdef if graphdef is not None else ctx.graphdef
  param_sh = param_shardings if param_shardings is not None else ctx.param_shardings
  n_accum = accum(section)
  examples, skipped = filter_examples(examples, encode, name)
  if skipped:
    ctx.summary[f"data/{name}/skipped"] = skipped
  ctx.summary[f"data/{name}/examples"] = len(examples)
  tx, schedule = make_optimizer(section.lr, section.steps, warmup_steps=section.warmup_steps,
                                weight_decay=section.weight_decay, b1=section.b1, b2=section.b2,
                                clip_norm=section.clip_norm,
                                final_lr_fraction=section.final_lr_fraction,
                                lr_multipliers=dict(section.lr_multipliers or {}),
                                opt_state_dtype=section.opt_state_dtype or None)
  if isinstance(encode, layout_lib.RowsEncoder):     # prefix-shared / packed rows
    batches = layout_lib.plan_batches(examples, encode, seed=c.seed, num_steps=section.steps,
                                      shuffle=c.data.shuffle)
  else:
    batches = pipeline.batched(examples, encode, section.batch_size * n_accum, seed=c.seed,
                               num_steps=section.steps, shuffle=c.data.shuffle)
  needs_ref = objective.needs_reference or lora is not None
  batches, cached = cached_reference(ctx, name, objective, reference, batches, section.steps,
                                     graphdef)
  if params is None:       # start from the reference: its own buffers once it is released
    release = cached and lora is None and ctx.config.reference_cache.get("release", False)
    params = reference if release else copy_params(reference)
    if release:
      ctx.summary[f"reference_cache/{name}/released"] = True
  ref_params = reference if needs_ref and (lora is not None or not cached) else None
  trainable_sh = param_sh
  compose = None
  if lora is not None:
    compose = lora.compose
    rep = jax.sharding.NamedSharding(ctx.mesh, jax.sharding.PartitionSpec())
    trainable_sh = jax.tree.map(lambda _: rep, params)
  state, state_sh = init_state(params, tx, trainable_sh)
  batch_sh = sharding.batch_sharding(ctx.mesh)
  step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=batch_sh,
                         ref_shardings=(quant.quantized_shardings(ref_params, param_sh)
                                        if ref_params is not None else None),
                         compose=compose,
                         **_step_kwargs(make_train_step, accum_steps=n_accum if n_accum > 1 else None,
                                        skip_nonfinite=c.nonfinite == "skip"))
  ckpt = Checkpointer(os.path.join(ctx.workdir, "checkpoints", name), every=c.checkpoint.every,
                      keep=c.checkpoint.keep,
                      async_checkpointing=c.checkpoint.async_save)
  state = run_stage(name, train_step=step, state=state, state_shardings=state_sh,
                    ref_params=ref_params, batches=batches,
                    batch_sharding=batch_sh, num_steps=section.steps, checkpointer=ckpt,
                    writer=ctx.writer, log_every=c.log_every, on_log=on_log,
                    progress=c.progress, nonfinite=c.nonfinite,
                    max_skips_in_a_row=c.max_skips_in_a_row)
  ckpt.close()
  return state["params"]


def cached_reference(ctx: RunContext, name: str, objective: Objective, reference, batches,
                     num_steps: int, graphdef):
  """(batches, cached): with ``config.reference_cache.enabled`` and a loss that needs a
  reference, the batches carry its ``ref_*`` log-probs from the cache (ref_cache.py) and the
  step never runs the reference; the summary records ``reference_cache/<stage>`` (hit /
  miss / recomputed), its key and the seconds it took to load or compute. Single-process runs only (the key hashes the weights on
  this host)."""
  rc = ctx.config.get("reference_cache")
  if rc is None or not rc.enabled or not objective.needs_reference or reference is None:
    return batches, False
  if jax.process_count() > 1:
    ctx.summary[f"reference_cache/{name}"] = "off (multi-process run)"
    return batches, False
  c = ctx.config
  extra = dict(ref_cache.tokenizer_identity(ctx.tokenizer), kind=objective.spec.kind,
               logps_chunk=objective.logps_chunk, max_len=c.data.max_len,
               layout=c.data.layout, truncate=c.data.get("truncate"),
               completion=c.data.get("completion"), model=repr(ctx.model_cfg),
               dtype=c.model.dtype, backend=jax.default_backend())
  res = ref_cache.prepare(graphdef, objective, reference, batches, num_steps,
                          batch_sharding=sharding.batch_sharding(ctx.mesh), directory=rc.dir,
                          extra=extra)
  hostmem.trim()          # the reference pass's host-side buffers
  ctx.summary[f"reference_cache/{name}"] = res.status
  ctx.summary[f"reference_cache/{name}/key"] = res.key
  ctx.summary[f"reference_cache/{name}/seconds"] = round(res.seconds, 3)
  return res.batches, True


def accum(section) -> int:
  """Micro-batches per optimizer step (``section.accum_steps``, default 1)."""
  return int(section.accum_steps or 1)


def filter_examples(examples, encode, stage: str):
  """(usable examples, {reason: count}); raises DataError when none is usable."""
  kept, counts, _ = pipeline.filter_examples(examples, encode, source=f"the {stage} data")
  return kept, dict(counts)


def copy_params(params):
  """Fresh buffers (the step donates the policy's)."""
  return jax.tree.map(jnp.copy, params)
