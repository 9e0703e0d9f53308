"""The one loader of a finished run: a training workdir, one of its DPO checkpoints, or a model.

    run = load_run("runs/dpo")                        # policy, reference, tokenizer, config
    run = load_run("runs/dpo/checkpoints/dpo/100")    # that checkpoint against the reference
    run = load_run("SmolLM2-135M-Instruct.Q4_1.gguf") # a model is its own reference
    run = load_run("runs/rm", need=("reward",))       # the reward model the run trained

What a path gives:

  workdir      a directory with the run's ``config.json`` and ``model/``, ``export/hf/``,
               ``checkpoints/`` or ``params/`` inside (``scripts/train.py --workdir``)
    policy     the final model: ``model/`` (a prefjax checkpoint), else ``export/hf/``; a
               preset (testbed) run without one: its last ``checkpoints/dpo`` checkpoint,
               else its last ``checkpoints/sft`` one
    reference  the last ``checkpoints/sft`` checkpoint, else the run's starting model
               (``config.model.init_from``, or the preset at ``config.seed``; quantized
               again for a LoRA run on an int8 / int4 base); a real-model
               run that had an SFT stage but kept no checkpoint of it cannot rebuild it
    reward     ``params/reward`` with ``params/reward.json`` (its model config and tokenizer)
  checkpoint   ``WORKDIR/checkpoints/dpo/STEP`` (or ``step_dir=``): the policy is that
               checkpoint; a LoRA run's checkpoints hold adapters only (load the workdir)
  model        a Hugging Face directory, a ``.gguf`` file or a prefjax checkpoint
               (``prefjax.models.loading.load_model``): policy = reference = the model

``need`` names what to read ("policy", "reference", "reward"); the rest stays None. Every
failure is a one-line ``PrefjaxError`` naming the path.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from prefjax.errors import ConfigError, DataError
from prefjax.models import lora, quant
from prefjax.models.config import ModelConfig
from prefjax.models.loading import MODEL_CONFIG, hf_tokenizer, load_model, source_kind
from prefjax.rewards.model import build_reward_model
from prefjax.rewards.token_model import TokenRewardModel
from prefjax.train.data_source import TESTBED_REWARD_DATA, default_tokenizer
from prefjax.train.outputs import HF_DIR, MODEL_DIR, final_model_dir
from prefjax.train.model_source import build_model, preset_tokenizer, resolve_path

PARTS = ("policy", "reference", "reward", "token_reward")
RUN_CONFIG = "config.json"


@dataclasses.dataclass
class LoadedReward:
  """The reward model a run trained (``params/reward``) and the tokenizer it reads."""
  graphdef: Any
  params: dict
  tokenizer: Any


@dataclasses.dataclass
class LoadedRun:
  """What ``load_run`` read; parts not asked for (``need``) are None."""
  graphdef: Any                              # of the policy and the reference
  policy: dict | None
  reference: dict | None                     # ``is policy`` when a model is its own reference
  tokenizer: Any
  description: str                           # "policy P, reference R"
  kind: str                                  # workdir | checkpoint | hf | prefjax | gguf
  config: ml_collections.ConfigDict | None = None   # the run's config.json (None: a model)
  model_config: ModelConfig | None = None
  reward: LoadedReward | None = None
  token_reward: LoadedReward | None = None   # ``params/token_rm``: a token-level reward model


# ----------------------------------------------------------------------------- pieces
def is_workdir(path: str) -> bool:
  """A training workdir (``model/``, ``export/hf/``, ``checkpoints/`` or ``params/`` inside, or
  a run ``config.json``), not a model directory itself."""
  if not os.path.isdir(path) or os.path.exists(os.path.join(path, MODEL_CONFIG)):
    return False
  if any(os.path.isdir(os.path.join(path, d))
         for d in (MODEL_DIR, HF_DIR, "checkpoints", "params")):
    return True
  return _read_config(path) is not None


def _read_config(workdir: str):
  """The run config of ``workdir/config.json``; None when there is none (or it is a
  Hugging Face model config)."""
  fn = os.path.join(workdir, RUN_CONFIG)
  if not os.path.isfile(fn):
    return None
  try:
    with open(fn) as f:
      raw = json.load(f)
  except ValueError as e:
    raise DataError(f"{fn}: not JSON ({e})") from None
  return ml_collections.ConfigDict(raw) if isinstance(raw, dict) and "stages" in raw else None


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run recorded in ``workdir/config.json``."""
  c = _read_config(workdir)
  if c is None:
    raise DataError(f"{workdir}: no {RUN_CONFIG} (not a prefjax workdir)")
  return c


