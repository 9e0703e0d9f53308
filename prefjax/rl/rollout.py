"""Rollout: prompts -> an ``Experience`` (sampled rows, old/ref log-probs, values, rewards).

    exp, metrics, view = rollout(policy, ref, prompts, rng=..., cfg=RolloutConfig(...))

1. ``sample`` (jit, KV cache): prompts left-padded to a fixed width are prefilled once, then
   tokens are drawn one at a time (``prefjax.sampling.sampler.sample_token``: temperature,
   top-p) until every row emitted the end-of-turn token or ``max_new_tokens`` were drawn;
   it also returns log softmax(logits)[token] of each drawn token as the sampler saw it.
2. The rows are packed by ``prefjax.data.collate.pack`` (the one place rows are built):
   prompt + completion (end token included when emitted), ``loss_mask`` = completion actions.
3. ``score`` (jit): the train-side forward of the policy (per-token log-probs and values)
   and of the reference (log-probs), outside any gradient. The largest |sampler - train|
   log-prob difference is returned as ``rollout/logprob_mismatch_max`` (cache vs full
   forward numerics; at temperature 1 and top_p 1 it should be ~1e-6 in float32).
4. Rewards [B, T] from the configured sources (``prefjax.rl.reward_sources.compute_rewards``).

The rollout is separate from the train step (they may later run on different meshes): it
takes pure params and returns host/device arrays. It is deterministic given ``rng``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from prefjax.data.collate import pack, stack
from prefjax.errors import ConfigError, DataError
from prefjax.models.logprobs import model_token_logps
from prefjax.rl import shared_rows
from prefjax.rl.reward_sources import RolloutView, compute_rewards
from prefjax.sampling.sampler import left_pad, prompt_copies, sample_batch, shared_prefix_len


@struct.dataclass
class Experience:
  """One rollout. Rows [B, T] on the packed-row action grid; ``completion_mask`` = loss_mask."""
  input_ids: jax.Array
  target_ids: jax.Array
  positions: jax.Array
  segment_ids: jax.Array
  completion_mask: jax.Array      # [B, T] float32, 1 on completion actions
  old_token_logps: jax.Array      # [B, T] policy log-probs at rollout (train-side forward)
  ref_token_logps: jax.Array      # [B, T] reference log-probs
  values: jax.Array               # [B, T] critic values at rollout (0 without a critic)
  rewards: jax.Array              # [B, T] rewards of the sources (before any KL penalty)
  valid: jax.Array                # [B] 0 for rows masked by the missing-end-token policy
  eos_emitted: jax.Array          # [B] bool

  def rows(self) -> dict:
    return {"input_ids": self.input_ids, "target_ids": self.target_ids,
            "positions": self.positions, "segment_ids": self.segment_ids,
            "loss_mask": self.completion_mask}


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  max_len: int                    # the longest row: prompt + completion
  max_new_tokens: int
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  eos_id: int = 2
  stop_ids: tuple = ()            # generation stops at any of these or eos_id
  pad_id: int = 0
  missing_eos: str = "penalty"
  missing_eos_penalty: float = -1.0
  logps_chunk: int | None = None  # train-side log-probs in vocabulary chunks (completion only)
  old_logps: str = "trainer"      # the behaviour policy's log-probs: "trainer" (one full
                                  # forward, mismatch logged) or "sampler" (the decode's own)
  bucket: int = 16                # prompt widths and row lengths are rounded up to this
  prompt_len: int = 0             # > 0: every batch left-pads prompts to this width and rows
                                  # are prompt_len + max_new_tokens long (one compiled shape)
  share_prefix: bool = True       # prefill the prompts' shared prefix and each run of
                                  # identical prompts once (sampler only)
  prefix_len: int = 0             # > 0: the shared prefix of every batch (set by fixed_width)

  @classmethod
  def for_tokenizer(cls, tokenizer, **kw) -> "RolloutConfig":
    """Settings ``kw`` with the tokenizer's EOS, stop ids (end of turn, EOS) and padding."""
    return cls(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
               stop_ids=tuple(getattr(tokenizer, "stop_ids", ()) or ()), **kw)

  @property
  def stops(self) -> tuple:
    return tuple(sorted(set(self.stop_ids) | ({self.eos_id} if self.eos_id is not None else set())))

  @property
  def prompt_width(self) -> int:
    """The longest prompt that fits: prompt + max_new_tokens - 1 inputs <= max_len."""
    return self.max_len + 1 - self.max_new_tokens


