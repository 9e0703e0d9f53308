"""Every real-model study, registered by importing its module (``frame.STUDIES``)."""
from prefjax.errors import ConfigError
from prefjax.studies.real import calibration  # noqa: F401
from prefjax.studies.real import mdpo  # noqa: F401
from prefjax.studies.real import ranking  # noqa: F401
from prefjax.studies.real import token_rm  # noqa: F401
from prefjax.studies.real import variants  # noqa: F401
from prefjax.studies.real.frame import STUDIES, StudyDef


def get_study(name: str) -> StudyDef:
  if name not in STUDIES:
    raise ConfigError(f"unknown study {name!r}; registered: {', '.join(sorted(STUDIES))}")
  return STUDIES[name]