def _int_keys(tree):
  """Orbax restores nnx.List indices as strings; a loaded model's params have ints."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v)
            for k, v in tree.items()}
  return tree


def _restore(directory: str):
  with ocp.StandardCheckpointer() as ckptr:
    return _int_keys(ckptr.restore(os.path.abspath(directory)))


def checkpoint_params(step_dir: str | os.PathLike) -> dict:
  """The ``params`` of a train-state checkpoint ``WORKDIR/checkpoints/<stage>/<step>``."""
  return _restore(os.path.join(step_dir, "default"))["params"]


def last_step_dir(stage_dir: str | os.PathLike) -> str | None:
  """The newest complete checkpoint ``stage_dir/<step>`` (None when there is none)."""
  stage_dir = str(stage_dir)
  if not os.path.isdir(stage_dir):
    return None
  steps = [int(s) for s in os.listdir(stage_dir)
           if s.isdigit() and os.path.isdir(os.path.join(stage_dir, s, "default"))]
  return os.path.join(stage_dir, str(max(steps))) if steps else None


def _check(graphdef, params, where: str):
  try:
    nnx.merge(graphdef, params)
  except Exception as e:   # a structure mismatch deep inside flax: one line instead
    raise DataError(f"{where}: parameters do not match the configured model "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _no_final_model(workdir: str, preset_run: bool = False) -> DataError:
  model_dir, hf_dir = os.path.join(workdir, MODEL_DIR), os.path.join(workdir, HF_DIR)
  found = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
  also = " or a checkpoint under checkpoints/dpo or checkpoints/sft" if preset_run else ""
  return DataError(
      f"{workdir}: a training workdir without a final model: expected {model_dir}/ (a prefjax "
      f"checkpoint with {MODEL_CONFIG}) or {hf_dir}/ (a Hugging Face directory){also}, "
      f"found {', '.join(found) or 'nothing'}; did the run finish?")


def _step_dir_root(path: str) -> str | None:
  """The workdir of a DPO checkpoint ``WORKDIR/checkpoints/dpo/STEP``, else None."""
  p = os.path.abspath(path)
  stage_dir = os.path.dirname(p)
  if not (os.path.basename(p).isdigit() and os.path.basename(stage_dir) == "dpo"):
    return None
  root = os.path.normpath(os.path.join(path, os.pardir, os.pardir, os.pardir))
  return root if os.path.isfile(os.path.join(root, RUN_CONFIG)) else None


# ----------------------------------------------------------------------------- reward
def _reward_tokenizer(c):
  """The tokenizer of a preset reward model: testbed characters or UTF-8 bytes."""
  return default_tokenizer("testbed" if c.reward.data in TESTBED_REWARD_DATA else c.reward.data)


def _reward_tokenizer_and_config(workdir: str, c, name: str = "reward"):
  """The tokenizer and model config a reward stage recorded in ``params/NAME.json``."""
  fn = os.path.join(workdir, "params", f"{name}.json")
  meta = {}
  if os.path.isfile(fn):
    with open(fn) as f:
      meta = json.load(f)
  cfg = ModelConfig.from_dict(meta["model"]) if "model" in meta else None
  name = meta.get("tokenizer")
  if name in (None, "TestbedTokenizer", "ByteTokenizer"):
    return _reward_tokenizer(c), cfg
  tok_dir = os.path.join(workdir, MODEL_DIR, "tokenizer")
  tok = hf_tokenizer(tok_dir) if os.path.isdir(tok_dir) else None
  if tok is None and meta.get("model_source"):
    tok = load_model(meta["model_source"])[3]
  if tok is None:
    raise DataError(f"{workdir}: cannot find the reward model's tokenizer ({name})")
  return tok, cfg


def _load_reward(workdir: str) -> LoadedReward:
  d = os.path.join(workdir, "params", "reward")
  if not os.path.isdir(d):
    raise DataError(f"{workdir}: no params/reward (run the 'reward' stage first)")
  c = run_config(workdir)
  tok, model_cfg = _reward_tokenizer_and_config(workdir, c)
  _, graphdef, _ = build_reward_model(c, tok, model_cfg)
  params = _restore(d)
  _check(graphdef, params, d)
  return LoadedReward(graphdef, params, tok)


def _load_token_reward(workdir: str) -> LoadedReward:
  """The token-level reward model an RL run trained (``params/token_rm``, written by the
  ``token_rm`` reward source) with the tokenizer of its rows."""
  d = os.path.join(workdir, "params", "token_rm")
  meta = os.path.join(workdir, "params", "token_rm.json")
  if not (os.path.isdir(d) and os.path.isfile(meta)):
    raise DataError(f"{workdir}: no params/token_rm (train one with an RL stage whose "
                    "config.rl.rewards has 'token_rm')")
  c = run_config(workdir)
  tok, model_cfg = _reward_tokenizer_and_config(workdir, c, "token_rm")
  if model_cfg is None:
    raise DataError(f"{meta}: no 'model' entry (the token reward model's config)")
  graphdef = nnx.split(TokenRewardModel(model_cfg, nnx.Rngs(0)))[0]
  params = _restore(d)
  _check(graphdef, params, d)
  return LoadedReward(graphdef, params, tok)


# ----------------------------------------------------------------------------- workdir
@dataclasses.dataclass
class _Model:
  cfg: Any
  graphdef: Any
  params: dict | None
  tokenizer: Any
  source: str


def _init_from(c) -> str | None:
  """``config.model.init_from`` ("" for a preset run); None when the config is unknown."""
  if c is None or "model" not in c:
    return None
  return c.model.get("init_from", "") or ""


def _final_model(workdir: str, c, mesh, dtype) -> _Model | None:
  d = final_model_dir(workdir)
  if d is None:
    return None
  cfg, graphdef, params, tok = load_model(d, mesh=mesh, dtype=dtype)
  if tok is None and _init_from(c) == "":
    tok = preset_tokenizer(c)          # a preset run's tokenizer is code, not files
  return _Model(cfg, graphdef, params, tok, d)


def _preset(c) -> _Model:
  """The starting model of a preset run (``config.model.preset`` at ``config.seed``)."""
  tok = preset_tokenizer(c)
  model, graphdef, params = build_model(c, tok)
  return _Model(model.cfg, graphdef, params, tok,
                f"the initial model (preset {c.model.preset}, seed {c.seed})")


def _start(c, mesh, dtype) -> _Model:
  """The model the run started from: its preset, or ``config.model.init_from``."""
  init_from = _init_from(c)
  if not init_from:
    return _preset(c)
  cfg, graphdef, params, tok = load_model(resolve_path(init_from), mesh=mesh, dtype=dtype)
  return _Model(cfg, graphdef, params, tok, init_from)


def _policy(workdir: str, c, step_dir, mesh, dtype) -> _Model:
  """The run's final model, or the checkpoint ``step_dir`` (see the module docstring)."""
  preset_run = _init_from(c) == ""
  if step_dir is not None and c is not None and (c.get("lora") or {}).get("rank", 0) > 0:
    raise ConfigError(f"{step_dir}: a LoRA run's checkpoints hold adapters only; "
                      f"pass the workdir {workdir} (its merged final model) instead")
  if step_dir is None:
    final = _final_model(workdir, c, mesh, dtype)
    if final is not None:
      return final
    if preset_run:
      step_dir = (last_step_dir(os.path.join(workdir, "checkpoints", "dpo"))
                  or last_step_dir(os.path.join(workdir, "checkpoints", "sft")))
    if step_dir is None:
      raise _no_final_model(workdir, preset_run)
  m = _preset(c) if preset_run else _final_model(workdir, c, mesh, dtype)
  if m is None:     # a real model's graph and tokenizer come from the final model
    raise _no_final_model(workdir, preset_run)
  params = checkpoint_params(step_dir)
  _check(m.graphdef, params, str(step_dir))
  return _Model(m.cfg, m.graphdef, params, m.tokenizer, str(step_dir))


