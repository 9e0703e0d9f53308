"""The persistent compilation cache: directory resolution and a real second-process hit."""
import os
import subprocess
import sys
import textwrap

from prefjax import compile_cache

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_resolve_env_and_argument(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.resolve() == tmp_path / "prefjax" / "jax_cache"
  for off in ("0", "off", "False"):
    monkeypatch.setenv(compile_cache.ENV, off)
    assert compile_cache.resolve() is None
    assert compile_cache.enable() is None
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "x"))
  assert compile_cache.resolve() == tmp_path / "x"
  assert compile_cache.resolve(tmp_path / "y") == tmp_path / "y"   # the argument wins


PROGRAM = textwrap.dedent("""
  import time, jax, jax.numpy as jnp
  from prefjax import compile_cache
  compile_cache.enable(min_compile_secs=0)
  hits = []
  jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
  def f(x):
    for i in range(30):
      x = jnp.sin(x @ x.T + i)
    return x
  t = time.perf_counter()
  jax.jit(f).lower(jnp.ones((64, 64))).compile()
  print(sum('cache_hits' in h for h in hits), time.perf_counter() - t)
""")


def test_second_process_hits_the_cache(tmp_path):
  env = dict(os.environ, PREFJAX_COMPILE_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
  run = lambda: subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                               text=True, check=True).stdout.split()
  first, second = run(), run()
  assert int(first[0]) == 0 and int(second[0]) >= 1, (first, second)
  assert any((tmp_path / "cache").iterdir())
