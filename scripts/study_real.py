"""Re-runs a paper's headline result on SmolLM2-135M-Instruct, judged exactly by a verifiable
task (reasoning-gym chain_sum; see experiments/real/README.md for each study's claims,
commands and results).

  python scripts/study_real.py --study mdpo --out runs/study_mdpo            # full size
  python scripts/study_real.py --study mdpo --quick --out /tmp/study_mdpo    # minutes
  python scripts/study_real.py --study all --quick --out /tmp/studies        # OUT/NAME each

Studies: mdpo (arXiv 2410.12138), variants (2404.14723), calibration (2409.17407), ranking
(2405.19534), token_rm (2406.02756). Writes OUT/results.json (one row per run and seed, the
per-arm mean +- SE and a verdict per claim), results.csv, results.md and results.png; the
start model's samples are cached under --samples_dir (default OUT/samples) and reused.
Each finished run is also appended to OUT/rows.jsonl (and printed) as it completes.
Several studies (``--study all`` or a comma-separated list) run in one process, each written
under OUT/NAME: the model is loaded once and its compiled programs, the start model's greedy
answers and samples are shared.
"""
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard
from prefjax.errors import ConfigError

_STUDY = flags.DEFINE_string("study", None, "Registered study name, a comma-separated list "
                             "of them, or 'all' (each written under OUT/NAME).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes: a smoke run of a few minutes.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds (default: the study's, 3 at full size).")
_SAMPLES_DIR = flags.DEFINE_string("samples_dir", None,
                                   "Cache of the start model's samples (default OUT/samples); "
                                   "share it between studies to sample once.")

_SET = flags.DEFINE_multi_string("set", [], "KEY=JSON: override one of the study's budget "
                                 "settings, e.g. --set steps=64 --set grid='\"full\"'.")


def _overrides(items):
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"--set {item!r}: expected KEY=JSON")
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value                      # a bare string
  return out


def _print(doc, out):
  for c in doc["claims"]:
    print(f"{c['claim']}: {c['difference']:+.3f} +- {c['se']:.3f} -> {c['verdict']}")
  print(f"wrote {out}/results.{{json,csv,md,png}}")


def main(argv):
  del argv
  from prefjax.studies.real import run_studies, run_study, study_names
  names = study_names(_STUDY.value)
  kw = dict(quick=_QUICK.value, seeds=_SEEDS.value, samples_dir=_SAMPLES_DIR.value,
            overrides=_overrides(_SET.value))
  if len(names) == 1 and _STUDY.value.strip() != "all":
    _print(run_study(names[0], _OUT.value, **kw), _OUT.value)
    return
  for name, doc in run_studies(names, _OUT.value, **kw).items():
    _print(doc, os.path.join(_OUT.value, name))


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