def _reference(workdir: str, c, policy: _Model, mesh, dtype) -> tuple[dict, str]:
  """(params, where from) of the run's reference."""
  sft = last_step_dir(os.path.join(workdir, "checkpoints", "sft"))
  if sft is not None and sft == policy.source:
    return policy.params, sft          # a run stopped after SFT: its own reference
  if sft is not None:
    params = checkpoint_params(sft)
    _check(policy.graphdef, params, sft)
    return params, sft
  init_from = _init_from(c)
  if init_from is None:
    raise DataError(f"{workdir}: no {RUN_CONFIG} with a model section and no checkpoints/sft, "
                    "so its reference cannot be rebuilt")
  if init_from and "sft" in tuple(c.get("stages", ())):
    raise ConfigError(f"{workdir}: the run had an SFT stage but kept no checkpoint of it "
                      "(config.checkpoint.every = 0), so its reference cannot be rebuilt")
  start = _start(c, mesh, dtype)
  return _lora_base(c, start.params, start.source)


def _lora_base(c, params, source: str) -> tuple[dict, str]:
  """(params, source) as a LoRA run's reference saw them: quantized again when it trained on
  an int8 / int4 base (``config.lora.quantize``; deterministic, so the same weights)."""
  lc = c.get("lora") or {}
  fmt = lc.get("quantize") or ""
  if lc.get("rank", 0) <= 0 or fmt not in quant.FORMATS:
    return params, source
  params = quant.quantize_params(params, bits=quant.FORMATS[fmt],
                                 block=int(lc.get("quant_block", quant.DEFAULT_BLOCK)),
                                 targets=tuple(lc.get("targets") or lora.TARGETS))
  return params, f"{source} ({fmt} base)"


