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
# # 01 — The ratio is a one-sample estimate of a divergence
#
# PPO and GRPO keep each update inside a *trust region* by clipping the importance ratio of the sampled token,
# r = π(a|s) / μ(a|s), where μ is the rollout engine's distribution and π the trainer's current one. This notebook
# shows what the ratio actually measures:
#
# 1. |r − 1| is an unbiased single-sample estimate of 2·TV(μ, π), and (r − 1)² of χ²(π‖μ) (derived below, then
#    checked numerically with `trustregion_lab`);
# 2. the same probability move looks huge or tiny to the ratio depending on μ(a): rare tokens are over-penalized,
#    likely tokens under-constrained (the paper's introduction and §4.2, arXiv 2602.04879);
# 3. on a batch of LLM-like states, ratio clipping and an exact-TV mask drop *different* tokens.
#
# **Run time and sizes.** At its default size (a vocabulary of 2,048, 48 states) the notebook runs top to bottom
# in about 20 s on 2 CPU cores. Set `FULL = True` in the first code cell for the real sizes (a vocabulary of
# 32,768, 384 states; about a minute); the conclusions hold at both sizes. The sliders in section 3 need
# ipywidgets (in the `[notebook]` extra); without a browser the notebook shows their default setting.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.special import log_softmax

from trustregion_lab import analysis, divergence, exercises, explore, losses, masks
from trustregion_lab.envs.logit_model import llm_like_logits

FULL = False  # True: the real sizes (about a minute on 2 cores)
VOCAB = 32_768 if FULL else 2_048
NUM_STATES = 384 if FULL else 48
SAMPLES_PER_STATE = 8 if FULL else 4
MC_SAMPLES = 100_000 if FULL else 4_000  # draws per state for the Monte-Carlo check
SEED = 0
pd.set_option("display.precision", 4)
print(f"FULL={FULL}: vocabulary {VOCAB:,}, {NUM_STATES} states")

# %% [markdown]
# ## 1. The derivation
#
# Fix a state. The rollout engine samples a ~ μ, the trainer computes r(a) = π(a)/μ(a). Every token with
# π(a) > 0 has μ(a) > 0 here (both are softmaxes), so the expectation over a ~ μ is a sum weighted by μ(a):
#
# $$\mathbb{E}_{a\sim\mu}\,|r(a) - 1| = \sum_a \mu(a)\,\Big|\frac{\pi(a)}{\mu(a)} - 1\Big|
#   = \sum_a |\pi(a) - \mu(a)| = 2\,\mathrm{TV}(\mu, \pi).$$
#
# So |r − 1| / 2 is an **unbiased one-sample estimate of the total variation** (the paper's Eq. 10). PPO's clip
# asks "is |r − 1| > ε?" about *one* draw of that estimate. How noisy is one draw? Its second moment is
#
# $$\mathbb{E}_{a\sim\mu}\,(r(a) - 1)^2 = \sum_a \mu(a)\,\frac{(\pi(a) - \mu(a))^2}{\mu(a)^2}
#   = \sum_a \frac{(\pi(a) - \mu(a))^2}{\mu(a)} = \chi^2(\pi\,\|\,\mu),$$
#
# hence Var|r − 1| = χ²(π‖μ) − 4·TV². Each token contributes (π(a) − μ(a))² / μ(a) to χ²: a token that moves a
# fixed amount of mass contributes more the rarer it was under μ. The single-sample estimate is dominated by
# rare tokens, and those are exactly the tokens whose ratio swings the most.

# %% [markdown]
# ## 2. Checking both identities numerically
#
# States come from the environments' LLM-like logit model (`llm_like_logits`: Zipf-ranked logits, 80 % confident
# and 20 % high-entropy "forking" states). π is one simulated policy-gradient step away from μ
# (`analysis.simulated_update`). For each state we compare three numbers:
# the package's exact `divergence.tv`, the exact expectation Σ_a μ(a)|r(a) − 1| written out in numpy, and a
# Monte-Carlo mean of `divergence.abs_ratio_dev` over tokens sampled from μ.

