"""Optional dependencies: import them where they are needed, or say in one line which extra
installs them (never a bare ``ModuleNotFoundError`` traceback).

  gguf = require("gguf", "real", "reading a GGUF checkpoint")

Extras (``setup.py``): ``real`` (transformers, tokenizers, safetensors, gguf, jinja2; no
torch), ``calibration`` (statsmodels, scipy), ``tasks`` (reasoning-gym), ``hf`` (datasets),
``wandb`` (wandb), ``test`` (pytest), ``parity`` (torch, transformers, accelerate: the
references of the parity tests), ``bench`` (torch, transformers, accelerate, TRL, datasets).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from prefjax.errors import PrefjaxError


class MissingExtraError(PrefjaxError, ImportError):
  """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, what: str) -> ModuleType:
  """``import module`` (e.g. ``"jinja2.sandbox"``), or raise MissingExtraError:

  ``"<what> needs the '<package>' package: pip install -e '.[<extra>]'"``.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    package = module.split(".")[0]
    missing = (getattr(e, "name", None) or package).split(".")[0]
    if missing != package:   # the package is there but one of *its* imports failed
      package = missing
    raise MissingExtraError(
        f"{what} needs the '{package}' package: pip install -e '.[{extra}]'") from None
