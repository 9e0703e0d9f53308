"""Weights & Biases logging (prefjax.train.wandb_logger): a tiny testbed run with the real
package in offline mode writes a run whose history holds the scalars of metrics.jsonl; the
run finishes with 0, or 75 and a preempting mark after SIGTERM; only process 0 logs; a
missing package or a bad mode stops before the run writes anything."""
import glob
import json
import os
import struct
import sys

import pytest

from prefjax import distributed
from prefjax.errors import ConfigError
from prefjax.extras import MissingExtraError
from prefjax.train import wandb_logger
from prefjax.train.config import base_config
from prefjax.train.loop import Preempted
from prefjax.train.metrics_writer import MetricsWriter
from prefjax.train.run import run


@pytest.fixture
def wandb(monkeypatch, tmp_path):
  """The real package, offline, with its settings and cache under tmp_path."""
  module = pytest.importorskip("wandb", reason="the 'wandb' extra is not installed")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
    monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
  return module


def _records(wandb_dir):
  """``(kind, record)`` of the one offline run under ``wandb_dir``, read from its
  ``run-ID.wandb`` file: a 7-byte header, then LevelDB-log records (32 KiB blocks of
  chunks with a 7-byte header: crc32, length, type) holding protobuf ``Record``s."""
  import wandb
  from wandb.proto import wandb_internal_pb2
  wandb.teardown()      # the service process writes the file; finish() may return first
  files = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
  assert len(files) == 1, files
  data = open(files[0], "rb").read()
  assert data[:4] == b":W&B"
  pos, chunks, out = 7, b"", []
  while pos + 7 <= len(data):
    left = 32768 - pos % 32768
    if left < 7:                         # a block's tail too short for a header: padding
      pos += left
      continue
    length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
    chunks += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):                   # FULL, or the LAST chunk of a record
      rec = wandb_internal_pb2.Record()
      rec.ParseFromString(chunks)
      out.append((rec.WhichOneof("record_type"), rec))
      chunks = b""
  return out


def _history(records):
  return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
           for item in rec.history.item} for kind, rec in records if kind == "history"]


def _config(tmp_path, **fields):
  c = base_config()
  c.stages = ("sft", "dpo")
  c.model.overrides.update(dict(n_layers=1, dim=32, n_heads=2, n_kv_heads=1, head_dim=16,
                                mlp_dim=64))
  c.testbed.n_sft, c.testbed.n_pairs, c.testbed.n_eval_pairs = 64, 32, 16
  c.sft.steps, c.sft.batch_size, c.dpo.steps, c.dpo.batch_size = 2, 8, 2, 8
  c.progress, c.tensorboard, c.log_every, c.checkpoint.every = False, False, 1, 0
  c.ranking.enabled, c.export.enabled = False, False
  c.wandb.update(dict(enabled=True, project="prefjax-test", dir=str(tmp_path / "wb"), **fields))
  return c


def test_offline_run_holds_the_scalars_of_metrics_jsonl(wandb, tmp_path):
  workdir = tmp_path / "run"
  summary = run(_config(tmp_path, name="tiny"), str(workdir))
  metrics = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
  assert {m["stage"] for m in metrics} == {"sft", "dpo"}
  records = _records(tmp_path / "wb")
  history = _history(records)
  assert len(history) == len(metrics)
  for m, h in zip(metrics, history):
    stage = m.pop("stage")
    assert h[f"{stage}/step"] == m.pop("step")
    assert {k: h[f"{stage}/{k}"] for k in m} == pytest.approx(m)
  (run_rec,) = [r.run for kind, r in records if kind == "run"]
  assert (run_rec.project, run_rec.display_name) == ("prefjax-test", "tiny")
  assert run_rec.run_id == open(workdir / "wandb_run_id").read().strip()
  config = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
  assert config["dpo"]["steps"] == 2 and config["wandb"]["enabled"] is True
  final = {}
  for kind, rec in records:
    if kind == "summary":
      final.update({i.key: json.loads(i.value_json) for i in rec.summary.update})
  assert final["wall_seconds"] == pytest.approx(summary["wall_seconds"])
  assert [r.exit.exit_code for kind, r in records if kind == "exit"] == [0]


def test_a_preempted_run_is_marked_and_finished_with_75(wandb, tmp_path):
  c = _config(tmp_path)
  with pytest.raises(Preempted):
    with MetricsWriter(str(tmp_path / "w"), tensorboard=False,
                       wandb=wandb_logger.WandbLogger.start(c, str(tmp_path / "w"))) as w:
      w.write("dpo", 1, {"loss": 0.69})
      raise Preempted("dpo", 1, "SIGTERM", str(tmp_path / "ck"))
  kinds = [kind for kind, _ in _records(tmp_path / "wb")]
  assert "preempting" in kinds
  assert [r.exit.exit_code for kind, r in _records(tmp_path / "wb") if kind == "exit"] == [75]


def test_only_process_0_logs(wandb, tmp_path, monkeypatch):
  started = []
  monkeypatch.setattr(distributed, "is_main", lambda: False)
  monkeypatch.setattr(wandb_logger.WandbLogger, "start",
                      classmethod(lambda cls, c, w: started.append(w)))
  c = _config(tmp_path)
  c.stages, c.sft.steps = ("sft",), 1
  run(c, str(tmp_path / "run"))
  assert started == [] and not (tmp_path / "wb").exists()


def test_missing_package_and_bad_mode_stop_before_any_output(tmp_path, monkeypatch):
  for name in [m for m in sys.modules if m == "wandb" or m.startswith("wandb.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "wandb", None)
  with pytest.raises(MissingExtraError, match=r"^logging to Weights & Biases \(config\.wandb\) "
                                              r"needs the 'wandb' package: pip install -e "
                                              r"'\.\[wandb\]'$"):
    run(_config(tmp_path), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  with pytest.raises(ConfigError, match=r"^config\.wandb\.mode: 'ofline' is not one of '', "
                                        r"'online', 'offline', 'disabled'$"):
    run(_config(tmp_path, mode="ofline"), str(tmp_path / "run"))
  wandb_logger.check(base_config())          # disabled: nothing to check, nothing imported
