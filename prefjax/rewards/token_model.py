"""Token-level reward model from minimal edits (fine-grained supervision, arXiv 2406.02756).

What the paper's abstract supports: annotators *minimally edit* the less-preferred response
of a reward-modelling pair so that it becomes preferable, changing only what is needed; the
(original, edited) pairs train a *token-level* reward model, which assigns a reward to each
token instead of one to the whole sequence; PPO trained with those token rewards
("fine-grained PPO") beats PPO with a sequence reward model by up to 5.1 points of win rate
against the reference model.

What is our choice (the abstract does not fix it):
  * the head: the token reward of action a_t is an action-value read-out of the backbone,
        r_t = (h_t W)[a_t] + b[a_t],    W [D, V], b [V], both initialised to zero,
    with h_t the final-norm hidden state at row index t (input prefix input_ids[:t+1]), so
    r_t lives on the same grid as log-probs, values and RL rewards [B, T], the end token
    included, and the reward of a token depends on the context in which it was chosen;
  * the training signal: sequence reward R = sum_t r_t over the completion, Bradley-Terry
    on edited over original (``prefjax.losses.token_reward.token_bt``, kind "token"), plus
    optional token labels f_t from the edit diff (the original's tokens that the edit
    substitutes or deletes, insertions marking their neighbour);
  * a caveat we measured: when edits keep the length (the testbed's do), BT on sums cannot
    identify a constant per-token offset (it cancels in R_w - R_l); PPO then exploits a
    positive offset by lengthening its answers. The token labels (``label_coef > 0``) pin
    unflawed tokens near 0;
  * flaw detection: a token is predicted flawed when r_t < -threshold; ``flaw_detection``
    scores that against exact masks (the testbed's).

Example:
  >>> rm = TokenRewardModel(make_config("testbed-tiny", vocab_size=64), nnx.Rngs(0))
  >>> r_bt = rm.token_rewards(batch)        # packed rows [B, T] -> rewards [B, T]
"""
from __future__ import annotations

import difflib
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax.data.collate import DataError, pack
from prefjax.models.config import ModelConfig
from prefjax.models.layers import param
from prefjax.models.transformer import Transformer