# %%
rng = np.random.default_rng(SEED)
check_states = 8
rollout_logits = llm_like_logits(rng, check_states, VOCAB).astype(np.float64)
update_tokens = analysis.sample_from_logits(rng, rollout_logits, 8)
update_adv = rng.standard_normal(update_tokens.shape)
trainer_logits = analysis.simulated_update(rollout_logits, update_tokens, update_adv, step_size=2.0)

log_mu = log_softmax(rollout_logits, axis=-1)
log_pi = log_softmax(trainer_logits, axis=-1)
mu, pi = np.exp(log_mu), np.exp(log_pi)

tv_package = np.asarray(divergence.tv(rollout_logits, trainer_logits))
tv_from_ratio = 0.5 * (mu * np.abs(pi / mu - 1.0)).sum(-1)  # ½ Σ μ |r − 1|, the identity written out
chi2_formula = ((pi - mu) ** 2 / mu).sum(-1)  # Σ (π − μ)² / μ

mc_tokens = analysis.sample_from_logits(rng, rollout_logits, MC_SAMPLES)
rows = np.arange(check_states)[:, None]
abs_dev = np.asarray(divergence.abs_ratio_dev(log_mu[rows, mc_tokens], log_pi[rows, mc_tokens]))
mc_tv = 0.5 * abs_dev.mean(-1)
mc_tv_se = 0.5 * abs_dev.std(-1) / np.sqrt(MC_SAMPLES)
mc_chi2 = (abs_dev**2).mean(-1)

check = pd.DataFrame(
    {
        "TV exact (package)": tv_package,
        "½ Σ μ|r−1| (numpy)": tv_from_ratio,
        "½ mean|r−1| (MC)": mc_tv,
        "MC std. error": mc_tv_se,
        "χ² = Σ(π−μ)²/μ": chi2_formula,
        "mean (r−1)² (MC)": mc_chi2,
    }
)
check

# %%
assert np.allclose(tv_package, tv_from_ratio, rtol=1e-9, atol=1e-12), "identity E|r−1| = 2 TV failed"
z = np.abs(mc_tv - tv_package) / np.maximum(mc_tv_se, 1e-300)
moved_states = tv_package > 1e-4
print("|MC − exact| in standard errors, states with TV > 1e-4:", np.round(z[moved_states], 2))
assert np.all(z[moved_states] < 5), "Monte-Carlo mean of |r − 1| / 2 is not consistent with the exact TV"
print("var |r−1| = χ² − 4 TV² per state:", np.round(chi2_formula - 4 * tv_package**2, 6))

# %% [markdown]
# The exact identity holds to rounding, and where a state moved visibly the Monte-Carlo means sit within a few
# standard errors of the exact TV. In nearly deterministic states (TV ≈ 1e-8) the Monte-Carlo mean is often off
# by a large factor even with many draws: the mass that moved sits on rare tokens that are almost never sampled,
# and when one is, its ratio is huge — the χ² term in action. A single sampled token is a poor judge of how far
# such a state moved.
#
# The trainers report the same quantities per batch: `losses.policy_loss` logs `chi2` = mean((r − 1)²) over
# response tokens, the sample version of χ²(π‖μ). Fed the Monte-Carlo tokens of one state, it reproduces the
# number above:

# %%
state = int(np.argmax(chi2_formula))
_, metrics = losses.policy_loss(
    "ppo",
    logprob=log_pi[state, mc_tokens[state]],
    rollout_logprob=log_mu[state, mc_tokens[state]],
    advantages=np.ones(MC_SAMPLES),
    response_mask=np.ones(MC_SAMPLES, dtype=bool),
    low=0.2,
    high=0.2,
)
print(f"state {state}: chi2 metric {metrics['chi2']:.5f}  vs  χ² exact {chi2_formula[state]:.5f}")
print(f"mismatch_k1 = mean(log μ − log π) = {metrics['mismatch_k1']:.5f}, ess = {metrics['ess']:.4f}")

