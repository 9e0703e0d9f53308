"""Where ``scripts/eval_ranking.py`` gets its models and pairs from.

Models (``load_models(path)``):
  * a prefjax workdir from ``scripts/train.py``: the policy is the last checkpoint in
    ``WORKDIR/checkpoints/dpo`` (the SFT model when there is none), the reference the last
    in ``WORKDIR/checkpoints/sft``, with the testbed tokenizer; ``WORKDIR/checkpoints/dpo/
    STEP`` picks one DPO checkpoint;
  * anything else goes to ``prefjax.models.loading.load_model(path)`` (an HF directory, a
    GGUF file) and the model is its own reference.

Pairs (``load_pairs(spec)``):
  * ``testbed:TASKS[:SPLIT]`` (``testbed:sort``, ``testbed:sort+add:train``): testbed pairs
    with the exact alpha of their Bradley-Terry label; the world of the workdir when the
    model is one, else the default world; SPLIT is ``eval`` (default) or ``train``;
  * any spec of ``prefjax.data.read_preferences`` (HH-RLHF, PandaLM, LLMBar, AlpacaEval,
    generic jsonl); unparseable rows are reported, never fatal.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import ml_collections
import orbax.checkpoint as ocp

from prefjax.data.preference_files import PreferenceFileError, read_preferences
from prefjax.errors import ConfigError, DataError
from prefjax.models.loading import load_model
from prefjax.train import datasets, export
from prefjax.train.sources import build_model


@dataclasses.dataclass
class Models:
  graphdef: object
  policy: dict
  reference: dict
  tokenizer: object
  description: str
  config: ml_collections.ConfigDict | None = None  # the workdir's config, if any


def _last_step_dir(stage_dir: Path) -> Path | None:
  steps = [int(p.name) for p in stage_dir.glob("*") if p.name.isdigit()
           and (p / "default").is_dir()] if stage_dir.is_dir() else []
  return stage_dir / str(max(steps)) if steps else None


def load_checkpoint_params(step_dir: str | os.PathLike) -> dict:
  """The ``params`` of a train-state checkpoint ``.../checkpoints/<stage>/<step>``."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(Path(step_dir) / "default"))["params"]


def _load_workdir(root: Path, dpo_step_dir: Path | None) -> Models:
  with open(root / "config.json") as f:
    c = ml_collections.ConfigDict(json.load(f))
  sft = _last_step_dir(root / "checkpoints" / "sft")
  if c.get("model", {}).get("init_from"):
    return _load_real_workdir(root, c, sft, dpo_step_dir)
  tok = datasets.default_tokenizer("testbed")
  _, graphdef, _ = build_model(c, tok)
  dpo = dpo_step_dir or _last_step_dir(root / "checkpoints" / "dpo")
  if sft is None and dpo is None:
    raise ConfigError(f"{root}: no checkpoints under checkpoints/sft or checkpoints/dpo")
  ref = load_checkpoint_params(sft) if sft else None
  pol = load_checkpoint_params(dpo) if dpo else ref
  ref = pol if ref is None else ref
  desc = f"policy {dpo or sft}, reference {sft or dpo}"
  return Models(graphdef, pol, ref, tok, desc, c)


def _load_real_workdir(root: Path, c, sft: Path | None, dpo_step_dir: Path | None) -> Models:
  """A real-model run: the policy is the final model (``model/``) or one DPO checkpoint, the
  reference the last SFT checkpoint, else the run's starting model."""
  _, graphdef, final, tok = export.load_workdir(str(root))
  if dpo_step_dir is not None and c.get("lora", {}).get("rank", 0) > 0:
    raise ConfigError(f"{dpo_step_dir}: a LoRA run's checkpoints hold adapters only; "
                      f"pass the workdir {root} (its merged final model) instead")
  pol = load_checkpoint_params(dpo_step_dir) if dpo_step_dir is not None else final
  if sft is not None:
    ref, ref_desc = load_checkpoint_params(sft), str(sft)
  elif "sft" in tuple(c.get("stages", ())):
    raise ConfigError(f"{root}: the run had an SFT stage but kept no checkpoint of it "
                      "(config.checkpoint.every = 0), so its reference cannot be rebuilt")
  else:
    ref, ref_desc = load_model(c.model.init_from)[2], c.model.init_from
  desc = f"policy {dpo_step_dir or root / export.WORKDIR_MODEL}, reference {ref_desc}"
  return Models(graphdef, pol, ref, tok, desc, c)


