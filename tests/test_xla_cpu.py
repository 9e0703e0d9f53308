"""prefjax.xla_cpu: the memory scheduler is requested only before the backend starts and
never over a user's own XLA_FLAGS."""
from prefjax import xla_cpu


def test_user_flags_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--{xla_cpu.FLAG}=true")
  monkeypatch.setattr(xla_cpu, "_backends_started", lambda: False)
  assert xla_cpu.prefer_memory_scheduler() == "user XLA_FLAGS"
  assert xla_cpu.FLAG + "=true" in xla_cpu.os.environ["XLA_FLAGS"]


def test_requests_the_memory_scheduler_before_the_backend_starts(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  monkeypatch.setattr(xla_cpu, "_backends_started", lambda: False)
  assert xla_cpu.prefer_memory_scheduler() == "memory"
  assert xla_cpu.os.environ["XLA_FLAGS"] == (
      f"--xla_force_host_platform_device_count=8 --{xla_cpu.FLAG}=false")


def test_too_late_once_the_backend_runs(monkeypatch):
  import jax.numpy as jnp
  jnp.zeros(1).block_until_ready()                    # the backend is up in this process
  monkeypatch.setenv("XLA_FLAGS", "")
  assert xla_cpu.prefer_memory_scheduler() == "concurrency (backend already started)"
  assert xla_cpu.FLAG not in xla_cpu.os.environ["XLA_FLAGS"]