# %% [markdown]
# ## 3. Same ratio, very different moves
#
# |π(a) − μ(a)| = μ(a) · |r − 1|: the probability mass a token moves is its ratio deviation *times its
# probability*. The paper's examples, evaluated with the package's own masks (ratio clip ε = 0.2 on both sides;
# DPPO Binary-TV with δ = 0.15). The advantage sign is the one that pushes each token the way it moved: Â > 0
# for a token whose probability went up, Â < 0 for one that went down.

# %%
examples = pd.DataFrame(
    {
        "case": ["rare token doubles", "§4.2: rare token ×100", "likely token drops (intro, §4.2)"],
        "mu": [0.001, 1e-4, 0.99],
        "pi": [0.002, 1e-2, 0.80],
    }
)
lmu, lpi = np.log(examples["mu"].to_numpy()), np.log(examples["pi"].to_numpy())
adv = np.sign(examples["pi"] - examples["mu"]).to_numpy()
examples["ratio r"] = np.exp(lpi - lmu)
examples["|π−μ| (Binary TV)"] = np.asarray(divergence.binary_tv(lmu, lpi))
examples["Binary KL"] = np.asarray(divergence.binary_kl(lmu, lpi))
common = {"logprob": lpi, "rollout_logprob": lmu, "advantages": adv}
examples["PPO ε=0.2 drops"] = ~np.asarray(masks.trust_region_mask("ppo", low=0.2, high=0.2, **common))
examples["Binary-TV δ=0.15 drops"] = ~np.asarray(
    masks.trust_region_mask("dppo_binary_tv", low=0.15, high=0.15, **common)
)
examples

# %%
assert examples.loc[0, "PPO ε=0.2 drops"] and not examples.loc[0, "Binary-TV δ=0.15 drops"]
assert examples.loc[1, "PPO ε=0.2 drops"] and not examples.loc[1, "Binary-TV δ=0.15 drops"]
assert not examples.loc[2, "PPO ε=0.2 drops"] and examples.loc[2, "Binary-TV δ=0.15 drops"]
print(
    f"0.001 → 0.002: r = {examples.loc[0, 'ratio r']:.2f}, clipped by PPO, but only "
    f"{examples.loc[0, '|π−μ| (Binary TV)']:.4f} of probability mass moved."
)
print(
    f"1e-4 → 1e-2:   r = {examples.loc[1, 'ratio r']:.0f}, clipped by PPO, moved "
    f"{examples.loc[1, '|π−μ| (Binary TV)']:.4f} of mass."
)
print(
    f"0.99 → 0.80:   r = {examples.loc[2, 'ratio r']:.3f} > 1 − 0.2, NOT clipped by PPO, yet moved "
    f"{examples.loc[2, '|π−μ| (Binary TV)']:.2f} of mass — "
    f"{examples.loc[2, '|π−μ| (Binary TV)'] / examples.loc[1, '|π−μ| (Binary TV)']:.0f}× the clipped ×100 move."
)

# %% [markdown]
# The general picture: for each rollout probability μ(a), the smallest upward move π(a) − μ(a) that each rule
# refuses (Â > 0), found by asking `masks.trust_region_mask` on a fine grid of moves. Ratio clipping allows a move
# of ε·μ(a) — vanishing for rare tokens — while Binary TV allows the same δ of mass everywhere (until π would
# exceed 1).

