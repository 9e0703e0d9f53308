"""Real-model studies: five papers' headline claims re-run on SmolLM2-135M-Instruct, judged
exactly by a verifiable task (``scripts/study_real.py``, experiments/real/README.md)."""
from prefjax.studies.real.common import Env, Pool, Sizes, load_env, noisy_scores
from prefjax.studies.real.frame import STUDIES, Settings, register_study
from prefjax.studies.real.registry import get_study
from prefjax.studies.real.runner import (missing_requirements, run_studies, run_study,
                                         show_study, study_names)

__all__ = ["Env", "Pool", "Sizes", "load_env", "noisy_scores", "STUDIES", "Settings",
           "get_study", "missing_requirements", "register_study", "run_studies", "run_study",
           "show_study", "study_names"]
