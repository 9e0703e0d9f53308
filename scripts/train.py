"""Train and evaluate: SFT, then preference optimisation from the SFT model, then eval.

  python scripts/train.py --config experiments/testbed/dpo.py --workdir runs/dpo
  python scripts/train.py --config experiments/testbed/dpo.py --workdir runs/dpo \
      --config.dpo.loss_kwargs.beta=0.05 --config.mesh.data=2

Re-running on the same --workdir resumes from the last checkpoint of each stage.
"""
import os
import json
import sys
from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (metrics, checkpoints, summary).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
  from prefjax.train import run
  summary = run.run(cli.apply_open_overrides(_CONFIG.value), _WORKDIR.value)
  print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
  sys.argv[:] = cli.strip_open_overrides(sys.argv)   # config_flags reads sys.argv itself
  cli.main_guard(lambda: app.run(main))