# %%
mu_grid = np.geomspace(1e-5, 0.8, 60)
move_grid = np.geomspace(1e-8, 0.99, 2_000)
mu_2d, move_2d = np.meshgrid(mu_grid, move_grid, indexing="ij")
valid = mu_2d + move_2d < 1.0
lmu_2d = np.log(mu_2d[valid])
lpi_2d = np.log(mu_2d[valid] + move_2d[valid])
allowed = {}
for label, method, thr in (
    ("ratio clip ε = 0.2", "ppo", 0.2),
    ("Binary TV δ = 0.15", "dppo_binary_tv", 0.15),
):
    drop = np.zeros(mu_2d.shape, dtype=bool)
    drop[valid] = ~np.asarray(
        masks.trust_region_mask(
            method, logprob=lpi_2d, rollout_logprob=lmu_2d, advantages=np.ones(lmu_2d.size), low=thr, high=thr
        )
    )
    first = np.where(drop.any(1), move_grid[np.argmax(drop, axis=1)], np.nan)
    allowed[label] = first
fig, ax = plt.subplots(figsize=(6.5, 4))
for label, first in allowed.items():
    ax.plot(mu_grid, first, label=label)
ax.plot(mu_grid, 0.2 * mu_grid, "k:", lw=0.8, label="ε·μ(a)")
ax.set(xscale="log", yscale="log", xlabel="μ(a)", ylabel="smallest refused move π(a) − μ(a)")
ax.set_title("How much mass may a token gain before its gradient is dropped?")
ax.legend()
plt.show()
ratio_allowed = allowed["ratio clip ε = 0.2"]
print(
    f"at μ(a) = {mu_grid[0]:.0e}: ratio clip refuses a gain of {ratio_allowed[0]:.1e}, Binary TV allows "
    f"{allowed['Binary TV δ = 0.15'][0]:.2f}"
)

# %% [markdown]
# ### Try it: move one token across the regions
#
# Pick μ(a) and π(a) with the sliders (both on a log scale) and the sign of Â. The shaded band is what PPO's
# ratio clip allows around μ(a); the dashed lines are Binary TV's edges μ ± δ, the dotted ones Binary KL's
# (KL_bin(μ, π) = δ_KL = 0.05). A token with Â > 0 is dropped above a rule's upper edge (the update would push it
# further up), one with Â < 0 below its lower edge. The star is your token; the box says which rules drop it and
# why (`trustregion_lab.explore.token_verdict`, which asks `masks.trust_region_mask`).

# %%
MU_GRID = np.geomspace(1e-4, 0.999, 300)


def show_token(
    mu: float = 0.3, pi: float = 0.42, advantage: float = 1.0, eps: float = 0.2, delta: float = 0.15
):
    verdict = explore.token_verdict(mu, pi, advantage, eps, delta, 0.05)
    reg = explore.token_regions(MU_GRID, eps, delta, 0.05)
    _, ax = plt.subplots(figsize=(7.5, 5.2), constrained_layout=True)
    ax.fill_between(
        reg["mu"],
        reg["ppo_low"],
        reg["ppo_high"],
        color="tab:orange",
        alpha=0.3,
        label=f"PPO keeps (ε = {eps:g})",
    )
    ax.plot(reg["mu"], reg["tv_high"], "b--", lw=1.2, label=f"Binary TV edges (δ = {delta:g})")
    ax.plot(reg["mu"], reg["tv_low"].where(reg["tv_low"] > 0), "b--", lw=1.2)
    ax.plot(reg["mu"], reg["kl_high"], "g:", lw=1.5, label="Binary KL edges (δ = 0.05)")
    ax.plot(reg["mu"], reg["kl_low"].where(reg["kl_low"] > 1e-6), "g:", lw=1.5)
    ax.plot(MU_GRID, MU_GRID, color="0.5", lw=0.6, label="π = μ")
    dropped = [label for label in ("PPO ratio clip", "Binary TV", "Binary KL") if verdict[label] != "kept"]
    ax.scatter(
        [mu], [pi], marker="*", s=260, zorder=5, color="tab:red" if dropped else "tab:green", edgecolor="k"
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(1e-4, 1),
        ylim=(1e-6, 1.5),
        xlabel="μ(a)  (rollout engine)",
        ylabel="π(a)  (trainer)",
    )
    lines = [
        f"r = {verdict['ratio']:.3g},  |π − μ| = {verdict['binary_tv']:.3g},  KL_bin = {verdict['binary_kl']:.3g}"
    ]
    lines += [f"{label}: {verdict[label]}" for label in ("PPO ratio clip", "Binary TV", "Binary KL")]
    ax.set_title("\n".join(lines), fontsize=8, loc="left")
    ax.legend(loc="lower right", fontsize=8)
    plt.show()
    return verdict


