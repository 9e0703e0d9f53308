"""RL arms of the studies: the recipe shortened to a study's budget, held reward sources."""
import pytest

from prefjax.errors import ConfigError
from prefjax.rl import reward_sources as rw
from prefjax.studies.real.rl_arm import Arm, hold, rl_section

BUDGET = dict(iterations=3, rollout_batch_size=12, minibatch_size=4, group_size=3,
              n_prompts=20)


@pytest.mark.parametrize("recipe,group", [("ppo", 1), ("grpo", 3)])
def test_rl_section_is_the_recipe_at_the_study_budget(recipe, group):
  r = rl_section(Arm("arm", recipe, "verifier"), BUDGET, lr=2e-6, kl_coef=0.07)
  assert (r.name, dict(r.rewards), r.lr, r.kl.coef) == ("arm", {"verifier": 1.0}, 2e-6, 0.07)
  assert (r.iterations, r.rollout_batch_size, r.minibatch_size, r.n_prompts) == (3, 12, 4, 20)
  assert r.group_size == group           # PPO keeps one sample per prompt
  assert r.checkpoint_every == 0         # an arm writes no checkpoint
  assert r.advantage.estimator == {"ppo": "gae", "grpo": "grpo"}[recipe]


def test_rl_section_keeps_the_recipe_kl_coef_unless_given():
  a = rl_section(Arm("a", "ppo", "verifier"), BUDGET, lr=1e-6)
  assert a.kl.coef == 0.02


def test_rl_section_takes_the_budgets_rollout_temperature_else_the_recipes():
  assert rl_section(Arm("a", "grpo", "verifier"), BUDGET, lr=1e-6).temperature == 0.8
  hot = rl_section(Arm("a", "ppo", "verifier"), dict(BUDGET, temperature=0.5), lr=1e-6)
  assert hot.temperature == 0.5


def test_held_source_is_registered_only_inside_hold():
  src = rw.RewardSource(name="constant", level="sequence", fn=lambda view: [1.0])
  with hold("x", src) as key:
    assert key == "study_held:x"
    assert rw.make_source(key).fn is src.fn
  with pytest.raises(ConfigError, match="nothing held under 'x'"):
    rw.make_source("study_held:x")
