"""Corrupted preference files: every case ends in counted skips or one PreferenceFileError
line -- never a hang, a crash or another exception."""
import gzip
import json
import random
import time

import pytest

from prefjax.data import PreferenceFileError, read_preferences

ROWS = {
    "jsonl": [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "alpha": 0.75}
              for i in range(20)],
    "hh": [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes {i}",
            "rejected": f"\n\nHuman: q{i}\n\nAssistant: no {i}"} for i in range(20)],
}


def _jsonl(rows) -> bytes:
  return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _check(path, n_rows=None, budget_s=10.0):
  """Reads ``path``; returns ('skips', result) or ('error', message). Anything else fails."""
  t0 = time.perf_counter()
  try:
    result = read_preferences(str(path))
    outcome = ("skips", result)
    if n_rows is not None:   # every row is either an example or a counted skip
      assert len(result.examples) + len(result.skipped) == n_rows
    assert all(isinstance(loc, int) and "\n" not in reason for loc, reason in result.skipped)
  except PreferenceFileError as e:
    msg = str(e)
    assert msg.startswith(str(path)) and "\n" not in msg and len(msg) < 500, msg
    outcome = ("error", msg)
  assert time.perf_counter() - t0 < budget_s
  return outcome


@pytest.mark.parametrize("fmt", list(ROWS))
@pytest.mark.parametrize("seed", range(6))
def test_byte_flips_in_json_lines(tmp_path, fmt, seed):
  data = bytearray(_jsonl(ROWS[fmt]))
  rng = random.Random(seed)
  for _ in range(1 + seed * 5):
    data[rng.randrange(len(data))] = rng.randrange(256)
  path = tmp_path / f"flipped.{'jsonl'}"
  path.write_bytes(bytes(data))
  kind, _ = _check(path, n_rows=None)
  assert kind in ("skips", "error")


@pytest.mark.parametrize("seed", range(4))
def test_byte_flips_in_json_array_and_gzip(tmp_path, seed):
  rng = random.Random(seed)
  array = bytearray(json.dumps(ROWS["jsonl"]).encode())
  array[rng.randrange(len(array))] = rng.randrange(256)
  (tmp_path / "a.json").write_bytes(bytes(array))
  _check(tmp_path / "a.json")
  packed = bytearray(gzip.compress(_jsonl(ROWS["jsonl"])))
  for _ in range(3):
    packed[rng.randrange(10, len(packed))] = rng.randrange(256)   # keep the magic bytes
  (tmp_path / "b.jsonl.gz").write_bytes(bytes(packed))
  _check(tmp_path / "b.jsonl.gz")


@pytest.mark.parametrize("cut", [3, 20, -8, -1])
def test_truncated_gzip_is_one_error(tmp_path, cut):
  packed = gzip.compress(_jsonl(ROWS["hh"]))
  path = tmp_path / "t.jsonl.gz"
  path.write_bytes(packed[:cut])
  kind, msg = _check(path)
  assert kind == "error" and "corrupt gzip" in msg


def test_invalid_utf8_line_is_a_counted_skip(tmp_path):
  lines = _jsonl(ROWS["jsonl"]).split(b"\n")
  lines[4] = b'{"prompt": "\xff\xfe bad", "chosen": "a", "rejected": "b"}'
  path = tmp_path / "u.jsonl"
  path.write_bytes(b"\n".join(lines))
  kind, result = _check(path, n_rows=20)
  bad_byte = lines[4].index(b"\xff")
  assert kind == "skips" and result.skipped == [(5, f"not UTF-8 (byte {bad_byte})")]
  (tmp_path / "u.json").write_bytes(b'[{"prompt": "\xc3\x28"}]')
  kind, msg = _check(tmp_path / "u.json")
  assert kind == "error" and "not UTF-8 text" in msg


@pytest.mark.parametrize("valid", [True, False])
def test_a_100_mb_line(tmp_path, valid):
  big = b"x" * (100 * 2 ** 20)
  line = (b'{"prompt": "' + big + b'", "chosen": "a", "rejected": "b"}' if valid
          else b'{"prompt": "' + big)        # unterminated: bad JSON
  path = tmp_path / "big.jsonl"
  with open(path, "wb") as f:
    f.write(_jsonl(ROWS["jsonl"][:2]) + line + b"\n" + _jsonl(ROWS["jsonl"][2:4]))
  del big, line
  kind, result = _check(path, n_rows=5, budget_s=15.0)
  assert kind == "skips"
  if valid:
    assert len(result.examples) == 5 and len(result.examples[2].prompt) == 100 * 2 ** 20
  else:
    assert [loc for loc, _ in result.skipped] == [3] and len(result.examples) == 4
    assert "bad JSON" in result.skipped[0][1]


WRONG_TYPES = [5, "text", None, [1, 2], True, {"prompt": 1, "chosen": "a", "rejected": "b"},
               {"prompt": "p", "chosen": ["a"], "rejected": "b"},
               {"prompt": "p", "chosen": "a", "rejected": {"x": 1}},
               {"prompt": "p", "chosen": "a", "rejected": "b", "alpha": "high"},
               {"prompt": "p", "chosen": "a", "rejected": "b", "alpha": float("nan")},
               {"prompt": "p", "chosen": "a", "rejected": "b", "alpha": 1e400},
               {"prompt": "p", "chosen": None, "rejected": "b"},
               {"prompt": "p", "chosen": "a"}]


def test_wrong_json_types_are_counted_skips(tmp_path):
  rows = ROWS["jsonl"][:1] + WRONG_TYPES
  path = tmp_path / "w.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  kind, result = _check(path, n_rows=len(rows))
  assert kind == "skips" and len(result.examples) == 1
  assert [loc for loc, _ in result.skipped] == list(range(2, len(rows) + 1))
  arr = tmp_path / "w.json"                     # the same rows as a JSON array
  arr.write_text(json.dumps(rows))
  kind, result = _check(arr, n_rows=len(rows))
  assert kind == "skips" and len(result.examples) == 1


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"[]", b"{}", b"42", b"null",
                                     b"[" * 100_000, b"{\"a\":" * 100_000, b"\x00" * 64])
def test_empty_degenerate_and_deeply_nested_files_are_one_error(tmp_path, content):
  for name in ("e.jsonl", "e.json"):
    path = tmp_path / name
    path.write_bytes(content)
    kind, _ = _check(path)
    assert kind == "error"


def test_deeply_nested_row_is_a_counted_skip(tmp_path):
  path = tmp_path / "n.jsonl"
  path.write_bytes(_jsonl(ROWS["jsonl"][:3]) + b"[" * 100_000 + b"\n")
  kind, result = _check(path, n_rows=4)
  assert kind == "skips" and [loc for loc, _ in result.skipped] == [4]
