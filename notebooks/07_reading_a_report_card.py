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
# # 07 — Reading a report card
#
# `python -m trustregion_lab.report PATH` reads a run's per-token log-probs — the rollout engine's log μ(a), the
# trainer's log π(a) and the advantage Â of every response token — and writes a report card: tables, figures and
# a page of plain verdicts (README, "Bring your own run"). This notebook runs it on a generated prime-rl token
# export (`trustregion_lab.report.write_prime_rl_export`: LLM-like tokens whose mismatch grows over the steps,
# with a few rare large moves and a few null log-probs) and reads each verdict: what it measures, where its
# number comes from, and what a user would change in their run because of it.
#
# **Run time and sizes.** At its default size (6 steps × 2 ranks × 8 sequences of 32–256 tokens) the notebook
# runs top to bottom in about 25 s on 2 CPU cores. Set `FULL = True` in the first code cell for the
# README's export (12 steps × 2 ranks × 24 sequences of 32–600 tokens, the one behind `figures/report/`; about a
# minute). The export and the report go to a temporary folder.

# %%
import re
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from trustregion_lab import report

FULL = False  # True: the README's export (about a minute on 2 cores)
SIZE = (
    {"steps": 12, "sequences_per_rank": 24, "max_length": 600}
    if FULL
    else {"steps": 6, "sequences_per_rank": 8, "max_length": 256}
)
WORK = Path(tempfile.mkdtemp(prefix="report_card_"))
pd.set_option("display.precision", 4)

export = report.write_prime_rl_export(WORK / "run", ranks=2, min_length=32, null_share=1e-3, seed=4, **SIZE)
OUT = WORK / "report"
written = report.run_report(export, out=OUT, progress=False)
print(f"export: {export}")
print("report:", ", ".join(p.name for p in written))

# %% [markdown]
# ## 1. The verdicts
#
# `report.md` opens with one sentence per finding. Each is computed from one of the tables next to it; the
# explanation below each verdict names that table and says what to do about it.

# %%
card = (OUT / "report.md").read_text()
section = card.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
verdicts = [line[2:].strip() for line in section.splitlines() if line.startswith("- ")]

EXPLAIN = [
    (
        r"mismatch .* over the run",
        "**Mismatch trend** (`by_step.csv`, `mismatch_mean` = mean |π(a) − μ(a)| per step, at the weights the engine "
        "served). A mismatch that rises over the run is the paper's warning sign (its Fig. 3: ≈ 0.004 rising two- "
        "to fourfold before collapse). *What to change:* if it keeps rising, look for the engine–trainer gap first "
        "(precision of the engine, the sampler's temperature and top-p versus the trainer's, MoE routing), and "
        "prefer a divergence mask (Binary TV/KL) over a ratio-only clip or no region at all.",
    ),
    (
        r"^PPO .* drops .* tokens that Binary TV .* keeps",
        "**What PPO drops and a TV mask would keep** (`by_mu.csv`). Ratio clipping fires on rare tokens whose ratio "
        "moved although little probability mass did (notebook 01). *What to change:* if most of these tokens have a "
        "small μ(a), PPO is throwing away gradient on exploratory tokens; a Binary-TV mask (δ ≈ 0.15), or "
        "clip-higher, keeps them.",
    ),
    (
        r"^Binary TV .* drops .* tokens that PPO .* keeps",
        "**What a TV mask drops and PPO keeps** (`by_mu.csv`). These are likely tokens (large μ(a)) that moved a "
        "lot of mass while their ratio stayed inside PPO's band — the moves ratio clipping misses. *What to "
        "change:* nothing if the share is tiny; a growing share means large updates on confident tokens, which a "
        "divergence mask would stop.",
    ),
    (
        r"drops as many tokens as PPO",
        "**Matched threshold** (`matched_delta.csv`): the δ whose Binary-TV mask drops as many tokens as your ε "
        "(notebook 05). It is far below the usual δ = 0.15 because the two rules drop different tokens. *What to "
        "change:* do not set δ to this number to 'keep the same strength'; pick δ for the moves you want to stop, "
        "and use this line to compare how much of the batch each choice masks.",
    ),
    (
        r"sequence-level IS cap",
        "**Sequence-level importance weights** (`sequence_is.csv`): the product of a sequence's token ratios "
        "drifts far from 1 on long responses even when every token's ratio is close to 1, so a cap on it touches "
        "many sequences. *What to change:* if you use sequence-level IS (GSPO-style), prefer the geometric mean "
        "(per-token) weight or a per-token cap; a product cap of 3 would discard or truncate that share of "
        "sequences.",
    ),
    (
        r"null or non-finite",
        "**Data quality** (`report.md`, Inputs): tokens whose log-probs or advantage were missing were left out of "
        "every statistic. *What to change:* a few in a thousand is harmless; many mean the export drops values "
        "(check the engine's log-prob reporting).",
    ),
]


def explain(verdict: str) -> str:
    for pattern, text in EXPLAIN:
        if re.search(pattern, verdict):
            return text
    return "(a verdict this notebook does not describe yet: see the README's report section)"


for verdict in verdicts:
    display(Markdown(f"> {verdict}\n\n{explain(verdict)}"))

