"""DPO step throughput of a Llama-shaped model (random init) on one accelerator: prefjax vs TRL.

  python scripts/benchmark_gpu.py                           # Llama-3.2-1B shapes, bf16
  python scripts/benchmark_gpu.py --size=tiny --steps=2 --warmup=1 --peers=   # CPU smoke run
  python scripts/benchmark_gpu.py --variants=packed,packed:reference=cached:rows=6:plan=greedy

The model has Llama-3.2-1B's shapes (dim 2048, 16 layers, 32 query / 8 key-value heads of
64, MLP 8192, vocabulary 128,256, tied embeddings: 1.24B parameters) with random weights:
throughput does not depend on the values. Every framework gets the same synthetic pairs
(token ids; prompt and response lengths drawn uniformly in [mean/2, 3 mean/2], seeded),
bfloat16 compute over float32 master weights and AdamW state, the sigmoid DPO loss with a
reference model, one optimizer step per batch of --pairs pairs.

prefjax runs the shared train step (prefjax/train/step.py) with chunked vocabulary log-probs
on each of --variants, "LAYOUT[:key=value...]": LAYOUT is "packed" (the real-model default:
prefix-shared pairs packed into ``rows`` rows of 2 * max_len tokens; here never cut to a
shorter bucket length, so every step has one shape) or "plain" (one row per response, padded
to max_len); keys:
  attention=auto|cudnn|dense   the attention kernel (auto: cuDNN on GPU in bf16)
  reference=step|cached        the reference forward inside each step, or its log-probs
                               computed once beforehand in one no-grad pass per batch (as
                               scripts/train.py's reference cache does; the step then has no
                               reference model; the pass's time is reported and amortised)
  rows=R                       packed rows per step (default ceil(pairs / 2))
  plan=fixed|greedy            fixed: --pairs consecutive pairs per step; greedy: as many
                               pairs (at most --pairs) as fit the rows, as scripts/train.py
                               plans packed batches (fewer padding slots, varying pairs/step)
TRL runs ``DPOTrainer`` (transformers' LlamaForCausalLM, sdpa attention, bf16 autocast)
when installed, on --pairs consecutive pairs per step written as a word-level vocabulary
("t<id>"), so it sees the same lengths.

Reported per run over its --steps timed steps (after --warmup): seconds/step (the median),
pairs/s and useful tokens/s (mean pairs or tokens per step / median seconds; a pair's useful
tokens are its prompt once plus both responses) and MFU = mean useful FLOPs per step /
(median seconds * peak):

  F(t)      = 2 * (N_nonembed + d * V) + 4 * L * d * t   forward FLOPs of a token at context t
                                                        (QK^T and AV; causal: half of T x T)
  useful    = c * sum over useful tokens F(t)           c = 4: policy forward + backward 3F
                                                        and reference forward F in the step;
                                                        c = 3 with reference=cached
  peak      = --peak_tflops (989 TFLOP/s: the H100/H200 SXM dense bf16 datasheet figure)

The bf16 matmul rate measured in the same run (8192^3 in jax) is printed beside it.
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

_SIZE = flags.DEFINE_enum("size", "llama_1b", ["llama_1b", "tiny"], "Model shapes.")
_PAIRS = flags.DEFINE_integer("pairs", 16, "Pairs per optimizer step.")
_PROMPT = flags.DEFINE_integer("prompt_len", 384, "Mean prompt length (tokens).")
_RESP = flags.DEFINE_integer("response_len", 192, "Mean response length (tokens).")
_MAX_LEN = flags.DEFINE_integer("max_len", 1024, "Longest prompt + response.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation, autotuning).")
_VARIANTS = flags.DEFINE_list("variants", ["packed", "plain"],
                              "prefjax runs, LAYOUT[:key=value...] (see the docstring).")
_CHUNK = flags.DEFINE_integer("logps_chunk", 1024, "Tokens per vocabulary chunk (0: full logits).")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "block", "save_matmuls"], "Rematerialisation.")
_PEERS = flags.DEFINE_string("peers", "trl", "Peers to run when installed (trl).")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "Dense bf16 peak of the chip for MFU.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one measurement.")
_ARGS = flags.DEFINE_string("worker_args", None, "Internal: JSON file of the worker's arguments.")

SIZES = {
    "llama_1b": dict(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                     head_dim=64, mlp_dim=8192, rope_theta=500000.0),
    "tiny": dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                 mlp_dim=128, rope_theta=10000.0),
}
FIRST_ID = 8          # ids below are left for special tokens


def synthetic_pairs(n, prompt_len, response_len, max_len, vocab, seed=0):
  """n pairs of token-id lists; prompt + each response <= max_len."""
  import numpy as np
  rng = np.random.default_rng(seed)
  draw = lambda m: int(rng.integers(max(1, m // 2), m + m // 2 + 1))
  out = []
  while len(out) < n:
    p = draw(prompt_len)
    c, r = draw(response_len), draw(response_len)
    if p + max(c, r) > max_len:
      continue
    ids = lambda k: rng.integers(FIRST_ID, vocab, k).tolist()
    out.append({"prompt": ids(p), "chosen": ids(c), "rejected": ids(r)})
  return out


def useful_flops(cfg, pairs, factor=4):
  """factor * sum over each pair's prompt (once) and responses of F(t) (see the docstring)."""
  n_nonembed = cfg.num_params() - cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
  per_tok = 2 * (n_nonembed + cfg.dim * cfg.vocab_size)
  total = 0.0
  for p in pairs:
    lp = len(p["prompt"])
    for lo, hi in ((0, lp), (lp, lp + len(p["chosen"])), (lp, lp + len(p["rejected"]))):
      t = hi - lo
      total += per_tok * t + 4 * cfg.n_layers * cfg.dim * (lo + hi - 1) * t / 2
  return factor * total


