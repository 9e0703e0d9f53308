"""The TFDS builder writes array_record that grain reads back, equal to the world's data."""
import grain

from prefjax.testbed import world
from prefjax.testbed.tfds_builder import TestbedBuilder, TestbedBuilderConfig, decode


def test_builder_writes_array_record_read_by_grain(tmp_path):
  cfg = TestbedBuilderConfig(name="tiny", tasks=("sort", "add"), n_sft=40, n_pairs=30,
                             n_eval_pairs=10)
  builder = TestbedBuilder(config=cfg, data_dir=str(tmp_path))
  builder.download_and_prepare(file_format="array_record")
  assert any(p.name.startswith("testbed_builder-pairs.array_record")
             for p in (tmp_path / "testbed_builder" / "tiny" / "1.0.0").iterdir())
  ds = grain.MapDataset.source(builder.as_data_source(split="pairs")).map(decode)
  got = {ex["id"]: ex for ex in (ds[i] for i in range(len(ds)))}
  want = world.preference_pairs(world.WorldConfig(tasks=("sort", "add")), 30)
  assert len(got) == 30
  for ex in want:
    g = got[ex["id"]]
    assert (g["prompt"], g["chosen"], g["rejected"]) == (ex["prompt"], ex["chosen"], ex["rejected"])
    assert abs(g["alpha"] - ex["alpha"]) < 1e-6
  assert len(builder.as_data_source(split="sft")) == 40
