"""Turns user errors into one clear line (no traceback) for every command-line tool."""
from __future__ import annotations

import ast
import importlib.util
import sys

from prefjax.errors import ConfigError, PrefjaxError


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_prefjax_config", path)
  if module_spec is None:
    raise ConfigError(f"--config: cannot load config file {path!r}")
  try:
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except FileNotFoundError:
    raise ConfigError(f"--config: no such config file {path!r}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config: {path} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


# Dict fields whose keys are free-form here (validated later by their consumer).
OPEN_FIELDS = ("loss_kwargs", "overrides", "options", "rewards", "reward_kwargs", "kwargs",
               "lr_multipliers")


def check_config_overrides(argv, flag: str = "config") -> None:
  """Raises ConfigError for ``--config.a.b=v`` when ``a.b`` is not a field of the config.

  ml_collections would raise a bare AttributeError deep in flag parsing; this names the
  misspelt field and lists the valid ones at that level.
  """
  spec = None
  for i, a in enumerate(argv):
    if a.startswith(f"--{flag}="):
      spec = a.split("=", 1)[1]
    elif a == f"--{flag}" and i + 1 < len(argv):
      spec = argv[i + 1]
  overrides = [a[len(f"--{flag}."):].split("=", 1)[0] for a in argv
               if a.startswith(f"--{flag}.")]
  if spec is None or not overrides:
    return
  config = _load_config(spec)
  for path in overrides:
    node, walked = config, []
    for part in path.split("."):
      if walked and walked[-1] in OPEN_FIELDS:   # checked against the loss's own signature
        break
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = ".".join([flag] + walked)
        raise ConfigError(f"unknown config field '{flag}.{path}': {where} has no field "
                          f"{part!r}; valid fields: {', '.join(sorted(keys))}")
      node = node[part]
      walked.append(part)


_OPEN_OVERRIDES: dict[str, object] = {}


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def strip_open_overrides(argv, flag: str = "config"):
  """Removes ``--config.<...>.loss_kwargs.<key>=v`` (free-form keys) from argv and keeps them
  for ``apply_open_overrides``: ml_collections cannot add keys that the file did not define."""
  kept = []
  for a in argv:
    head = a.split("=", 1)[0]
    parts = head[len(f"--{flag}."):].split(".") if head.startswith(f"--{flag}.") else []
    if "=" in a and any(p in OPEN_FIELDS for p in parts[:-1]):
      _OPEN_OVERRIDES[".".join(parts)] = _parse_value(a.split("=", 1)[1])
    else:
      kept.append(a)
  return kept


def apply_open_overrides(config):
  """Sets the overrides kept by ``strip_open_overrides`` (adding keys where needed)."""
  for path, value in _OPEN_OVERRIDES.items():
    *parents, key = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.unlocked():
      node[key] = value
  return config


EXIT_PREEMPTED = 75   # EX_TEMPFAIL (sysexits.h): "try again later" -- re-run to resume


def _compile_cache() -> None:
  """The persistent JAX compilation cache (``prefjax.compile_cache``; PREFJAX_COMPILE_CACHE=0
  disables it) for every CLI."""
  from prefjax import compile_cache
  compile_cache.enable()


def main_guard(fn, argv=None) -> None:
  """Runs ``fn``; a PrefjaxError (e.g. a misspelt config field) exits 1 with one line.

  A preempted run (SIGTERM/SIGINT during training, ``prefjax.train.loop.Preempted``) exits
  with ``EXIT_PREEMPTED`` = 75 and ``preempted: ... checkpoint at step N written; re-run
  the same command to resume``, so a scheduler can tell it from a failure and requeue it.
  """
  try:
    check_config_overrides(sys.argv if argv is None else argv)
    _compile_cache()
    fn()
  except PrefjaxError as e:
    loop = sys.modules.get("prefjax.train.loop")   # loaded if it raised Preempted
    if loop is not None and isinstance(e, loop.Preempted):
      print(f"preempted: {e}", file=sys.stderr, flush=True)
      sys.exit(EXIT_PREEMPTED)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
