"""Judge a policy against a reference on held-out prompts, exactly where a program can check.

  python scripts/eval_policy.py --model runs/grpo --reference SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data tasks:chain_sum --task_options '{"chain_sum": {"max_terms": 2, "max_digits": 1}}' \\
      --n 200 --out runs/grpo_eval --greedy

Both models (a HF directory, a .gguf file, a prefjax checkpoint, a finished workdir: its final
model, or one of its DPO checkpoints; ``prefjax.train.finished_run.load_run``) sample
the same held-out prompts with the same seeds and settings; a reward source scores every
sample (``--reward``; "" = the verifier of ``tasks:`` data). Writes ``OUT/generations.jsonl``
(one line per sample: model = policy | reference, prompt, response, score, and correct /
formatted for tasks) and ``OUT/summary.json``, and ends with the line
``policy/reference verified accuracy: P / R (n=N, win rate W)``.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard
from prefjax.errors import ConfigError, PrefjaxError

_MODEL = flags.DEFINE_string("model", None, "The policy: HF dir, .gguf, prefjax checkpoint or "
                             "workdir.", required=True)
_REFERENCE = flags.DEFINE_string("reference", None, "The reference model (same kinds).",
                                 required=True)
_DATA = flags.DEFINE_string("data", None, "Prompt source: tasks:NAME[,NAME], prompts:FILE or a "
                            "preference spec (hh:PATH, ...).", required=True)
_N = flags.DEFINE_integer("n", 200, "Held-out prompts.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_GREEDY = flags.DEFINE_bool("greedy", False, "Greedy decoding (else --temperature).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 1, "Samples per prompt and model.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Most tokens per response.")
_MAX_LEN = flags.DEFINE_integer("max_len", 512, "Longest prompt + response.")
_SEED = flags.DEFINE_integer("seed", 1234, "Sampling seed (the same for both models).")
_TASK_SEED = flags.DEFINE_integer("task_seed", 0, "Seed of the tasks' held-out prompts.")
_TASK_OPTIONS = flags.DEFINE_string("task_options", "{}", "JSON {task: {generator kwargs}}.")
_ANSWER_FORMAT = flags.DEFINE_string("answer_format", "tag", "tag | line")
_REWARD = flags.DEFINE_string("reward", "", "Reward source scoring the samples (rm:WORKDIR, "
                              "...); '' = the verifier of tasks: data.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Prompts per sampling batch.")


def _load(path, what):
  """(graphdef, params, tokenizer) of a model or of a finished run's final policy."""
  from prefjax.train.finished_run import load_run
  try:
    run = load_run(path, need=("policy",))
  except PrefjaxError:
    raise
  except Exception as e:   # noqa: BLE001 -- a model that cannot be read is one line
    raise ConfigError(f"--{what}={path}: cannot load ({str(e).splitlines()[0]})") from None
  if run.tokenizer is None:
    raise ConfigError(f"--{what}={path}: the model has no tokenizer")
  return run.graphdef, run.policy, run.tokenizer


def main(argv):
  del argv
  import ml_collections
  from prefjax.eval import judge
  from prefjax.rl import reward_sources as rw
  from prefjax.train.config import base_config
  from prefjax.train.data_source import DataSource
  from prefjax.train.stages import RunContext
  try:
    options = json.loads(_TASK_OPTIONS.value)
  except json.JSONDecodeError as e:
    raise ConfigError(f"--task_options: not JSON ({e.msg})") from None
  c = base_config()
  c.data.train, c.data.max_len, c.data.n_eval = _DATA.value, _MAX_LEN.value, _N.value
  c.tasks.seed, c.tasks.n_eval, c.tasks.n_train = _TASK_SEED.value, _N.value, 1
  c.tasks.answer_format = _ANSWER_FORMAT.value
  c.tasks.options = ml_collections.ConfigDict(options)
  graphdef, policy, tok = _load(_MODEL.value, "model")
  ref_graphdef, reference, ref_tok = _load(_REFERENCE.value, "reference")
  if ref_tok.vocab_size != tok.vocab_size:
    raise ConfigError(f"--reference has {ref_tok.vocab_size} tokens, --model {tok.vocab_size}: "
                      "the two must share a tokenizer")
  data = DataSource(c, tok)
  ctx = RunContext(config=c, graphdef=graphdef, model_cfg=None, tokenizer=tok, mesh=None,
                   param_shardings=None, workdir=_OUT.value, writer=None, data=data)
  name = _REWARD.value or ("verifier" if data.taskset is not None else "")
  if not name:
    raise ConfigError(f"--reward must name a reward source for {_DATA.value} (e.g. rm:WORKDIR)")
  source = rw.make_source(name, rw.SourceEnv(ctx=ctx, policy_params=reference))
  settings = judge.JudgeSettings(
      n_samples=_N_SAMPLES.value, max_new_tokens=_MAX_NEW_TOKENS.value,
      temperature=0.0 if _GREEDY.value else _TEMPERATURE.value, top_p=_TOP_P.value,
      seed=_SEED.value, max_len=_MAX_LEN.value, batch_size=_BATCH_SIZE.value)
  items = data.prompts("eval", _N.value)
  metrics, rows = judge.judge((graphdef, policy), (ref_graphdef, reference), tok, items,
                              source=source, taskset=data.taskset, settings=settings)
  os.makedirs(_OUT.value, exist_ok=True)
  judge.write_generations(os.path.join(_OUT.value, "generations.jsonl"), rows)
  with open(os.path.join(_OUT.value, "summary.json"), "w") as f:
    json.dump(dict(metrics, model=_MODEL.value, reference=_REFERENCE.value, data=_DATA.value),
              f, indent=2, sort_keys=True)
  print(judge.headline(metrics), flush=True)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
