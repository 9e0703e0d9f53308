"""A persistent JAX compilation cache shared by every prefjax CLI.

``enable()`` points JAX's on-disk cache (config ``jax_compilation_cache_dir``) at
``~/.cache/prefjax/jax_cache`` (or ``$XDG_CACHE_HOME/prefjax/jax_cache``), so a second run
of the same step on the same shapes loads the compiled executable instead of compiling it.

Environment ``PREFJAX_COMPILE_CACHE``: unset or empty -> the default directory; ``0``,
``off``, ``false``, ``no`` -> disabled; anything else -> that directory. An explicit
``directory`` argument wins over the environment. Call it before the first compilation.

The cache is trusted code (an executable per entry): keep it in a directory only you can
write (https://docs.jax.dev/en/latest/persistent_compilation_cache.html).
"""
from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "PREFJAX_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no")


def default_directory() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "prefjax" / "jax_cache"


def resolve(directory: str | os.PathLike | None = None) -> Path | None:
  """The cache directory ``enable`` would use, or None when disabled."""
  if directory is not None:
    return Path(directory).expanduser()
  env = os.environ.get(ENV, "").strip()
  if env.lower() in _OFF:
    return None
  return Path(env).expanduser() if env else default_directory()


def enable(directory: str | os.PathLike | None = None, *,
           min_compile_secs: float = 0.5) -> Path | None:
  """Turns the persistent compilation cache on; returns its directory (None: disabled).

  Args:
    directory: cache directory; None reads ``PREFJAX_COMPILE_CACHE`` / the default.
    min_compile_secs: only programs that took at least this long to compile are stored
      (``jax_persistent_cache_min_compile_time_secs``); tiny helper jits are not worth a file.
  """
  path = resolve(directory)
  if path is None:
    return None
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