class TokenRewardModel(nnx.Module):
  """``backbone`` (a Transformer, LM head unused) + an action-value head ``w`` [D, V], ``b`` [V]."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.backbone = Transformer(cfg, rngs)
    self.w = param(rngs, (cfg.dim, cfg.vocab_size), ("embed", "vocab"), init="zeros", dtype=pd)
    self.b = param(rngs, (cfg.vocab_size,), ("vocab",), init="zeros", dtype=pd)

  def __call__(self, tokens_bt, positions_bt, segment_ids_bt, actions_bt, branch_ids_bt=None):
    """Per-token rewards [B, T] (float32) of the actions ``actions_bt`` (the targets);
    ``branch_ids_bt``: prefix-shared rows (``prefjax.rl.shared_rows.edit_pair_rows``)."""
    kw = {} if branch_ids_bt is None else {"branch_ids_bt": branch_ids_bt}
    h_btd, _ = self.backbone(tokens_bt, positions_bt, segment_ids_bt, return_hidden=True, **kw)
    # (h_t W)[a_t] = h_t . W[:, a_t]: gather the actions' columns instead of scoring all V
    # (the [B, T, V] product would cost as much as an LM head, forward and backward).
    w_btd = jnp.take(self.w[...].T, actions_bt, axis=0).astype(jnp.float32)
    b_bt = jnp.take(self.b[...], actions_bt, axis=0).astype(jnp.float32)
    return jnp.einsum("btd,btd->bt", h_btd.astype(jnp.float32), w_btd) + b_bt

  def token_rewards(self, batch, prefix: str = ""):
    """Rewards [..., T] of a packed batch ``{prefix}input_ids, ...`` of shape [..., T], 0
    outside the completion (``loss_mask``)."""
    ids = batch[prefix + "input_ids"]
    lead, t = ids.shape[:-1], ids.shape[-1]
    flat = lambda k: batch[prefix + k].reshape(-1, t)
    r = self(flat("input_ids"), flat("positions"), flat("segment_ids"), flat("target_ids"))
    return (r * flat("loss_mask")).reshape(*lead, t)


def token_reward_params_from_backbone(params: dict, backbone_params: dict) -> dict:
  out = dict(params)
  out["backbone"] = backbone_params
  return out


# ---------------------------------------------------------------------------------------------
# Data: (original, minimally edited) pairs and their token labels.

def edit_pairs(pairs: Sequence[dict], sides: Sequence[str] = ("rejected", "chosen")) -> list:
  """Edit examples from preference pairs that carry ``{side}_edit`` and ``{side}_flawed_mask``.

  One example per flawed side: {"id", "prompt", "original", "edited", "flawed_mask"}; sides
  whose edit equals the original (a correct response) are skipped (no preference).
  """
  out = []
  for ex in pairs:
    for side in sides:
      edited = ex.get(f"{side}_edit")
      if edited is None or edited == ex[side]:
        continue
      out.append({"id": f"{ex.get('id', '?')}-{side}", "prompt": ex["prompt"],
                  "original": ex[side], "edited": edited,
                  "flawed_mask": list(ex.get(f"{side}_flawed_mask") or [])})
  return out


def diff_flaw_mask(original_ids: Sequence[int], edited_ids: Sequence[int]) -> list[int]:
  """1 on the tokens of ``original_ids`` that a diff to ``edited_ids`` replaces or deletes
  (an insertion marks the token before which it goes, or the last one)."""
  mask = [0] * len(original_ids)
  sm = difflib.SequenceMatcher(a=list(original_ids), b=list(edited_ids), autojunk=False)
  for op, i1, i2, _, _ in sm.get_opcodes():
    if op in ("replace", "delete"):
      mask[i1:i2] = [1] * (i2 - i1)
    elif op == "insert" and mask:
      mask[min(i1, len(mask) - 1)] = 1
  return mask


def encode_edit_pair(tokenizer, max_len: int, truncate: str = "prompt_left") -> Callable:
  """edit example -> chosen_* rows (edited), rejected_* rows (original), and
  ``rejected_flaw_labels`` [T] on the original's completion actions.

  The example's ``flawed_mask`` (one flag per character) is used when the tokenizer maps
  characters to tokens one to one (the testbed's); otherwise the labels come from a token
  diff (``diff_flaw_mask``).
  """

  def fn(ex):
    where = f"example {ex.get('id', '?')}"
    prompt = tokenizer.encode_prompt(ex["prompt"])
    out, cut = {}, False
    for side, text in (("chosen", ex["edited"]), ("rejected", ex["original"])):
      if not text:
        raise DataError(f"{where}: empty {side} response")
      row, c = pack(prompt, tokenizer.encode_completion(text), max_len, truncate=truncate,
                    where=f"{where} ({side})")
      cut |= c
      out.update({f"{side}_{k}": v for k, v in row.items()})
    orig = tokenizer.encode(ex["original"])
    flags = list(ex.get("flawed_mask") or [])
    if len(flags) != len(orig):
      flags = diff_flaw_mask(orig, tokenizer.encode(ex["edited"]))
    labels = np.zeros(max_len, np.float32)
    start = int(np.argmax(out["rejected_loss_mask"]))        # first completion action
    labels[start:start + len(flags)] = flags
    out["rejected_flaw_labels"] = labels * out["rejected_loss_mask"]
    out["truncated"] = np.float32(cut)
    out["example_mask"] = np.float32(1.0)
    return out

  return fn


def flaw_detection(rewards_bt, flaw_mask_bt, mask_bt, *, threshold: float = 0.0) -> dict:
  """Precision and recall of "r_t < -threshold" as a detector of flawed tokens.

  Counts are pooled over every completion token of the batch (numpy; host-side metric).
  """
  r, f, m = (np.asarray(x, np.float64) for x in (rewards_bt, flaw_mask_bt, mask_bt))
  pred = (r < -threshold) & (m > 0)
  true = (f > 0) & (m > 0)
  tp = float((pred & true).sum())
  return {"token_rm/precision": tp / max(float(pred.sum()), 1.0),
          "token_rm/recall": tp / max(float(true.sum()), 1.0),
          "token_rm/flagged_fraction": float(pred.sum()) / max(float((m > 0).sum()), 1.0)}