def _load_workdir(workdir: str, step_dir, mesh, dtype, need) -> LoadedRun:
  c = _read_config(workdir)
  run = LoadedRun(None, None, None, None, "", "workdir" if step_dir is None else "checkpoint",
                  config=c)
  if "policy" in need or "reference" in need:
    pol = _policy(workdir, c, step_dir, mesh, dtype)
    run.graphdef, run.tokenizer, run.model_config = pol.graphdef, pol.tokenizer, pol.cfg
    run.description = f"policy {pol.source}"
    if "policy" in need:
      run.policy = pol.params
    if "reference" in need:
      run.reference, ref_source = _reference(workdir, c, pol, mesh, dtype)
      run.description += f", reference {ref_source}"
  if "reward" in need:
    run.reward = _load_reward(workdir)
  if "token_reward" in need:
    run.token_reward = _load_token_reward(workdir)
  return run


# ----------------------------------------------------------------------------- entry point
def load_run(path: str, *, step_dir: str | os.PathLike | None = None, mesh=None, dtype=None,
             need=("policy", "reference")) -> LoadedRun:
  """Loads a finished run, one of its DPO checkpoints or a model (see the module docstring).

  Args:
    path: a workdir, ``WORKDIR/checkpoints/dpo/STEP``, a HF directory, a ``.gguf`` file or a
      prefjax checkpoint.
    step_dir: a checkpoint of the workdir ``path`` to use as the policy.
    mesh, dtype: as ``prefjax.models.loading.load_model`` (for the models read that way).
    need: the parts to read, from ("policy", "reference", "reward", "token_reward").
  Raises:
    ConfigError / DataError (one line, naming the path).
  """
  bad = sorted(set(need) - set(PARTS))
  if bad:
    raise ConfigError(f"load_run(need=...): unknown part(s) {bad}; expected some of {PARTS}")
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ConfigError(f"{path}: no such file or directory")
  root = _step_dir_root(path) if step_dir is None else None
  if root is not None:
    path, step_dir = root, path
  if step_dir is not None or is_workdir(path):
    return _load_workdir(path, step_dir, mesh, dtype, tuple(need))
  if "reward" in need:
    raise DataError(f"{path}: no params/reward (run the 'reward' stage first)")
  if "token_reward" in need:
    raise DataError(f"{path}: not a workdir, so no params/token_rm")
  if os.path.isdir(path) and not any(
      os.path.exists(os.path.join(path, f)) for f in (MODEL_CONFIG, "config.json")):
    raise DataError(f"{path}: neither a prefjax workdir (no {RUN_CONFIG}, model/ or "
                    "checkpoints/) nor a model (a Hugging Face directory with config.json or a "
                    f"prefjax checkpoint with {MODEL_CONFIG})")
  cfg, graphdef, params, tok = load_model(path, mesh=mesh, dtype=dtype)
  return LoadedRun(graphdef, params, params, tok,
                   f"{path} ({type(cfg).__name__}); reference = the same model",
                   source_kind(path), model_config=cfg)