class IdTokenizer:
  """The encoder interface of prefjax's tokenizers over texts that are token ids ("5 17 9")."""

  def encode_prompt(self, text):
    return [int(t) for t in text.split()]

  encode_completion = encode_prompt


def as_text(pair):
  return {k: " ".join(map(str, v)) for k, v in pair.items()}


def parse_variant(spec: str) -> dict:
  """"packed:attention=dense:rows=6" -> {"layout": "packed", "attention": "dense", "rows": 6}."""
  layout, *items = spec.split(":")
  out = {"layout": layout, "attention": "auto", "reference": "step", "rows": 0, "plan": "fixed"}
  allowed = {"attention": ("auto", "cudnn", "dense"), "reference": ("step", "cached"),
             "plan": ("fixed", "greedy")}
  if layout not in ("packed", "plain"):
    raise ValueError(f"variant {spec!r}: layout {layout!r} is not packed or plain")
  for item in items:
    k, eq, v = item.partition("=")
    if not eq or k not in out or k == "layout":
      raise ValueError(f"variant {spec!r}: {item!r} is not one of "
                       f"{', '.join(sorted(set(out) - {'layout'}))}=VALUE")
    if k == "rows":
      out[k] = int(v)
    elif v not in allowed[k]:
      raise ValueError(f"variant {spec!r}: {k} must be one of {', '.join(allowed[k])}")
    else:
      out[k] = v
  if layout == "plain" and (out["rows"] or out["plan"] != "fixed"):
    raise ValueError(f"variant {spec!r}: rows and plan apply to the packed layout")
  return out


# ----------------------------------------------------------------------------- workers
def _batches(a):
  return [a["pairs"][i * a["batch"]:(i + 1) * a["batch"]] for i in range(a["n_steps"])]


def _groups(a, enc):
  """Pair indices of each step: --pairs consecutive pairs, or greedy as train.py plans."""
  if a["plan"] == "greedy":
    from prefjax.data import layout as layout_lib
    groups = layout_lib.plan([as_text(p) for p in a["pairs"]], enc)
  else:
    groups = [list(range(i * a["batch"], (i + 1) * a["batch"])) for i in range(a["n_steps"])]
  if len(groups) < a["n_steps"]:
    raise ValueError(f"{len(a['pairs'])} pairs make {len(groups)} steps, not {a['n_steps']}")
  return groups[:a["n_steps"]]


