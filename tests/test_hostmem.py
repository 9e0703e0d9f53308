"""prefjax.hostmem.trim gives freed heap pages back to the OS (glibc)."""
import sys

import numpy as np
import pytest

from prefjax import hostmem


def _rss_mb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS"):
        return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or hostmem._malloc_trim() is None,
                    reason="needs glibc's malloc_trim (Linux)")
def test_trim_returns_freed_heap_pages():
  # As checkpoint conversion does: many few-MB temporaries freed while a later allocation
  # pins the top of the heap, so glibc keeps the freed pages resident until trimmed.
  np.ones(16 << 20, np.uint8)                     # raises glibc's mmap threshold to 16 MB
  temps = [np.ones(4 << 20, np.uint8) for _ in range(80)]
  pin = np.ones(1 << 20, np.uint8)
  del temps
  before = _rss_mb()
  assert hostmem.trim() is True
  after = _rss_mb()
  assert before - after > 150, (before, after)
  assert pin.sum() == 1 << 20


def test_trim_is_safe_to_call_anywhere():
  assert hostmem.trim() in (True, False)
