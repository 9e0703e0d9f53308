"""Where ``scripts/eval_ranking.py`` gets its pairs from (its models come from
``prefjax.train.finished_run.load_run``).

Pairs (``load_pairs(spec)``):
  * ``testbed:TASKS[:SPLIT]`` (``testbed:sort``, ``testbed:sort+add:train``): testbed pairs
    with the exact alpha of their Bradley-Terry label; the world of the workdir when the
    model is one, else the default world; SPLIT is ``eval`` (default) or ``train``;
  * any spec of ``prefjax.data.read_preferences`` (HH-RLHF, PandaLM, LLMBar, AlpacaEval,
    generic jsonl); unparseable rows are reported, never fatal.
"""
from __future__ import annotations

import dataclasses

from prefjax.data.preference_files import PreferenceFileError, read_preferences
from prefjax.errors import ConfigError, DataError
from prefjax.train import data_source


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
    data_source.check_testbed_tasks(names)
  except (KeyError, ValueError) as e:
    raise ConfigError(f"--data {spec}: {e}") from None
  n = limit or (config.testbed.n_eval_pairs if config is not None else 256)
  rows = data_source.testbed_task_pairs(config, names, n, split=split)
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