def worker_prefjax(a):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from prefjax import sharding
  from prefjax.data import layout as layout_lib
  from prefjax.models import Transformer, make_config
  from prefjax.models.attention import Attention
  from prefjax.train.objective import make_objective
  from prefjax.train.optimizer import make_optimizer
  from prefjax.train.step import init_state, make_train_step
  cfg = make_config(None, vocab_size=a["size"]["vocab_size"], overrides=dict(
      {k: v for k, v in a["size"].items() if k != "vocab_size"}, max_len=2 * a["max_len"],
      dtype=a["dtype"], param_dtype="float32", remat=a["remat"]))
  mesh = sharding.make_mesh()
  model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
  graphdef, _ = nnx.split(model)
  param_sh = sharding.param_shardings(model, mesh)

  @jax.jit
  def init():
    return nnx.to_pure_dict(nnx.state(Transformer(cfg, nnx.Rngs(0)), nnx.Param))
  params = jax.device_put(init(), param_sh)
  if a.get("attention", "auto") != "auto":
    for _, m in nnx.iter_graph(model):
      if isinstance(m, Attention):
        m.kernel = a["attention"]
    graphdef, _ = nnx.split(model)
  ref = jax.tree.map(jnp.copy, params)
  objective = make_objective("dpo", {"beta": 0.1}, logps_chunk=a["logps_chunk"] or None)
  tx, schedule = make_optimizer(1e-6, a["n_steps"])
  state, state_sh = init_state(params, tx, param_sh)
  batch_sh = sharding.batch_sharding(mesh)
  step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=batch_sh, ref_shardings=param_sh)
  enc = layout_lib.make_encoder("pairwise", IdTokenizer(), a["max_len"], layout=a["layout"],
                                batch_size=a["batch"], rows=a.get("rows") or None,
                                completion="truncate")
  if a["layout"] == "plain":
    from prefjax.data.collate import stack
    encode = lambda exs: stack([enc(ex) for ex in exs])
  else:
    encode = enc
  groups = _groups(a, enc)
  host = [encode([as_text(a["pairs"][i]) for i in g]) for g in groups]
  pad = [layout_lib.padding_fraction(b) for b in host]
  out = {}
  if a.get("reference", "step") == "cached":
    # One no-grad reference pass per batch; the step then runs without the reference.
    # As scripts/train.py's reference cache computes an entry, timed per batch (the first
    # includes compilation).
    from prefjax.train import ref_cache
    secs = []
    arrays = ref_cache.compute(graphdef, objective, ref, host, len(host), batch_sh, seconds=secs)
    out["reference_seconds_per_batch"] = float(np.median(secs[1:] or secs))
    out["reference_compile_seconds"] = secs[0]
    host = ref_cache.WithReference(host, arrays)
    host = [host[i] for i in range(len(groups))]
    del ref
    ref = None
    step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                           batch_sharding=batch_sh, ref_shardings=None)
  batches = [jax.device_put(b, batch_sh) for b in host]
  times, losses = [], []
  for b in batches:
    t = time.perf_counter()
    state, m = step(state, b, ref)
    losses.append(float(m["loss"]))            # blocks until the step is done
    times.append(time.perf_counter() - t)
  stats = jax.devices()[0].memory_stats() or {}
  return dict(out, step_seconds=times[a["warmup"]:], compile_seconds=times[0],
              groups=groups[a["warmup"]:],
              peak_device_gb=stats.get("peak_bytes_in_use", 0) / 1e9,
              loss_first_last=[losses[0], losses[-1]], padding_fraction=float(np.mean(pad)),
              shape=list(np.shape(host[0]["rows_input_ids" if "rows_input_ids" in host[0]
                                          else "chosen_input_ids"])),
              backend=jax.default_backend(), device=str(jax.devices()[0]))


def _hf_dir(a, path):
  """A random-weight LlamaForCausalLM of the same shapes + a word-level tokenizer "t<id>"."""
  import torch
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers
  s = a["size"]
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
  vocab.update({f"t{i}": i for i in range(3, s["vocab_size"])})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
               "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  cfg = transformers.LlamaConfig(
      vocab_size=s["vocab_size"], hidden_size=s["dim"], intermediate_size=s["mlp_dim"],
      num_hidden_layers=s["n_layers"], num_attention_heads=s["n_heads"],
      num_key_value_heads=s["n_kv_heads"], head_dim=s["head_dim"],
      max_position_embeddings=2 * a["max_len"], rope_theta=s["rope_theta"],
      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
  return path


