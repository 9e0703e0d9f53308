"""Study: ranking accuracy and the alignment gap of a real model before and after DPO
(arXiv 2405.19534) on a finished SFT -> DPO workdir on real pairs; writes OUT/table1.md,
flips.md, flips.png and results.json (see ``prefjax/eval/real_ranking_study.py``).

  python scripts/study_real_ranking.py --workdir runs/smollm2_dpo --out experiments/real/ranking
"""
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished SFT -> DPO workdir on real pairs.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_BETAS = flags.DEFINE_string("beta_grid", "0.01,0.1,1,5,10", "Betas of the idealized accuracy.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Most sequences per forward pass.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from prefjax.eval.real_ranking_study import study
  betas = tuple(float(b) for b in _BETAS.value.split(","))
  study(_WORKDIR.value, _OUT.value, betas=betas, batch_size=_BATCH.value,
        progress=_PROGRESS.value)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
