"""Online preference rounds: examples from scored samples, and rounds through the shared loop."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from prefjax import sharding
from prefjax.data.prompts import PromptItem
from prefjax.errors import ConfigError
from prefjax.models import Transformer, make_config
from prefjax.rl import online
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.config import base_config
from prefjax.train.data_source import DataSource
from prefjax.train.metrics_writer import MetricsWriter
from prefjax.train.stages import RunContext

TOK = TestbedTokenizer()
CFG = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
    dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32))
ITEM = PromptItem(id="p", prompt="sort:2,1")


def test_pairs_groups_and_labels_from_scores():
  ys, s = ["a", "b", "c", "d"], [0.0, 1.0, 0.5, 1.0]
  bw = online.make_examples("pairwise", ITEM, ys, s)
  assert [(e["chosen"], e["rejected"]) for e in bw] == [("b", "a")]     # first best, worst
  every = online.make_examples("pairwise", ITEM, ys, s, pairs="all")
  want = {(ys[i], ys[j]) for i in range(4) for j in range(4) if s[i] > s[j]}
  assert {(e["chosen"], e["rejected"]) for e in every} == want and len(every) == 5
  (g,) = online.make_examples("multi", ITEM, ys, s)
  assert g["chosen"] == ["b", "d"] and g["rejected"] == ["a", "c"]      # best / worst first
  un = online.make_examples("unpaired", ITEM, ys, s)                    # mean 0.625
  assert {(e["response"], e["label"]) for e in un} == {("a", 0), ("b", 1), ("c", 0), ("d", 1)}
  tie = [1.0] * 4
  for kind in ("pairwise", "multi", "unpaired"):
    assert online.make_examples(kind, ITEM, ys, tie) == []


def _config(loss="dpo", **over):
  c = base_config()
  c.stages = ("online",)
  c.online = online.online_config()
  o = c.online
  o.rounds, o.prompts_per_round, o.k, o.steps_per_round, o.batch_size = 2, 4, 4, 2, 4
  o.max_new_tokens, o.n_prompts, o.lr = 12, 32, 1e-3
  o.loss = loss
  o.loss_kwargs = {"beta": 0.1} if loss != "kto" else {"beta": 0.1}
  o.rewards = {"length_penalty": 1.0}              # varied scores from a random model
  for k, v in over.items():
    o[k] = v
  c.data.max_len = 32
  c.data.group_size = 2
  c.progress, c.tensorboard = False, False
  return c


def _run(c, workdir):
  model = Transformer(CFG, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  params["embed"] = params["embed"] * 0.05             # softer logits: varied samples
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  ctx = RunContext(config=c, graphdef=graphdef, model_cfg=CFG, tokenizer=TOK, mesh=mesh,
                   param_shardings=sharding.param_shardings(model, mesh), workdir=str(workdir),
                   writer=MetricsWriter(str(workdir), tensorboard=False), data=DataSource(c, TOK))
  online.check_config(c)
  out = online.run_online_stage(ctx, c.online, jax.tree.map(np.copy, params))
  lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
  return params, out, lines


@pytest.mark.parametrize("loss,over", [("dpo", {}), ("dpo", {"reference": "previous",
                                                             "pairs": "all"}),
                                       ("mdpo", {}), ("kto", {})])
def test_online_rounds_train_through_the_shared_step(tmp_path, loss, over):
  start, out, lines = _run(_config(loss, **over), tmp_path)
  assert [d["online/round"] for d in lines] == [1, 2]
  assert [d["step"] for d in lines] == [2, 4]
  assert all(np.isfinite(d["loss"]) for d in lines)
  assert any(d["online/examples"] > 0 for d in lines)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), start, out))
  assert max(moved) > 0


def test_checkpoint_every_0_writes_no_checkpoint_and_trains_the_same(tmp_path):
  _, a, la = _run(_config(), tmp_path / "a")
  _, b, lb = _run(_config(checkpoint_every=0), tmp_path / "b")
  assert (tmp_path / "a" / "checkpoints" / "online").is_dir()
  assert not (tmp_path / "b" / "checkpoints").exists()
  jax.tree.map(np.testing.assert_array_equal, a, b)
  untimed = lambda lines: [{k: v for k, v in d.items()
                            if "seconds" not in k and "per_s" not in k and k != "time"}
                           for d in lines]
  assert untimed(la) == untimed(lb)


def test_online_config_errors_are_one_line():
  for over, match in [({"loss": "sft"}, "is a 'sft' loss"), ({"loss": "dpoo"}, "unknown loss"),
                      ({"k": 1}, "k must be >= 2"), ({"pairs": "best"}, "unknown 'best'"),
                      ({"reference": "sft"}, "unknown 'sft'"),
                      ({"loss": "mdpo", "k": 3}, "must be even"),
                      ({"rewards": {"verifer": 1.0}}, "did you mean verifier")]:
    c = _config()
    for k, v in over.items():
      c.online[k] = v
    with pytest.raises(ConfigError, match=match):
      online.check_config(c)