def worker_trl(a):
  from prefjax.extras import require
  require("trl", "bench", "the TRL side of the benchmark")
  require("datasets", "bench", "the TRL side of the benchmark")
  import torch
  from datasets import Dataset
  from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
  from trl import DPOConfig, DPOTrainer
  path = _hf_dir(a, os.path.join(a["workdir"], "hf"))
  tok = AutoTokenizer.from_pretrained(path)
  text = lambda ids: " ".join(f"t{i}" for i in ids)
  ds = Dataset.from_list([{"prompt": text(p["prompt"]), "chosen": " " + text(p["chosen"]),
                           "rejected": " " + text(p["rejected"])}
                          for b in _batches(a) for p in b])
  load = lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  times = []

  class Timer(TrainerCallback):
    def on_step_begin(self, *args, **kw):
      if torch.cuda.is_available():
        torch.cuda.synchronize()
      self.t = time.perf_counter()

    def on_step_end(self, *args, **kw):
      if torch.cuda.is_available():
        torch.cuda.synchronize()
      times.append(time.perf_counter() - self.t)

  gpu = torch.cuda.is_available()
  args = DPOConfig(output_dir=os.path.join(a["workdir"], "trl"),
                   per_device_train_batch_size=a["batch"], max_length=a["max_len"] + 1,
                   max_steps=a["n_steps"], learning_rate=1e-6, beta=0.1, logging_steps=1,
                   report_to=[], save_strategy="no", use_cpu=not gpu,
                   bf16=gpu and a["dtype"] == "bfloat16", dataloader_num_workers=0, seed=0)

  class InOrder(DPOTrainer):
    def _get_train_sampler(self, *args, **kw):
      return torch.utils.data.SequentialSampler(self.train_dataset)

  trainer = InOrder(model=load(), ref_model=load(), args=args, train_dataset=ds,
                    processing_class=tok, callbacks=[Timer()])
  trainer.train()
  return {"step_seconds": times[a["warmup"]:], "compile_seconds": times[0],
          "device": torch.cuda.get_device_name(0) if gpu else "cpu",
          "peak_device_gb": torch.cuda.max_memory_allocated() / 1e9 if gpu else 0.0}


def worker_matmul(a):
  return {"tflops": matmul_tflops()}


WORKERS = {"prefjax": worker_prefjax, "trl": worker_trl, "matmul": worker_matmul}


def matmul_tflops():
  """bf16 (accelerator) or float32 (CPU) TFLOP/s of one square matmul, best of 10."""
  import jax
  gpu = jax.default_backend() != "cpu"
  n, dt = (8192, "bfloat16") if gpu else (1024, "float32")
  return bench.matmul_flops(n, dt, repeats=10) / 1e12


def summarize(cfg, pairs, groups, secs, *, cached, peak_tflops, reference_seconds=None):
  """Per-step means over the timed steps (pair indices ``groups``) / the median step time.

  The median keeps one slow step (a host-side stall) from moving a run's figures; with
  greedy plans the pairs per step vary, so rates use their mean.
  """
  import numpy as np
  got = [pairs[i] for g in groups for i in g]
  n = len(groups)
  med = float(np.median(secs))
  work = useful_flops(cfg, got, factor=3 if cached else 4) / n
  n_tok = sum(len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in got) / n
  out = dict(sec_per_step=med, pairs_per_step=len(got) / n, pairs_per_sec=len(got) / n / med,
             tokens_per_sec=n_tok / med, mfu=work / med / (peak_tflops * 1e12))
  if reference_seconds is not None:
    out["pairs_per_sec_amortised"] = len(got) / n / (med + reference_seconds)
  return out


