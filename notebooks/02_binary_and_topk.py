# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — Binary and Top-K divergences: cheap lower bounds of the exact one
#
# An exact TV or KL needs both full distributions over the vocabulary — the rollout engine would have to ship
# V numbers per generated token. DPPO (arXiv 2602.04879, §4.3–4.4) instead merges the vocabulary into a few
# buckets the engine *can* report: {a, rest} (Binary, Eq. 13–14) or {top-K tokens of μ, rest} (Top-K, Eq. 15–16).
# This notebook shows
#
# 1. why merging can only shrink a divergence (the data-processing inequality),
# 2. Binary ≤ Top-K ≤ exact on LLM-like distributions, and when the ordering breaks (the sampled token missing
#    from the reported set),
# 3. how K and the engine's set rule ("topk", "topk_plus_sampled", "topk_replace_last") change the gap,
# 4. what each estimate costs in bytes per generated token.
#
# **Run time and sizes.** At its default size (V = 2,048, 32 states) the notebook runs top to bottom in about
# 20 s on 2 CPU cores. Set `FULL = True` in the first code cell for the real sizes (V = 32,768, 256 states;
# several minutes). The control in section 3 needs ipywidgets (in the `[notebook]` extra); without a browser
# the notebook shows its default setting.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy.special import log_softmax

from trustregion_lab import analysis, divergence, exercises, explore
from trustregion_lab.mismatch import TOPK_RULES

FULL = False  # True: the real sizes (several minutes on 2 cores)
VOCAB = 32_768 if FULL else 2_048
NUM_STATES = 256 if FULL else 32
SAMPLES_PER_STATE = 4
K_VALUES = (1, 2, 5, 20, 100) if FULL else (1, 5, 20)
SEED = 0
pd.set_option("display.precision", 4)
print(f"FULL={FULL}: vocabulary {VOCAB:,}, {NUM_STATES} states × {SAMPLES_PER_STATE} tokens")

# %% [markdown]
# ## 1. The data-processing inequality
#
# Merge outcomes with a map M (here: every token outside a set S goes to one "rest" bucket). The merged
# distributions are Mμ and Mπ. For TV the inequality is the triangle inequality: a bucket's difference is
# |Σ_{v∈B} (π_v − μ_v)| ≤ Σ_{v∈B} |π_v − μ_v|, so TV(Mμ, Mπ) ≤ TV(μ, π). For KL it is the log-sum inequality,
# Σ μ_v log(μ_v/π_v) ≥ (Σ μ_v) log(Σ μ_v / Σ π_v) on each bucket. Any f-divergence obeys it.
#
# So both the Binary partition {a, rest} and the Top-K partition {S, rest} give **lower bounds** of the exact
# divergence. And if a ∈ S, the Binary partition is itself a merge of the Top-K one (merge S \\ {a} into rest), so
# Binary ≤ Top-K ≤ exact. A tiny example with V = 6, checked with the package:

# %%
mu_small = np.array([0.50, 0.20, 0.15, 0.10, 0.04, 0.01])
pi_small = np.array([0.40, 0.30, 0.10, 0.05, 0.10, 0.05])
a = np.array([1])  # the sampled token (arrays of one token: the functions are batched)
ids = np.array([0, 1, 2])  # the engine's top-3 of μ; a is among them
tv_exact = float(divergence.tv(np.log(mu_small), np.log(pi_small)))
tv_topk = float(divergence.topk_tv(np.log(mu_small[ids]), ids, np.log(pi_small)))
tv_bin = divergence.binary_tv(np.log(mu_small[a]), np.log(pi_small[a]))[0]
kl_exact = float(divergence.kl(np.log(mu_small), np.log(pi_small)))
kl_topk = float(divergence.topk_kl(np.log(mu_small[ids]), ids, np.log(pi_small)))
kl_bin = divergence.binary_kl(np.log(mu_small[a]), np.log(pi_small[a]))[0]
by_hand = 0.5 * (np.abs(pi_small[ids] - mu_small[ids]).sum() + abs(pi_small[3:].sum() - mu_small[3:].sum()))
print(f"TV: binary {tv_bin:.4f} ≤ top-3 {tv_topk:.4f} (by hand {by_hand:.4f}) ≤ exact {tv_exact:.4f}")
print(f"KL: binary {kl_bin:.4f} ≤ top-3 {kl_topk:.4f} ≤ exact {kl_exact:.4f}")
eps = 1e-12
assert tv_bin <= tv_topk + eps <= tv_exact + 2 * eps and kl_bin <= kl_topk + eps <= kl_exact + 2 * eps