token_panel = explore.controls(
    show_token,
    mu=widgets.FloatLogSlider(value=0.3, base=10, min=-4, max=-0.001, step=0.02, description="μ(a)"),
    pi=widgets.FloatLogSlider(value=0.42, base=10, min=-4, max=-0.001, step=0.02, description="π(a)"),
    advantage=widgets.ToggleButtons(options=[("Â > 0", 1.0), ("Â < 0", -1.0)], description="advantage"),
    eps=widgets.FloatSlider(value=0.2, min=0.05, max=0.4, step=0.01, description="PPO ε"),
    delta=widgets.FloatSlider(value=0.15, min=0.05, max=0.3, step=0.01, description="TV δ"),
)
token_panel

# %%
# the panel's first answer (what a notebook run without a browser shows): μ = 0.3 → π = 0.42 with Â > 0
first = token_panel.result
print({k: first[k] for k in ("ratio", "binary_tv", "PPO ratio clip", "Binary TV", "Binary KL")})
assert first["PPO ratio clip"].startswith("dropped") and first["Binary TV"] == first["Binary KL"] == "kept"

# %% [markdown]
# ## 4. Which tokens does each rule drop?
#
# Now a whole batch: `analysis.make_token_batch` draws LLM-like states, a bf16-like rollout engine μ, several
# sampled tokens per state with Â ~ N(0, 1), and a π one simulated policy-gradient step away (step sizes spread
# over two decades, from barely moved to far outside any trust region). We ask the package for two masks on the
# same tokens: PPO's ratio clip (ε = 0.2) and the exact-TV DPPO mask (δ = 0.15, the full-vocabulary TV of the
# state), and look at the dropped tokens by their rollout probability μ(a).

