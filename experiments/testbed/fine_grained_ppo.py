"""Testbed fine-grained PPO (Xu et al., arXiv 2406.02756): SFT, a token-level reward model
trained on (flawed, minimally edited) pairs, PPO on its dense per-token rewards, exact eval.

The same stage and code path as experiments/testbed/ppo.py; only the reward source differs
(``config.rl.rewards = {"token_rm": 1.0}``). The token RM's precision and recall of flawed
tokens on held-out edits are written to ``summary.json`` / ``<workdir>/ppo_summary.json``.

Run:
  python scripts/train.py --config experiments/testbed/fine_grained_ppo.py --workdir runs/fgppo
  python scripts/train.py --config experiments/testbed/fine_grained_ppo.py:quick --workdir /tmp/q
Variants:
  --config.rl.token_rm.label_coef=0.0     (Bradley-Terry only, no token labels)

Why label_coef = 1 by default: the testbed's edits keep the length, so Bradley-Terry on
summed token rewards cannot identify a constant per-token offset (it cancels in R_w - R_l).
With BT only, the pilot's token RM gave ~+2.3 per token and PPO learnt to stop emitting the
end token to collect more (oracle reward 0.73 -> 0.13, KL 23; experiments/rlhf/README.md).
The edit-diff labels pin unflawed tokens near 0.
"""
import importlib.util
import os

# The sibling ppo.py by path (config files are loaded by path, not as a package).
_spec = importlib.util.spec_from_file_location(
    "_testbed_ppo_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "ppo.py"))
ppo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ppo)


def get_config(arg=None):
  c = ppo.get_config(arg)
  c.rl.rewards = {"token_rm": 1.0}
  c.rl.token_rm.steps, c.rl.token_rm.n_pairs = (20, 256) if arg == "quick" else (300, 4000)
  c.rl.token_rm.label_coef = 1.0
  return c