# %% [markdown]
# Inside the rest bucket token 3 lost 0.05 while tokens 4–5 gained 0.10: Top-3 sees only the net change of the
# bucket (0.15 → 0.20), so the 0.05 that moved *within* the bucket is invisible to it, and Binary additionally
# misses the moves of tokens 0 and 2.
#
# ## 2. Binary ≤ Top-K ≤ exact on LLM-like distributions
#
# `analysis.make_token_batch` builds states from the environments' LLM-like logit model (Zipf ranks, 80 %
# confident and 20 % high-entropy states), a bf16-like rollout engine μ, sampled tokens, and a π one simulated
# policy-gradient step away. For each token we compute the exact TV of its state, its Binary TV and its Top-K TV
# for every K and set rule, all with `trustregion_lab.divergence`.

# %%
batch = analysis.make_token_batch(
    SEED,
    num_states=NUM_STATES,
    vocab_size=VOCAB,
    samples_per_state=SAMPLES_PER_STATE,
    step_size=2.0,
    topk_sizes=K_VALUES,
    set_rules=TOPK_RULES,
)
tv_state, kl_state = batch.exact_divergences()
exact_tv = tv_state[batch.state]
exact_kl = kl_state[batch.state]
# log μ(a) in float64 from μ's logits (the engine reports it rounded to float32; at TV ≈ 1e-9 that rounding
# would decide the comparisons below)
log_mu_a = log_softmax(batch.rollout_logits.astype(np.float64), axis=-1)[batch.state, batch.token]
binary_tv = np.asarray(divergence.binary_tv(log_mu_a, batch.logprob))
binary_kl = np.asarray(divergence.binary_kl(log_mu_a, batch.logprob))