def sample(graphdef, params, tokens_bp, segment_bp, rng, *, max_new_tokens, temperature, top_p,
           eos_id, pad_id, top_k=0, stop_ids=(), prefix_len=0, copies=1):
  """(tokens [B, N], sampler log-probs [B, N], stopped [B]) from
  ``prefjax.sampling.sampler.sample_batch``, stopping at ``eos_id`` or any of ``stop_ids``;
  pad / 0 after the stop token."""
  stops = tuple(sorted(set(stop_ids) | ({eos_id} if eos_id is not None else set())))
  return sample_batch(graphdef, params, tokens_bp, segment_bp, rng,
                      max_new_tokens=max_new_tokens, temperature=float(temperature),
                      top_p=float(top_p), top_k=int(top_k), stop_ids=stops, pad_id=pad_id,
                      prefix_len=int(prefix_len), copies=int(copies))


@functools.partial(jax.jit, static_argnames=("graphdef", "ref_graphdef", "chunk_size",
                                             "policy"))
def score(graphdef, params, ref_graphdef, ref_params, rows, chunk_size=None, policy=True):
  """Train-side forward: policy log-probs, values [B, T] and reference log-probs [B, T].

  ``rows`` may carry group rows (``prefjax.rl.shared_rows``, each prompt once) beside its
  ``loss_mask`` [B, T]: the models run on those and their outputs land on the [B, T] grid.

  ``policy=False`` skips the policy's forward (log-probs and values read 0): the sampler's
  log-probs stand in for the trainer's (``RolloutConfig.old_logps="sampler"``).
  """
  m = rows["loss_mask"].astype(jnp.float32)
  grouped = shared_rows.is_grouped(rows)
  x = shared_rows.unit_view(rows) if grouped else rows
  xm = x["loss_mask"].astype(jnp.float32)
  lp = values = jnp.zeros(xm.shape, jnp.float32)
  if policy:
    model = nnx.merge(graphdef, params)
    if hasattr(model, "logps_and_values"):
      lp, values = model.logps_and_values(x, chunk_size=chunk_size)
    else:
      lp = model_token_logps(model, x["input_ids"], x["positions"], x["segment_ids"],
                             x["target_ids"], chunk_size=chunk_size, mask_bt=xm,
                             branch_ids_bt=x.get("branch_ids"))
  ref = nnx.merge(ref_graphdef, ref_params)
  ref_lp = model_token_logps(ref, x["input_ids"], x["positions"], x["segment_ids"],
                             x["target_ids"], chunk_size=chunk_size, mask_bt=xm,
                             branch_ids_bt=x.get("branch_ids"))
  if grouped:
    lp, values, ref_lp = (shared_rows.to_plain(y, rows["rows_gather"])
                          for y in (lp, values, ref_lp))
  return lp * m, values * m, jax.lax.stop_gradient(ref_lp) * m


def on_rows(samp_lp, prompts, completions, t: int) -> np.ndarray:
  """Sampler log-probs [B, N] moved onto the rows' action grid [B, T] (completion token j of
  row i is action len(prompt_i) - 1 + j)."""
  out = np.zeros((len(prompts), t), np.float32)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    out[i, len(p) - 1:len(p) - 1 + len(c)] = samp_lp[i, :len(c)]
  return out


def fixed_width(prompts: Sequence[Sequence[int]], cfg: RolloutConfig) -> RolloutConfig:
  """``cfg`` with ``prompt_len`` set to the longest of ``prompts`` (rounded up to a bucket,
  at most ``prompt_width``) and, with ``share_prefix``, ``prefix_len`` to the prefix they
  all share (``shared_prefix_len``): every batch of these prompts then compiles one shape."""
  width = min(cfg.prompt_width, _round_up(max(len(p) for p in prompts), cfg.bucket))
  prefix = shared_prefix_len(prompts, cfg.bucket) if cfg.share_prefix else 0
  return dataclasses.replace(cfg, prompt_len=width, prefix_len=prefix)


def _prefix_for(prompts: Sequence[Sequence[int]], cfg: RolloutConfig) -> int:
  """The shared prefix a batch is laid out with: ``cfg.prefix_len`` when the batch shares
  it (one compiled shape for a pool's batches), else the batch's own."""
  if not cfg.share_prefix:
    return 0
  common = shared_prefix_len(prompts, 1)
  if cfg.prefix_len and common >= cfg.prefix_len:
    return cfg.prefix_len
  return common // cfg.bucket * cfg.bucket