# %%
assert verdicts, "report.md has no verdicts"
explained = sum(not explain(v).startswith("(") for v in verdicts)
print(f"{explained} of {len(verdicts)} verdicts explained")
assert explained >= 4

# %% [markdown]
# ## 2. Where the numbers come from
#
# **Mask rates** (`summary.csv`): the share of response tokens with Â ≠ 0 that each mask drops, split by the
# sign of Â. PPO's ε = 0.2 drops far more tokens than Binary TV at 0.15 or 0.2; the asymmetric clip-higher
# (0.2/0.28) drops fewer of the Â > 0 tokens only.

# %%
summary = pd.read_csv(OUT / "summary.csv")
summary[["method", "low", "high", "anchor", "mask_frac", "mask_frac_pos", "mask_frac_neg", "tokens"]]

# %% [markdown]
# **Mismatch per step** (`by_step.csv`, one row per step and metric). `mismatch_mean` is the trend verdict's
# number; `mismatch_k3` is the KL estimate prime-rl itself logs as `mismatch_kl/mean`, and `mask_frac` rows give
# each mask's rate per step.

# %%
by_step = pd.read_csv(OUT / "by_step.csv")
per_step = by_step[by_step["method"].isna()].pivot_table(index="step", columns="metric", values="value")
per_step[["mismatch_mean", "mismatch_max", "mismatch_min", "mismatch_k3", "chi2"]]

# %%
display(Image(filename=str(OUT / "mismatch_by_step.png")))

# %% [markdown]
# **PPO against Binary TV by μ(a)** (`by_mu.csv`): per μ(a) bucket, the tokens dropped by both, by PPO only and by
# TV only. The PPO-only drops crowd the rare buckets, the TV-only drops the likely ones.

# %%
by_mu = pd.read_csv(OUT / "by_mu.csv")
by_mu[(by_mu["sign"] == "all") & (by_mu["tokens"] > 0)][
    ["mu_bucket", "tokens", "ppo_drop", "tv_drop", "both_drop", "ppo_only", "tv_only"]
]

# %%
display(Image(filename=str(OUT / "masks_by_mu.png")))

# %% [markdown]
# **Matched δ** (`matched_delta.csv`) and **sequence-level weights** (`sequence_is.csv`):

# %%
pd.read_csv(OUT / "matched_delta.csv")[["ppo_low", "ppo_high", "ppo_mask_frac", "method", "matched_delta"]]

# %%
pd.read_csv(OUT / "sequence_is.csv")[
    ["level", "cap", "units", "count", "frac_above", "frac_below", "frac_outside"]
]

# %% [markdown]
# ## 3. What a user would change, in order
#
# 1. **A rising mismatch first.** It says the engine and the trainer disagree more as training goes on; no mask
#    fixes the cause. Align what can be aligned (precision, temperature, top-p, the log-prob the engine reports —
#    notebook 03) before tuning thresholds.
# 2. **Then the mask.** If PPO's drops are mostly rare tokens that moved little mass, switch to a divergence mask
#    (`dppo_binary_tv` at δ = 0.15, or `dppo_binary_kl` at 0.05) or at least clip-higher; the report's by-μ table
#    shows what each would keep.
# 3. **Thresholds last.** The matched δ is a translation, not a recommendation; choose δ by the size of move you
#    want to stop, and rerun the report to see the mask rate it gives.
# 4. **Sequence-level corrections with care.** Products of ratios over hundreds of tokens are heavy-tailed; a cap
#    on them discards whole responses.
#
# To run the same card on your own run: `python -m trustregion_lab.report PATH --out DIR` (README, "Bring your
# own run"), or `report.run_report(PATH, out=DIR)` as above.
#
# ## Exercises
#
# 1. Rerun the export with `sigma_end=0.05` (equal to `sigma_start`, so the engine's noise no longer grows). What
#    does the trend verdict say now?
# 2. Which table would you read to decide whether clip-higher (0.2/0.28) is enough, without switching to a TV
#    mask?
# 3. Why does the product weight of a sequence leave [1/3, 3] so much more often than a single token's ratio does?
# 4. The report left some tokens out. Could that bias the mask rates? When would it?

# %% [markdown]
# ## Answers
#
# 1. The mismatch no longer rises by the generator's design (σ is constant over the steps), so the verdict reports
#    a roughly flat mismatch; what remains are step-to-step fluctuations of the sampled tokens.
# 2. `summary.csv`: compare `mask_frac_pos` of `ppo` 0.2/0.2 and 0.2/0.28 with `dppo_binary_tv`; clip-higher only
#    relaxes the Â > 0 side, so the Â < 0 drops (`mask_frac_neg`) stay as many as PPO's. `by_mu.csv` shows
#    whether the remaining drops are rare tokens.
# 3. log of the product is the sum of the tokens' log-ratios; over n tokens its spread grows like √n (and any
#    systematic offset like n), so a response of a few hundred tokens leaves [1/3, 3] often although each token's
#    ratio is within a few per cent of 1.
# 4. Only if the missing values are not random: e.g. an engine that fails to report log-probs for very rare
#    tokens would remove exactly the tokens PPO drops most. A few nulls spread at random change nothing.
