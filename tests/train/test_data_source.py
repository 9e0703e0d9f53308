"""DataSource.encoder: the config's layout fields reach the row encoder."""
from prefjax.data import layout
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.config import base_config
from prefjax.train.data_source import DataSource


def _encoder(**data):
  c = base_config()
  c.data.update(data)
  return DataSource(c, TestbedTokenizer()).encoder("pairwise", batch_size=16)


def test_packed_rows_default_and_configured():
  enc = _encoder(layout="packed", max_len=32)
  assert isinstance(enc, layout.RowsEncoder)
  assert (enc.rows, enc.row_len, enc.n_examples) == (8, 64, 16)     # ceil(16 / 2) x 2 max_len
  enc = _encoder(layout="packed", max_len=32, rows=6, row_len=96)
  assert (enc.rows, enc.row_len, enc.n_examples) == (6, 96, 16)


def test_plain_layout_ignores_rows():
  assert not isinstance(_encoder(layout="plain", rows=6), layout.RowsEncoder)


def test_row_len_argument_overrides_the_configs():
  """A longer model (a reward model's rows, prompt + two verbose answers) asks for longer
  shared rows than config.data.row_len."""
  c = base_config()
  c.data.update(layout="prefix", max_len=32, row_len=48)
  src = DataSource(c, TestbedTokenizer())
  assert src.encoder("pairwise", batch_size=4).row_len == 48
  assert src.encoder("pairwise", batch_size=4, max_len=64, row_len=96).row_len == 96
  assert src.encoder("reward", batch_size=4, row_len=80).row_len == 80
