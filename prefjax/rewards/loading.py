"""Scorers from saved runs: a reward-model workdir, or the implicit reward of a DPO workdir.

  scorer, info = load_scorer("runs/rm")        # workdir/params/reward (the reward stage)
  scorer, info = load_scorer("runs/dpo")       # beta * log pi/pi_ref: checkpoints/dpo + sft
  scorer, info = load_scorer("loglik:runs/dpo")   # beta * log pi (no reference)

The workdir's ``config.json`` (written by the runner) rebuilds the model; every failure is a
``PrefjaxError`` with a one-line message naming the path.
"""
from __future__ import annotations

import json
import os

import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from prefjax.errors import PrefjaxError
from prefjax.eval import ranking_sources
from prefjax.models.config import ModelConfig
from prefjax.models.loading import hf_tokenizer, load_model
from prefjax.rewards.implicit import ImplicitRewardScorer
from prefjax.rewards.model import build_reward_model
from prefjax.rewards.scoring import RewardScorer
from prefjax.train.datasets import default_tokenizer
from prefjax.train.sources import build_model

KINDS = ("auto", "reward", "implicit", "loglik")
TESTBED_DATA = ("world", "length_bias")   # config.reward.data drawn from the testbed


class ModelLoadError(PrefjaxError, ValueError):
  """A model path that cannot be turned into a scorer."""


def _config(workdir):
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ModelLoadError(f"{workdir}: no config.json (not a prefjax workdir)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _int_keys(tree):
  """Orbax restores nnx.List indices as strings; nnx.merge wants ints."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v)
            for k, v in tree.items()}
  return tree


def _restore_params(directory: str):
  with ocp.StandardCheckpointer() as ckptr:
    return _int_keys(ckptr.restore(os.path.abspath(directory)))


def _latest_stage_params(workdir, stage):
  d = os.path.join(workdir, "checkpoints", stage)
  steps = sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []
  if not steps:
    return None
  return _restore_params(os.path.join(d, str(steps[-1]), "default"))["params"]


def _check(graphdef, params, where):
  try:
    nnx.merge(graphdef, params)
  except Exception as e:   # a structure mismatch deep inside flax: one line instead
    raise ModelLoadError(f"{where}: parameters do not match the configured model "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def reward_tokenizer(c):
  """The tokenizer of a preset reward model: testbed characters or UTF-8 bytes."""
  return default_tokenizer("testbed" if c.reward.data in TESTBED_DATA else c.reward.data)


def _reward_tokenizer_and_config(workdir, c):
  """The tokenizer and model config a reward stage recorded in ``params/reward.json``."""
  fn = os.path.join(workdir, "params", "reward.json")
  meta = {}
  if os.path.isfile(fn):
    with open(fn) as f:
      meta = json.load(f)
  cfg = ModelConfig.from_dict(meta["model"]) if "model" in meta else None
  name = meta.get("tokenizer")
  if name in (None, "TestbedTokenizer", "ByteTokenizer"):
    return reward_tokenizer(c), cfg
  tok_dir = os.path.join(workdir, "model", "tokenizer")
  tok = hf_tokenizer(tok_dir) if os.path.isdir(tok_dir) else None
  if tok is None and meta.get("model_source"):
    tok = load_model(meta["model_source"])[3]
  if tok is None:
    raise ModelLoadError(f"{workdir}: cannot find the reward model's tokenizer ({name})")
  return tok, cfg


def load_reward_model(path: str):
  """(graphdef, params) of the reward model a finished run trained (``params/reward``)."""
  if not os.path.isdir(path):
    raise ModelLoadError(f"{path}: no such directory")
  d = os.path.join(path, "params", "reward")
  if not os.path.isdir(d):
    raise ModelLoadError(f"{path}: no params/reward (run the 'reward' stage first)")
  c = _config(path)
  tok, model_cfg = _reward_tokenizer_and_config(path, c)
  _, graphdef, _ = build_reward_model(c, tok, model_cfg)
  params = _restore_params(d)
  _check(graphdef, params, d)
  return graphdef, params


def load_scorer(path: str, *, kind: str = "auto", beta: float | None = None,
                max_len: int | None = None, batch_size: int = 32):
  """(scorer with ``score(prompts, responses) -> [N]``, info dict) for a saved run."""
  if ":" in path and path.split(":", 1)[0] in KINDS:
    kind, path = path.split(":", 1)
  if kind not in KINDS:
    raise ModelLoadError(f"unknown model kind {kind!r}; expected one of {KINDS}")
  if not os.path.isdir(path):
    raise ModelLoadError(f"{path}: no such directory")
  c = _config(path)
  if kind == "auto":
    kind = "reward" if os.path.isdir(os.path.join(path, "params", "reward")) else "implicit"
  if kind == "reward":
    d = os.path.join(path, "params", "reward")
    if not os.path.isdir(d):
      raise ModelLoadError(f"{path}: no params/reward (run the 'reward' stage first)")
    tok, model_cfg = _reward_tokenizer_and_config(path, c)
    _, graphdef, _ = build_reward_model(c, tok, model_cfg)
    params = _restore_params(d)
    _check(graphdef, params, d)
    ml = max_len or c.reward.get("max_len", 0) or c.data.max_len
    return (RewardScorer(graphdef, params, tok, max_len=ml, batch_size=batch_size),
            {"kind": "reward_model", "path": path, "max_len": ml})
  if c.get("model", {}).get("init_from"):
    graphdef, policy, ref, tok = _real_policy_and_reference(path)
  else:
    tok = default_tokenizer("testbed")
    _, graphdef, init = build_model(c, tok)
    policy = _latest_stage_params(path, "dpo")
    if policy is None:
      raise ModelLoadError(f"{path}: no checkpoints/dpo (an implicit reward needs a DPO run)")
    ref = _latest_stage_params(path, "sft") or init   # the runner's reference: SFT or init
    _check(graphdef, policy, os.path.join(path, "checkpoints", "dpo"))
  b = beta if beta is not None else float(dict(c.dpo.loss_kwargs).get("beta", 1.0))
  ml = max_len or c.data.max_len
  scorer = ImplicitRewardScorer(graphdef, policy, None if kind == "loglik" else ref, tok,
                                beta=b, max_len=ml, batch_size=batch_size)
  return scorer, {"kind": kind, "path": path, "beta": b, "max_len": ml}


def _real_policy_and_reference(path):
  """A real-model run's final model and its reference (the SFT model, else the start)."""
  if not os.path.isdir(os.path.join(path, "checkpoints", "dpo")):
    raise ModelLoadError(f"{path}: no checkpoints/dpo (an implicit reward needs a DPO run)")
  m = ranking_sources.load_models(path)
  return m.graphdef, m.policy, m.reference, m.tokenizer