# %%
batch = analysis.make_token_batch(
    SEED,
    num_states=NUM_STATES,
    vocab_size=VOCAB,
    samples_per_state=SAMPLES_PER_STATE,
    step_size=3.0,
    topk_sizes=(),
)
keep_ppo = analysis.token_mask(batch, analysis.BatchMaskSpec("ppo", 0.2, 0.2))
keep_tv = analysis.token_mask(batch, analysis.BatchMaskSpec("dppo_exact_tv", 0.15, 0.15))
keep_bin = analysis.token_mask(batch, analysis.BatchMaskSpec("dppo_binary_tv", 0.15, 0.15))
mu_a = np.exp(batch.rollout_logprob)
pi_a = np.exp(batch.logprob)
ratio = pi_a / mu_a
moved = np.abs(pi_a - mu_a)
print(
    f"{mu_a.size} tokens; dropped by PPO ε=0.2: {(~keep_ppo).mean():.1%}, by exact TV δ=0.15: "
    f"{(~keep_tv).mean():.1%}, by Binary TV δ=0.15: {(~keep_bin).mean():.1%}"
)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), sharey=True, constrained_layout=True)
color_norm = plt.matplotlib.colors.LogNorm(vmin=max(mu_a.min(), 1e-8), vmax=1.0)
for ax, keep, title in zip(
    axes,
    (keep_ppo, keep_tv, keep_bin),
    ("ratio clip, ε = 0.2", "exact TV mask, δ = 0.15", "Binary TV mask, δ = 0.15"),
):
    ax.scatter(ratio[keep], np.maximum(moved[keep], 1e-9), s=4, c="0.82", label="kept")
    points = ax.scatter(
        ratio[~keep],
        np.maximum(moved[~keep], 1e-9),
        s=9,
        c=mu_a[~keep],
        cmap="viridis",
        norm=color_norm,
        label="dropped",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvspan(0.8, 1.2, color="tab:orange", alpha=0.08)
    ax.axhline(0.15, color="tab:red", lw=0.8, ls="--")
    ax.set_title(f"{title}: {(~keep).sum()} dropped")
    ax.set_xlabel("ratio r = π(a)/μ(a)")
axes[0].set_ylabel("|π(a) − μ(a)|  (mass the token moved)")
axes[0].legend(loc="lower right", markerscale=3)
fig.colorbar(points, ax=axes, label="μ(a)  (colour of dropped tokens)")
plt.show()

# %% [markdown]
# The shaded band is PPO's region 0.8 ≤ r ≤ 1.2; the dashed line is δ = 0.15 of probability mass. Ratio clipping
# drops a vertical slab on the left and right (dark points: rare tokens, many of which moved almost no mass),
# while the TV masks drop tokens whose state moved a lot of mass (top of the plot), whatever their ratio —
# including bright, likely tokens sitting inside PPO's band. The numbers:


# %%
def describe(keep: np.ndarray) -> dict[str, float]:
    dropped = ~keep
    return {
        "dropped share": dropped.mean(),
        "median μ(a) of dropped": float(np.median(mu_a[dropped])) if dropped.any() else np.nan,
        "dropped that moved < 0.01 mass": float((moved[dropped] < 0.01).mean()) if dropped.any() else np.nan,
        "dropped with μ(a) < 0.1": float((mu_a[dropped] < 0.1).mean()) if dropped.any() else np.nan,
    }


summary = pd.DataFrame(
    {
        "PPO ε=0.2": describe(keep_ppo),
        "exact TV δ=0.15": describe(keep_tv),
        "Binary TV δ=0.15": describe(keep_bin),
    }
).T
kept_outward = keep_ppo & (
    ((batch.advantages > 0) & (pi_a > mu_a)) | ((batch.advantages < 0) & (pi_a < mu_a))
)
largest_kept = int(np.argmax(np.where(kept_outward, moved, -1.0)))
smallest_dropped = int(np.argmin(np.where(~keep_ppo, moved, np.inf)))
summary

# %%
print(
    f"Over-penalized: {summary.loc['PPO ε=0.2', 'dropped that moved < 0.01 mass']:.0%} of the tokens PPO drops "
    f"moved less than 0.01 of probability mass (median μ(a) of its drops: "
    f"{summary.loc['PPO ε=0.2', 'median μ(a) of dropped']:.2g}; of the Binary-TV drops: "
    f"{summary.loc['Binary TV δ=0.15', 'median μ(a) of dropped']:.2g})."
)
print(
    f"PPO drops a token that moved {moved[smallest_dropped]:.1e} of mass (μ(a) = {mu_a[smallest_dropped]:.1e}, "
    f"r = {ratio[smallest_dropped]:.2f}) ..."
)
print(
    f"... and keeps one pushed further out that moved {moved[largest_kept]:.3f} (μ(a) = {mu_a[largest_kept]:.3f}, "
    f"r = {ratio[largest_kept]:.3f}): {moved[largest_kept] / moved[smallest_dropped]:.0f}× more mass."
)
assert moved[largest_kept] > 10 * moved[smallest_dropped]
assert (
    summary.loc["PPO ε=0.2", "median μ(a) of dropped"]
    < summary.loc["Binary TV δ=0.15", "median μ(a) of dropped"]
)

# %% [markdown]
# This is the paper's introduction in numbers: the ratio's trust region is too tight for rare tokens (their
# ratio leaves [0.8, 1.2] after tiny moves) and too loose for likely ones (a 0.19 drop of a 0.99 token is
# inside it). A divergence mask measures the move itself.
#
# ## Write it yourself (self-checked)
#
# Implement the three rules of this notebook in plain numpy and let `check` compare them with the package on
# random and extreme tokens. Inputs are float64 arrays of N tokens: `mu` = μ(a), `pi` = π(a) (probabilities, not
# log-probs), `adv` = Â; return the Binary TV `[N]`, or a bool keep-mask `[N]` (True = the token keeps its
# gradient). `exercises.check` prints "passed" or the first failing case with a hint. The stubs below fail on purpose;
# the solutions are in a collapsed cell at the very end of the notebook.


# %%
def my_binary_tv(mu, pi):
    """|π(a) − μ(a)|, the paper's Eq. 13."""
    return np.zeros_like(mu)  # ← your code


def my_ppo_mask(mu, pi, adv, eps):
    """keep unless (Â > 0 and r > 1 + ε) or (Â < 0 and r < 1 − ε), r = π(a)/μ(a)."""
    return np.ones(mu.shape, dtype=bool)  # ← your code


def my_dppo_tv_mask(mu, pi, adv, delta):
    """keep unless (Â > 0 and π(a) − μ(a) > δ) or (Â < 0 and μ(a) − π(a) > δ)."""
    return np.ones(mu.shape, dtype=bool)  # ← your code


exercises.check("binary_tv", my_binary_tv)
exercises.check("ppo_mask", my_ppo_mask)
exercises.check("dppo_tv_mask", my_dppo_tv_mask)

# %% [markdown]
# ## Exercises
#
# 1. From the identity E|r − 1| = 2·TV, what is E[r − 1] (without the absolute value)? What does that say about
#    using the *mean* ratio as a drift alarm?
# 2. A token has μ(a) = 0.3. For which π(a) does PPO (ε = 0.2) drop it when Â > 0? For which π(a) does Binary TV
#    (δ = 0.15)? At which μ(a) do the two upward thresholds coincide?
# 3. Rerun section 4 with `step_size=0.3`. Which mask's dropped share falls faster, and why?
# 4. Using the χ² identity, explain why a batch whose `chi2` metric is large can still have a small exact TV.

# %% [markdown]
# ## Answers
#
# 1. E[r − 1] = Σ_a μ(a)(π(a)/μ(a) − 1) = Σ π − Σ μ = 0 for every π: the mean ratio is 1 in expectation no
#    matter how far π moved, so `ratio_mean` ≈ 1 says nothing about drift; |r − 1|, k3 or χ² do.
# 2. PPO: r > 1.2, i.e. π(a) > 0.36. Binary TV: π(a) − μ(a) > 0.15, i.e. π(a) > 0.45. The upward thresholds
#    coincide when μ(a)·ε = δ, i.e. μ(a) = δ/ε = 0.75: below it PPO is the stricter rule, above it Binary TV is.
# 3. PPO's share falls more slowly: small steps still push rare tokens' ratios past 1.2, while few states move
#    0.15 of mass. Ratio clipping keeps firing at small steps, mostly on rare tokens.
# 4. χ² = Σ (π − μ)²/μ weights each move by 1/μ(a): a small move on a token with tiny μ(a) inflates χ² (and its
#    sampled estimate) while adding almost nothing to TV = ½ Σ |π − μ|.

# %% [markdown]
# Solutions of the self-checked functions (collapsed; expand to read). Running the cell checks them.


# %% jupyter={"source_hidden": true}
def solution_binary_tv(mu, pi):
    return np.abs(pi - mu)


def solution_ppo_mask(mu, pi, adv, eps):
    r = pi / mu
    return ~(((adv > 0) & (r > 1 + eps)) | ((adv < 0) & (r < 1 - eps)))


def solution_dppo_tv_mask(mu, pi, adv, delta):
    return ~(((adv > 0) & (pi - mu > delta)) | ((adv < 0) & (mu - pi > delta)))


assert exercises.check("binary_tv", solution_binary_tv)
assert exercises.check("ppo_mask", solution_ppo_mask)
assert exercises.check("dppo_tv_mask", solution_dppo_tv_mask)
