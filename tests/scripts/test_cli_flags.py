"""The absl-flag CLIs of generate.py, study_insights.py, study_multi_sample.py,
experiments/ranking/study_testbed.py and experiments/notebooks/make_notebooks.py: their flags
(underscore names, absl bools) parse, a bad value is one ``error:`` line with exit 1, and the
old hyphenated names are refused. Flag parsing and validation only: nothing is trained."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GENERATE = os.path.join(REPO, "scripts", "generate.py")
INSIGHTS = os.path.join(REPO, "scripts", "study_insights.py")
MULTI = os.path.join(REPO, "scripts", "study_multi_sample.py")
TESTBED = os.path.join(REPO, "experiments", "ranking", "study_testbed.py")
NOTEBOOKS = os.path.join(REPO, "experiments", "notebooks", "make_notebooks.py")


def _run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PREFJAX_COMPILE_CACHE="0")
  return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)


def _one_line_error(r, message):
  assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
  assert message in lines[0], lines[0]


@pytest.mark.parametrize("script,names", [
    (GENERATE, ["--model", "--prompt", "--max_new_tokens", "--temperature", "--seed"]),
    (INSIGHTS, ["--out", "--[no]quick", "--seed", "--starts"]),
    (MULTI, ["--out", "--[no]quick", "--seed", "--lr", "--align_steps"]),
    (TESTBED, ["--workdir", "--workdirs", "--out", "--n_prompts", "--n_samples"]),
    (NOTEBOOKS, ["--[no]check"]),
])
def test_help_lists_the_underscore_flags(script, names):
  r = _run(script, "--help")
  for name in names:
    assert f"  {name}:" in r.stdout, (name, r.stdout[-2000:])
  assert "-new-tokens" not in r.stdout and "align-steps" not in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--max_new_tokens=0", "--temperature=0.5", "--seed=3"],
     "--max_new_tokens must be at least 1, got 0"),
    (["--max_new_tokens=4", "--temperature=-1"], "--temperature must be >= 0"),
    (["--max_new_tokens=4", "stray"], "unexpected arguments ['stray']"),
])
def test_generate_bad_values(tmp_path, args, message):
  _one_line_error(_run(GENERATE, f"--model={tmp_path}/m.gguf", "--prompt=hi", *args), message)


def test_generate_missing_model_and_old_flag(tmp_path):
  _one_line_error(_run(GENERATE, "--model", tmp_path / "nope.gguf", "--prompt", "hi",
                       "--max_new_tokens", "4"), "no such GGUF file")
  r = _run(GENERATE, f"--model={tmp_path}/m.gguf", "--prompt=hi", "--max-new-tokens=4")
  assert r.returncode == 1 and "max-new-tokens" in r.stderr and not (tmp_path / "m.gguf").exists()


def test_study_insights_bad_starts(tmp_path):
  out = tmp_path / "out"
  _one_line_error(_run(INSIGHTS, f"--out={out}", "--quick", "--seed=1", "--starts=sft,bogus"),
                  "--starts: unknown start(s) ['bogus']; choose from sft, base, other_tasks")
  _one_line_error(_run(INSIGHTS, f"--out={out}", "--noquick", "--starts=,"),
                  "--starts: unknown start(s) []")
  assert not out.exists()


@pytest.mark.slow
def test_study_multi_sample_bad_overrides(tmp_path):
  out = tmp_path / "out"
  _one_line_error(_run(MULTI, f"--out={out}", "--quick", "--seed=1", "--lr=-1e-4",
                       "--align_steps=5"), "--lr / --align_steps must be positive")
  _one_line_error(_run(MULTI, "--out", out, "--noquick", "--align_steps", "0"),
                  "--lr / --align_steps must be positive, got {'align_steps': 0}")
  r = _run(MULTI, f"--out={out}", "--quick", "--align-steps=5")
  assert r.returncode == 1 and "align-steps" in r.stderr
  assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["bogus"], "expected one study, flips or gamma, got ['bogus']"),
    ([], "expected one study, flips or gamma, got []"),
    (["flips", "--n_prompts=8"], "flips needs --workdir"),
    (["gamma", "--workdirs=0=/a,oops", "--n_samples=1"],
     "--workdirs: expected GAMMA=WORKDIR[,GAMMA=WORKDIR...], got '0=/a,oops'"),
])
def test_study_testbed_bad_arguments(tmp_path, args, message):
  _one_line_error(_run(TESTBED, *args, f"--out={tmp_path}/out"), message)


def test_make_notebooks_check_and_bad_argument():
  pytest.importorskip("nbformat")
  r = _run(NOTEBOOKS, "--check")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout == ""
  _one_line_error(_run(NOTEBOOKS, "--check", "extra"), "unexpected arguments ['extra']")
