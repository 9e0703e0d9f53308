"""prefjax/bench.py: fresh-process workers report their result, or why they have none."""
import json

import pytest

from prefjax import bench


def _worker(tmp_path, body):
  path = tmp_path / "worker.py"
  path.write_text("import json, os, signal, sys\n" + body)
  return str(path)


def test_result_line_and_peak_rss(tmp_path):
  script = _worker(tmp_path, "args = json.load(open(sys.argv[2].split('=', 1)[1]))\n"
                             f"print({bench.RESULT!r} + json.dumps({{'x': args['x'] * 2}}))\n")
  res = bench.run_worker(script, "w", {"x": 21})
  assert res["x"] == 42 and res["peak_rss_mb"] > 0


def test_killed_worker_names_the_signal(tmp_path):
  # The OOM killer sends SIGKILL: the report says so instead of echoing an unrelated log line.
  script = _worker(tmp_path, "print('some log line', flush=True)\n"
                             "os.kill(os.getpid(), signal.SIGKILL)\n")
  res = bench.run_worker(script, "w", {})
  assert res["error"].startswith("killed by signal 9 (out of memory?)")
  assert res["log_tail"] == ["some log line"]


@pytest.mark.slow
def test_failing_worker_reports_its_last_line(tmp_path):
  script = _worker(tmp_path, "print('error: no such file', flush=True)\nsys.exit(1)\n")
  assert bench.run_worker(script, "w", {})["error"] == "error: no such file"
  assert "timed out" in bench.run_worker(_worker(tmp_path, "import time\ntime.sleep(30)\n"),
                                         "w", {}, timeout=1)["error"]
  json.dumps(bench.run_worker(script, "w", {}))   # reports are JSON-serialisable
