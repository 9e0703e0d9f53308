"""Hyper-parameter choice on the validation prompts (``frame.tune``, ``frame.grid``)."""
from prefjax.studies.real.frame import grid, tune, tune_once


class _Env:
  """``accuracy(params, split)`` reads the validation accuracy a fake training stored."""

  def __init__(self):
    self.judged = []

  def accuracy(self, params, split="val"):
    self.judged.append((params["lr"], split))
    return params["val"]


def test_grid_is_every_combination_in_order():
  assert grid({"lr": [1, 2], "beta": [3]}) == [{"lr": 1, "beta": 3}, {"lr": 2, "beta": 3}]


def test_tune_keeps_the_best_validation_accuracy_first_on_ties():
  env = _Env()
  val = {1e-6: 0.25, 3e-6: 0.5, 1e-5: 0.5}
  params, hp, vals, _ = tune(env, lambda lr: {"lr": lr, "val": val[lr]},
                             grid({"lr": [1e-6, 3e-6, 1e-5]}))
  assert (hp, params["lr"], vals) == ({"lr": 3e-6}, 3e-6, [0.25, 0.5, 0.5])
  assert env.judged == [(1e-6, "val"), (3e-6, "val"), (1e-5, "val")]


def test_tune_with_one_setting_trains_it_without_judging():
  env = _Env()
  params, hp, vals, _ = tune(env, lambda lr: {"lr": lr, "val": 0.0}, [{"lr": 1e-6}])
  assert (params["lr"], hp, vals, env.judged) == (1e-6, {"lr": 1e-6}, [None], [])


def test_tune_once_tunes_a_key_the_first_time_and_reuses_its_setting():
  env, chosen, trained = _Env(), {}, []
  val = {1e-6: 0.5, 3e-6: 0.25}

  def train(lr):
    trained.append(lr)
    return {"lr": lr, "val": val[lr]}
  params, hp, best = tune_once(env, chosen, "dpo", train, {"lr": [1e-6, 3e-6]})
  assert (params["lr"], hp, best, chosen) == (1e-6, {"lr": 1e-6}, 0.5, {"dpo": {"lr": 1e-6}})
  params, hp, best = tune_once(env, chosen, "dpo", train, {"lr": [1e-6, 3e-6]})
  assert (params["lr"], hp, best) == (1e-6, {"lr": 1e-6}, None)
  assert trained == [1e-6, 3e-6, 1e-6] and len(env.judged) == 2