# ----------------------------------------------------------------------------- main
def main(argv):
  del argv
  if _WORKER.value:
    bench.worker_main(WORKERS, _WORKER.value, _ARGS.value)
    return
  import numpy as np
  from prefjax.models import make_config
  size = SIZES[_SIZE.value]
  cfg = make_config(None, vocab_size=size["vocab_size"],
                    overrides={k: v for k, v in size.items() if k != "vocab_size"})
  variants = [(spec, parse_variant(spec)) for spec in _VARIANTS.value]
  n_steps = _WARMUP.value + _STEPS.value
  # Twice the pairs fixed batches use: greedy plans may take fewer per step.
  pairs = synthetic_pairs(2 * n_steps * _PAIRS.value, _PROMPT.value, _RESP.value,
                          _MAX_LEN.value, size["vocab_size"])
  fixed = [list(range(i * _PAIRS.value, (i + 1) * _PAIRS.value))
           for i in range(_WARMUP.value, n_steps)]
  timed = [pairs[i] for g in fixed for i in g]
  flops = useful_flops(cfg, timed) / _STEPS.value
  tokens = sum(len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in timed)
  tokens /= _STEPS.value
  # In a worker: jax in this process would hold most of the accelerator's memory
  # (XLA_PYTHON_CLIENT_PREALLOCATE) while the workers run.
  peak = bench.run_worker(__file__, "matmul", {}).get("tflops", float("nan"))
  print(f"model {_SIZE.value}: {cfg.num_params() / 1e9:.3f}B parameters; {_PAIRS.value} pairs/step, "
        f"{tokens:.0f} useful tokens/step, {flops / 1e12:.1f} useful TFLOP/step (fixed batches); "
        f"measured matmul {peak:.0f} TFLOP/s; MFU against {_PEAK.value:.0f} TFLOP/s", flush=True)
  tmp = tempfile.mkdtemp(prefix="bench_gpu_")
  atexit.register(shutil.rmtree, tmp, True)       # the HF export: ~0.5 GB or more
  base = dict(size=size, pairs=pairs, batch=_PAIRS.value, n_steps=n_steps, warmup=_WARMUP.value,
              max_len=_MAX_LEN.value, dtype="bfloat16", logps_chunk=_CHUNK.value,
              remat=_REMAT.value)
  runs = [(f"prefjax[{spec}]", "prefjax", v) for spec, v in variants]
  runs += [(p, p, {}) for p in _PEERS.value.split(",") if p]
  results = {}
  for label, worker, extra in runs:
    args = dict(base, workdir=os.path.join(tmp, f"run{len(results)}"), **extra)
    res = bench.run_worker(__file__, worker, args)
    if res.get("step_seconds"):
      res.update(summarize(cfg, pairs, res.pop("groups", fixed), res["step_seconds"],
                           cached=extra.get("reference") == "cached", peak_tflops=_PEAK.value,
                           reference_seconds=res.get("reference_seconds_per_batch")))
      note = ""
      if "pairs_per_sec_amortised" in res:
        note = (f", reference pass {res['reference_seconds_per_batch']:.3f} s/batch: "
                f"{res['pairs_per_sec_amortised']:.1f} pairs/s amortised")
      print(f"{label:40s} {res['sec_per_step']:7.3f} s/step  {res['pairs_per_step']:5.1f} pairs/step  "
            f"{res['pairs_per_sec']:7.1f} pairs/s  {res['tokens_per_sec']:8.0f} tokens/s  "
            f"MFU {100 * res['mfu']:5.1f}%  (first step {res['compile_seconds']:.1f} s"
            + (f", padding {100 * res['padding_fraction']:.0f}%" if "padding_fraction" in res
               else "") + f", peak device memory {res.get('peak_device_gb', 0):.1f} GB{note})",
            flush=True)
    else:
      print(f"{label:40s} {res.get('error')}", flush=True)
      for line in res.get("log_tail", [])[-8:]:
        print("    " + line)
    results[label] = {k: v for k, v in res.items() if k != "log_tail"}
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump({"size": _SIZE.value, "pairs": _PAIRS.value, "tokens_per_step": tokens,
                   "useful_flops_per_step": flops, "matmul_tflops": peak,
                   "peak_tflops": _PEAK.value, "argv": sys.argv[1:], "results": results},
                  f, indent=2)
  ours = [r for k, r in results.items() if k.startswith("prefjax") and "pairs_per_sec" in r]
  trl = results.get("trl", {})
  if ours and "pairs_per_sec" in trl:
    print(f"prefjax/TRL pairs/s ratio: {ours[0]['pairs_per_sec'] / trl['pairs_per_sec']:.2f}")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
