"""Turns user errors into one clear line (no traceback) for every command-line tool."""
from __future__ import annotations

import sys

from prefjax.errors import PrefjaxError


def main_guard(fn) -> None:
  """Runs ``fn``; a PrefjaxError (or a misspelt config flag) exits 1 with one line."""
  try:
    fn()
  except PrefjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