def load_models(path: str) -> Models:
  """Policy, reference and tokenizer from a workdir, a DPO checkpoint or a real model."""
  p = Path(path)
  if (p / "config.json").is_file() and (p / "checkpoints").is_dir():
    return _load_workdir(p, None)
  if p.name.isdigit() and p.parent.name == "dpo" and (p.parents[2] / "config.json").is_file():
    return _load_workdir(p.parents[2], p)
  if not p.exists():
    raise ConfigError(f"--model {path}: no such file or directory")
  cfg, graphdef, params, tokenizer = load_model(path)
  return Models(graphdef, params, params, tokenizer,
                f"{path} ({type(cfg).__name__}); reference = the same model")


@dataclasses.dataclass
class Pairs:
  pairs: list[dict]         # {"prompt", "chat", "chosen", "rejected", "alpha", "id"}
  skipped: list[tuple]      # (location, reason) of rows that could not be parsed
  source: str
  format: str
  unit: str = "line"
  alpha_note: str = ""
  num_parsed: int | None = None  # parsed pairs before --limit (None: same as len(pairs))


def _testbed_pairs(spec: str, config, limit: int | None) -> Pairs:
  parts = spec.split(":")
  names = tuple(parts[1].split("+")) if len(parts) > 1 and parts[1] else ("sort",)
  split = parts[2] if len(parts) > 2 else "eval"
  if split not in ("eval", "train"):
    raise ConfigError(f"--data {spec}: split must be 'eval' or 'train', got {split!r}")
  try:
    datasets.check_testbed_tasks(names)
  except (KeyError, ValueError) as e:
    raise ConfigError(f"--data {spec}: {e}") from None
  n = limit or (config.testbed.n_eval_pairs if config is not None else 256)
  rows = datasets.testbed_task_pairs(config, names, n, split=split)
  pairs = [dict(prompt=r["prompt"], chat=None, chosen=r["chosen"], rejected=r["rejected"],
                alpha=float(r["alpha"]), id=r["id"]) for r in rows]
  return Pairs(pairs, [], spec, "testbed", alpha_note="exact Bradley-Terry alpha")


def load_pairs(spec: str, *, config=None, limit: int | None = None,
               default_alpha: float = 0.75) -> Pairs:
  """Pairs from a testbed spec or a preference file (see the module docstring).

  ``default_alpha`` is used for rows with a single gold label (no alpha), as the paper's
  public code does (0.75 for the labelled-preferred response).
  """
  if spec.startswith("testbed"):
    return _testbed_pairs(spec, config, limit)
  try:
    res = read_preferences(spec)
  except PreferenceFileError as e:
    raise DataError(str(e)) from None
  pairs, skipped, defaulted = [], list(res.skipped), 0
  for ex in res.examples:
    if len(ex.responses) != 2:
      skipped.append((ex.id, f"{len(ex.responses)} responses, expected a pair"))
      continue
    alpha = ex.alpha
    if alpha is None:
      alpha, defaulted = default_alpha, defaulted + 1
    pairs.append(dict(prompt=ex.prompt, chat=ex.chat, chosen=ex.responses[0],
                      rejected=ex.responses[1], alpha=float(alpha), id=ex.id))
  num_parsed = len(pairs)
  if limit:
    pairs = pairs[:limit]
  note = (f"{defaulted} single-label rows use alpha={default_alpha}" if defaulted
          else "alpha from the data")
  return Pairs(pairs, skipped, res.source, res.format, res.unit, note, num_parsed)