def check_prompts(prompts: Sequence[Sequence[int]], cfg: RolloutConfig) -> None:
  """Every prompt must leave room for max_new_tokens in a row of max_len; else one line."""
  if cfg.max_new_tokens < 1 or cfg.prompt_width < 1:
    raise ConfigError(f"config.rl.max_new_tokens={cfg.max_new_tokens} must be in "
                      f"[1, max_len={cfg.max_len}]")
  for i, ids in enumerate(prompts):
    if not len(ids):
      raise DataError(f"rollout prompt {i} is empty (it needs at least BOS)")
    if len(ids) > (cfg.prompt_len or cfg.prompt_width):
      raise DataError(f"rollout prompt {i} has {len(ids)} tokens; with max_new_tokens="
                      f"{cfg.max_new_tokens} a row of max_len={cfg.max_len} holds at most "
                      f"{cfg.prompt_width}")


def _round_up(n: int, k: int) -> int:
  return -(-n // k) * k


def _sample_completions(lm, prompts, rng, cfg: RolloutConfig):
  """(completions (token lists, the stop token kept when emitted), sampler log-probs [B, N],
  stopped [B]) for prompts left-padded to the batch's longest (rounded up to ``cfg.bucket``),
  their shared prefix and each run of identical prompts prefilled once."""
  lm_graphdef, lm_params = lm
  width = cfg.prompt_len or min(cfg.prompt_width,
                                _round_up(max(len(p) for p in prompts), cfg.bucket))
  prefix = _prefix_for(prompts, cfg)
  tokens, seg = left_pad(prompts, width, cfg.pad_id, prefix)
  kw = {}
  if cfg.top_k or len(cfg.stops) > 1:
    kw = dict(top_k=int(cfg.top_k), stop_ids=cfg.stops)
  out, samp_lp, eos = sample(lm_graphdef, lm_params, jnp.asarray(tokens), jnp.asarray(seg), rng,
                             max_new_tokens=cfg.max_new_tokens,
                             temperature=float(cfg.temperature), top_p=float(cfg.top_p),
                             eos_id=cfg.eos_id, pad_id=cfg.pad_id, prefix_len=prefix,
                             copies=prompt_copies(prompts) if cfg.share_prefix else 1, **kw)
  out, samp_lp, eos = np.asarray(out), np.asarray(samp_lp), np.asarray(eos)
  stops = set(cfg.stops)
  completions = []
  for row, e in zip(out.tolist(), eos):
    if e:
      j = next(i for i, t in enumerate(row) if t in stops)
      row = row[:j + 1]
    completions.append(row)
  return completions, samp_lp, eos


def _rows(prompts, completions, cfg: RolloutConfig) -> dict:
  """Packed rows (``prefjax.data.collate.pack``), cut to the longest rounded up to
  ``cfg.bucket`` so the train step sees few shapes and little padding."""
  rows = stack([pack(p, c, cfg.max_len, truncate="error", where=f"rollout row {i}")[0]
                for i, (p, c) in enumerate(zip(prompts, completions))])
  used = max(len(p) + len(c) - 1 for p, c in zip(prompts, completions))
  if cfg.prompt_len:
    used = cfg.prompt_len + cfg.max_new_tokens - 1
  t = min(cfg.max_len, _round_up(used, cfg.bucket))
  return {k: v[:, :t] if np.ndim(v) == 2 else v for k, v in rows.items()}


def _scored_rows(rows: dict, prompts, cfg: RolloutConfig) -> dict:
  """What ``score`` runs on: with ``share_prefix`` and runs of c > 1 copies of each prompt
  (groups), one group row per run (``shared_rows.group_rows``: each prompt computed once)
  plus the plain ``loss_mask``; else the plain rows."""
  c = prompt_copies(prompts) if cfg.share_prefix else 1
  if c < 2:
    return rows
  width = cfg.prompt_len or max(len(p) for p in prompts)
  out = shared_rows.group_rows(rows["input_ids"], rows["target_ids"], rows["loss_mask"], c,
                               max_len=shared_rows.max_row_len(width, c, cfg.max_new_tokens))
  out["loss_mask"] = rows["loss_mask"]
  return out


def _policy_lm(graphdef, params):
  """The Transformer that samples: ``params["lm"]`` of an ActorCritic, else the model."""
  model = nnx.merge(graphdef, params)
  if hasattr(model, "lm"):
    return nnx.split(model.lm)[0], params["lm"]
  return graphdef, params


def sample_view(lm, items, prompts: Sequence[Sequence[int]], *, rng, cfg: RolloutConfig,
                tokenizer) -> RolloutView:
  """Samples one completion per prompt from ``lm`` = (graphdef, params) of a Transformer:
  the rows and decoded text a reward source reads (no scoring); ``cache["sampler_logps"]``
  holds the sampler's log-probs of the drawn tokens on the rows' action grid [B, T]."""
  check_prompts(prompts, cfg)
  completions, samp_lp, eos = _sample_completions(lm, prompts, rng, cfg)
  rows = _rows(prompts, completions, cfg)
  view = RolloutView(batch=rows, prompts=[getattr(x, "text", x) for x in items],
                     completions=[tokenizer.decode(c) for c in completions], eos_emitted=eos,
                     tasks=[getattr(x, "task", None) for x in items], items=list(items))
  view.cache["sampler_logps"] = on_rows(np.asarray(samp_lp), prompts, completions,
                                        rows["loss_mask"].shape[1])
  return view


def rollout(policy, ref, prompts: Sequence[Sequence[int]], *, rng, cfg: RolloutConfig,
            tokenizer, reward_sources=(), items=None, prompt_texts=None, tasks=None):
  """Samples one completion per prompt and scores it.

  Returns:
    (Experience, metrics {rollout/*, reward/*}: floats, RolloutView: rows + decoded text).

  Args:
    policy: (graphdef, params) of the policy's train-side model (an ``ActorCritic`` or a
      Transformer); the Transformer that samples is ``params["lm"]`` of an ActorCritic.
    ref: (graphdef, params) of the reference Transformer.
    prompts: B prompt token lists (BOS included); repeat a prompt k times for groups.
    reward_sources: [(RewardSource, weight)].
    items: B ``PromptItem`` (text, task, what a verifier needs); or ``prompt_texts`` /
      ``tasks`` (strings) for text-level sources.
  """
  (graphdef, params), (ref_graphdef, ref_params) = policy, ref
  check_prompts(prompts, cfg)
  completions, samp_lp, eos = _sample_completions(_policy_lm(graphdef, params), prompts, rng,
                                                  cfg)
  rows = _rows(prompts, completions, cfg)
  recompute = cfg.old_logps == "trainer" or "value_head" in params
  lp, values, ref_lp = score(graphdef, params, ref_graphdef, ref_params,
                             _scored_rows(rows, prompts, cfg), chunk_size=cfg.logps_chunk,
                             policy=recompute)
  samp_rows = on_rows(samp_lp, prompts, completions, rows["loss_mask"].shape[1])
  mask_np = np.asarray(rows["loss_mask"], np.float32) > 0
  if recompute:
    # Sampler vs trainer log-probs of the same tokens (KV-cache decode vs one full forward).
    diffs = np.abs(samp_rows - np.asarray(lp))[mask_np]
  else:
    lp, diffs = jnp.asarray(samp_rows), None
  if items is None:
    texts, tasks_ = list(prompt_texts or [""] * len(prompts)), tasks
  else:
    texts, tasks_ = [x.text for x in items], [x.task for x in items]
  view = RolloutView(batch=rows, prompts=texts,
                     completions=[tokenizer.decode(c) for c in completions], eos_emitted=eos,
                     tasks=tasks_, items=None if items is None else list(items))
  rewards, valid, metrics = compute_rewards(reward_sources, view, missing_eos=cfg.missing_eos,
                                            missing_eos_penalty=cfg.missing_eos_penalty)
  exp = Experience(
      input_ids=jnp.asarray(rows["input_ids"]), target_ids=jnp.asarray(rows["target_ids"]),
      positions=jnp.asarray(rows["positions"]), segment_ids=jnp.asarray(rows["segment_ids"]),
      completion_mask=jnp.asarray(rows["loss_mask"], jnp.float32), old_token_logps=lp,
      ref_token_logps=ref_lp, values=values, rewards=jnp.asarray(rewards),
      valid=jnp.asarray(valid), eos_emitted=jnp.asarray(eos))
  if diffs is not None and diffs.size:
    metrics["rollout/logprob_mismatch_max"] = float(diffs.max())
    metrics["rollout/logprob_mismatch_mean"] = float(diffs.mean())
  metrics.update({
      "rollout/completion_tokens": float(np.mean([len(c) for c in completions])),
      "rollout/stop_fraction": float(np.mean(eos)),
  })
  return exp, metrics, view
