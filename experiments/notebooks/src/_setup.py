# The first cells of every notebook (after its title): install prefjax, the QUICK switch.
# %%
# Setup. Inside a clone of prefjax (this notebook under experiments/notebooks/) nothing is
# installed: the clone's prefjax is imported (install its dependencies once with
# `pip install -e .` from the clone's root). Elsewhere (Colab) prefjax is installed from git;
# set PREFJAX_GIT_URL (or edit REPO_URL) to the repository you cloned this notebook from.
import importlib.util
import os
import subprocess
import sys

REPO_URL = os.environ.get("PREFJAX_GIT_URL", "https://github.com/OWNER/prefjax")  # placeholder


def find_checkout(start=os.getcwd()):
  """The root of the prefjax clone this notebook is in (None outside one)."""
  d = os.path.abspath(start)
  for _ in range(4):
    if os.path.isfile(os.path.join(d, "prefjax", "__init__.py")) and \
        os.path.isfile(os.path.join(d, "setup.py")):
      return d
    d = os.path.dirname(d)
  return None


ROOT = find_checkout()
if ROOT is not None:
  sys.path.insert(0, ROOT)                      # this clone's prefjax first
elif importlib.util.find_spec("prefjax") is None:
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"])

# QUICK (default on; PREFJAX_NB_QUICK=0 turns it off): sizes that run in a few minutes on a
# 2-core CPU. The full settings are listed in the markdown cell below each QUICK switch.
QUICK = os.environ.get("PREFJAX_NB_QUICK", "1") != "0"
# SMOKE (PREFJAX_NB_QUICK=smoke; the test suite's setting): every cell runs at toy sizes, to
# check the code, not the numbers; the text below discusses QUICK and full results.
SMOKE = os.environ.get("PREFJAX_NB_QUICK") == "smoke"

import time
import warnings

import matplotlib.pyplot as plt
import numpy as np

warnings.filterwarnings("ignore")
T0 = time.perf_counter()
print(f"prefjax from {ROOT or 'site-packages'}; QUICK = {QUICK}; "
      f"{'SMOKE sizes; ' if SMOKE else ''}"
      f"1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