def topk_estimates(rule: str, k: int, rows_per_chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Top-K TV and KL `[N]` of every token of the batch for one (set rule, K), a chunk of tokens at a time."""
    ids, lps = batch.topk_sets[(rule, k)]
    tv_out, kl_out = np.empty(ids.shape[0]), np.empty(ids.shape[0])
    for start in range(0, ids.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        # π's logits at each token's state, [rows, V], in float64 like the exact reference
        logits = batch.token_logits(rows).astype(np.float64)
        tv_out[rows] = divergence.topk_tv(lps[rows], ids[rows], logits)
        kl_out[rows] = divergence.topk_kl(lps[rows], ids[rows], logits)
    return tv_out, kl_out


records = []
for rule in TOPK_RULES:
    for k in K_VALUES:
        tv_k, kl_k = topk_estimates(rule, k)
        ids, _ = batch.topk_sets[(rule, k)]
        a_in_set = (ids == batch.token[:, None]).any(-1)
        tol = 1e-9
        records.append(
            {
                "set rule": rule,
                "K": k,
                "a in set": a_in_set.mean(),
                "TV_K ≤ exact": np.mean(tv_k <= exact_tv + tol),
                "binary ≤ TV_K": np.mean(binary_tv <= tv_k + tol),
                "binary ≤ TV_K when a ∉ set": np.mean(binary_tv[~a_in_set] <= tv_k[~a_in_set] + tol)
                if (~a_in_set).any()
                else np.nan,
                "mean TV_K / exact": np.mean(tv_k) / np.mean(exact_tv),
                "mean KL_K / exact": np.mean(kl_k) / np.mean(exact_kl),
            }
        )
table = pd.DataFrame(records)
table

# %%
assert (table["TV_K ≤ exact"] == 1.0).all(), "a Top-K TV exceeded the exact TV"
contains = table[table["set rule"] != "topk"]
assert (contains["a in set"] == 1.0).all() and (contains["binary ≤ TV_K"] == 1.0).all()
print(
    f"Binary TV / exact TV (means): {binary_tv.mean() / exact_tv.mean():.3f}; "
    f"Binary KL / exact KL: {binary_kl.mean() / exact_kl.mean():.3f}"
)
print("With the plain 'topk' rule the sampled token may be missing; then Binary ≤ Top-K can fail:")
print(
    table[table["set rule"] == "topk"][["K", "a in set", "binary ≤ TV_K when a ∉ set"]].to_string(index=False)
)

# %% [markdown]
# Every Top-K TV is below the exact TV, and whenever the sampled token is in the reported set (always, with the
# "topk_plus_sampled" and "topk_replace_last" rules) the Binary TV is below the Top-K TV. With the plain "topk"
# rule a sampled token outside the top K is lumped into the rest bucket, and its own move can vanish from the
# estimate: that is why the paper adds the sampled token to the set (§4.4).
#
# ## 3. How K and the set rule change the gap
#
# The ratio mean(estimate) / mean(exact) per K. A ratio of 1 means the estimate recovers the whole divergence.

# %%
long = table.melt(
    id_vars=["set rule", "K"], value_vars=["mean TV_K / exact", "mean KL_K / exact"], var_name="estimate"
)
grid = sns.relplot(
    data=long,
    x="K",
    y="value",
    hue="set rule",
    col="estimate",
    kind="line",
    marker="o",
    height=3.6,
    aspect=1.2,
)
for ax, binary_ratio in zip(
    grid.axes.flat, (binary_tv.mean() / exact_tv.mean(), binary_kl.mean() / exact_kl.mean())
):
    ax.axhline(binary_ratio, color="k", ls=":", lw=1, label="Binary")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("mean estimate / mean exact")
    ax.legend(loc="lower right", fontsize=8)
plt.show()

# %% [markdown]
# On these distributions most of the mass sits on a handful of tokens (LLM-like: median top-1 mass ≈ 0.97), so
# already K = 20 recovers nearly all of the exact divergence, and Binary — which only sees the sampled token —
# recovers a large share too: the moves that matter are mostly on the sampled token itself. This is why the paper
# finds Top-K (K = 20) and Binary learn indistinguishably (Fig. 10). The rules differ only at small K: "topk" can
# miss the sampled token's move, "topk_replace_last" gives up the K-th id to keep it, and "topk_plus_sampled"
# pays one extra slot.
#
# ### Try it: K and the set rule on one state
#
# Choose a sampled token of the batch (listed with its state's entropy and the rank of the token under μ), the
# set rule and K. The plot shows, for every K and each of the three rules, how much of the state's exact TV the
# Top-K estimate misses (exact − Top-K, log scale; the dash-dotted line is what the token's Binary TV misses);
# the star is your choice (`trustregion_lab.explore.topk_gap`). The tokens offered are the ones sampled
# furthest down μ's ranking, where the plain "topk" rule loses the sampled token's own move.

# %%
state_entropy = analysis.state_entropy(batch.rollout_logits)
rank = (batch.rollout_logits[batch.state] > batch.rollout_logits[batch.state, batch.token][:, None]).sum(-1)
candidates = np.argsort(-rank, kind="stable")[:12]  # the tokens sampled furthest down μ's ranking
TOKEN_CHOICES = [
    (
        f"token {i}: state {batch.state[i]}, entropy {state_entropy[batch.state[i]]:.2f} nats, rank {rank[i] + 1}",
        int(i),
    )
    for i in candidates
]
K_GRID = (1, 2, 3, 5, 10, 20, 50)


def show_topk(token_index: int = int(candidates[0]), rule: str = "topk", k: int = 5):
    s, a = batch.state[token_index], int(batch.token[token_index])
    mu_logits, pi_logits = batch.rollout_logits[s], batch.logits[s]
    chosen = explore.topk_gap(mu_logits, pi_logits, a, k, rule)
    _, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for r, style in zip(TOPK_RULES, ("o-", "s--", "^:")):
        missed = [
            chosen["exact_tv"] - explore.topk_gap(mu_logits, pi_logits, a, kk, r)["topk_tv"] for kk in K_GRID
        ]
        ax.plot(K_GRID, np.maximum(missed, 1e-12), style, label=r, alpha=0.8)
    ax.axhline(
        max(chosen["exact_tv"] - chosen["binary_tv"], 1e-12), color="0.4", ls="-.", lw=1, label="Binary TV"
    )
    ax.plot(
        [k],
        [max(chosen["exact_tv"] - chosen["topk_tv"], 1e-12)],
        "r*",
        ms=16,
        label=f"your choice: {rule}, K = {k}",
    )
    where = "in" if chosen["a_in_set"] else "NOT in"
    ax.set(xscale="log", yscale="log", xlabel="K", ylabel="exact TV − estimate  (TV the estimate misses)")
    ax.set_title(
        f"token {token_index} (exact TV {chosen['exact_tv']:.3g}): a {where} the set; "
        f"Top-K captures {chosen['captured']:.1%}; coinciding rules share a line",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="center right")
    plt.show()
    return chosen


topk_panel = explore.controls(
    show_topk,
    token_index=widgets.Dropdown(options=TOKEN_CHOICES, description="token"),
    rule=widgets.Dropdown(options=list(TOPK_RULES), description="set rule"),
    k=widgets.SelectionSlider(options=list(K_GRID), value=5, description="K"),
)
topk_panel

# %%
chosen = topk_panel.result
print({key: chosen[key] for key in ("exact_tv", "topk_tv", "binary_tv", "a_in_set")})
assert chosen["topk_tv"] <= chosen["exact_tv"] + 1e-12

# %% [markdown]
# Per token, the Binary estimate is loosest in high-entropy states, where the mass moves among several tokens:

# %%
entropy = analysis.state_entropy(batch.rollout_logits)[batch.state]
bins = pd.cut(entropy, [0, 0.1, 0.67, 2.0, np.inf], labels=["< 0.1", "0.1–0.67", "0.67–2", "> 2"])
tv20, _ = topk_estimates("topk_plus_sampled", 20)
by_entropy = pd.DataFrame(
    {"entropy of μ (nats)": bins, "binary": binary_tv, "top-20": tv20, "exact": exact_tv}
)
share = by_entropy.groupby("entropy of μ (nats)", observed=True).sum()
share = share.assign(
    **{"binary / exact": share["binary"] / share["exact"], "top-20 / exact": share["top-20"] / share["exact"]}
)
share[["binary / exact", "top-20 / exact"]]

# %% [markdown]
# ## 4. What each estimate costs the rollout engine
#
# The trainer already has π's full logits; μ's information must come from the engine with every generated token.
# Assumptions: token ids as int32 (4 bytes), log-probs as float32 (4 bytes; bf16 would halve these), a full
# distribution as V bf16 logits (2 bytes each). Every engine already returns the sampled token's log-prob, so
# Binary costs nothing extra.

# %%
vocab_sizes = {"toy (this notebook)": VOCAB, "Llama-3 (128,256)": 128_256, "Qwen3 (151,936)": 151_936}
bytes_id, bytes_lp, bytes_logit = 4, 4, 2
rows = []
for name, v in vocab_sizes.items():
    rows.append(
        {
            "vocabulary": name,
            "Binary: 1 log-prob": bytes_lp,
            "Top-20 'topk' / 'replace_last'": 20 * (bytes_id + bytes_lp),
            "Top-20 'plus_sampled' (K+1 slots)": 21 * (bytes_id + bytes_lp),
            "exact: V bf16 logits": v * bytes_logit,
        }
    )
cost = pd.DataFrame(rows).set_index("vocabulary")
cost

# %%
tokens_per_batch = 512 * 8_192  # e.g. 512 responses of 8k tokens
print("per rollout batch of 512 × 8k tokens:")
for column in cost.columns:
    print(f"  {column:36s} {cost.loc['Qwen3 (151,936)', column] * tokens_per_batch / 2**30:10.3f} GiB")

# %% [markdown]
# Exact divergences would move more than a TiB per such batch for a Qwen3-sized vocabulary, Top-20 well under a
# GiB, and Binary nothing beyond what every engine sends anyway.
#
# ## Write it yourself (self-checked)
#
# Implement the Binary KL (Eq. 14) and the Top-K TV with the "topk_plus_sampled" set (Eq. 15) in plain numpy.
# `binary_kl(mu, pi)` takes μ(a), π(a) `[N]`; `topk_tv(mu, pi, token, k)` takes the full distributions
# `[N, V]`, the sampled ids `[N]` and K, and uses S = the K most likely ids under μ plus the sampled token.
# `exercises.check` prints "passed" or the first failing case with a hint; the stubs fail on purpose, and the
# solutions are in a collapsed cell at the very end.


# %%
def my_binary_kl(mu, pi):
    """KL(μ‖π) of the two buckets {a, rest}."""
    return np.zeros_like(mu)  # ← your code


def my_topk_tv(mu, pi, token, k):
    """½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|), S = top-k of μ ∪ {token}, per row."""
    return np.zeros(mu.shape[0])  # ← your code


exercises.check("binary_kl", my_binary_kl)
exercises.check("topk_tv", my_topk_tv)

# %% [markdown]
# ## Exercises
#
# 1. Find a three-token example where the sampled token a is not in S and the Top-K TV is *smaller* than the
#    Binary TV. Why does Binary ≤ Top-K need a ∈ S and not just "more buckets"?
# 2. In the table of section 2, why does "mean TV_K / exact" for the "topk" rule at K = 1 differ from
#    "topk_replace_last" at K = 1?
# 3. The exact TV of a state is one number, but the Binary TV differs between the tokens sampled from that state.
#    Which sampled tokens give the largest Binary TV? What does that imply for a mask built on Binary TV?
# 4. Compute the per-token bytes for Top-K with bf16 log-probs and K = 20. How many tokens' Top-20 reports fit in
#    the bytes of one exact (bf16, V = 151,936) report?

# %% [markdown]
# ## Answers
#
# 1. Binary uses the partition {a, rest}; Top-K uses {S, rest}. Binary ≤ Top-K is the data-processing inequality
#    for the map that merges S \\ {a} into rest — a map that exists only when a ∈ S. With a ∉ S the two
#    partitions are not nested (a sits in Top-K's rest bucket), and either can be larger: e.g. μ = (0.5, 0.3, 0.2),
#    π = (0.5, 0.1, 0.4), S = {0}, a = 1: Top-1 TV = 0, Binary TV = 0.2.
# 2. With K = 1 "topk" reports only μ's mode; when a is another token its move lands in the rest bucket together
#    with the mode's complement. "topk_replace_last" replaces the single id by a whenever a is not the mode, so it
#    becomes the Binary partition for those tokens.
# 3. Binary TV = |π(a) − μ(a)|: tokens whose own probability moved the most, usually the ones the update pushed
#    (sampled with a large |Â|) or the state's mode. A Binary mask therefore judges each token by its own move —
#    it can keep a token whose state moved a lot elsewhere, and it never exceeds the exact TV.
# 4. 20 × (4 + 2) = 120 bytes per token; one exact report is 151,936 × 2 = 303,872 bytes ≈ 2,532 Top-20 reports.

# %% [markdown]
# Solutions of the self-checked functions (collapsed; expand to read). Running the cell checks them.


# %% jupyter={"source_hidden": true}
def solution_binary_kl(mu, pi):
    return mu * np.log(mu / pi) + (1 - mu) * np.log((1 - mu) / (1 - pi))


def solution_topk_tv(mu, pi, token, k):
    out = np.empty(mu.shape[0])
    for row in range(mu.shape[0]):
        ids = np.union1d(np.argsort(-mu[row])[:k], [token[row]])
        rest = (1 - mu[row, ids].sum()) - (1 - pi[row, ids].sum())
        out[row] = 0.5 * (np.abs(mu[row, ids] - pi[row, ids]).sum() + abs(rest))
    return out


assert exercises.check("binary_kl", solution_binary_kl)
assert exercises.check("topk_tv", solution_topk_tv)
