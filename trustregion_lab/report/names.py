"""Metric names of the report (this project's names, docs/design.md §2 and the trainers') and each framework's own name
for the same quantity, where one exists.

With r = π(a)/μ(a) over response tokens whose log-probs are finite (mask rates: tokens with Â ≠ 0):
    mismatch_mean          mean |π(a) − μ(a)|               mismatch_abs_max   max |π(a) − μ(a)|
    mismatch_max           max (π(a) − μ(a))                mismatch_min       min (π(a) − μ(a))
    mismatch_logprob_abs   mean |log π(a) − log μ(a)|       mismatch_logprob_abs_max   max of it
    mismatch_k1            mean (log μ(a) − log π(a))       mismatch_k3        mean (r − 1 − log r)
    chi2                   mean (r − 1)²                    ess                (Σ r)² / (n Σ r²)
    ratio_cap_frac         share with r > 10 (the default ratio cap, docs/design.md §2)
    mask_frac              dropped / tokens with Â ≠ 0, for the mask named in the row (method, low, high)
    tv_exact, kl_exact     mean exact TV / KL per token's state (toys only), entropy, reward: token means
    framework_mask_frac    share of response tokens (every Â) the framework's own loss masked (prime-rl's is_masked)
`FRAMEWORK_METRICS` gives each framework's own name for these, read from its source code, with a note on what
it compares: verl, TRL and SkyRL compare the recomputed π_old (not the current π) with μ, which is the same
quantity when the table's logprob column holds π_old (as `from_verl` writes it without `log_prob`).
"""

from __future__ import annotations

__all__ = ["FRAMEWORK_METRICS", "METRICS", "framework_metric"]

METRICS: dict[str, str] = {
    "mismatch_mean": "mean |π(a) − μ(a)|",
    "mismatch_abs_max": "max |π(a) − μ(a)|",
    "mismatch_max": "max (π(a) − μ(a))",
    "mismatch_min": "min (π(a) − μ(a))",
    "mismatch_logprob_abs": "mean |log π(a) − log μ(a)|",
    "mismatch_logprob_abs_max": "max |log π(a) − log μ(a)|",
    "mismatch_k1": "mean (log μ(a) − log π(a))",
    "mismatch_k3": "mean (r − 1 − log r)",
    "chi2": "mean (r − 1)²",
    "ess": "(Σ r)² / (n Σ r²)",
    "ratio_cap_frac": "share of tokens with r > 10",
    "mask_frac": "dropped / tokens with Â ≠ 0 (the row's mask)",
    "tv_exact": "mean exact TV(μ, π) of the tokens' states",
    "kl_exact": "mean exact KL(μ‖π) of the tokens' states",
    "entropy": "mean entropy of π (nats)",
    "reward": "mean reward (token-weighted)",
    "framework_mask_frac": "share of response tokens the framework's own loss masked (all Â, a token mean)",
}

# framework → {(metric, method, low, high) or (metric,): (their name, note)}
FRAMEWORK_METRICS: dict[str, dict[tuple, tuple[str, str]]] = {
    "prime-rl": {
        ("mismatch_k3",): ("mismatch_kl/all/mean", "k3 of π/μ; prime-rl's token mean over all ranks"),
        ("framework_mask_frac",): (
            "is_masked/mean",
            "prime-rl's own flag (its default DPPO mask, Binary TV 0.2/0.2; Â = 0 tokens are judged on the "
            "Â < 0 side and counted); prime-rl averages per sample first",
        ),
    },
    "verl": {
        ("mismatch_mean",): (
            "training/rollout_probs_diff_mean",
            "|exp(old_log_probs) − exp(rollout_log_probs)|",
        ),
        ("mismatch_abs_max",): ("training/rollout_probs_diff_max", "same, max"),
        ("mismatch_k1",): ("rollout_corr/kl", "mean(log μ − log π_old)"),
        ("mismatch_k3",): ("rollout_corr/k3_kl", "k3 of π_old/μ"),
        ("chi2",): ("rollout_corr/chi2_token", "E[ρ²] − 1; equals mean (r − 1)² when E r = 1"),
    },
    "trl": {
        ("mismatch_logprob_abs",): ("sampling/sampling_logp_difference/mean", "|log π_old − log μ|"),
        ("mismatch_logprob_abs_max",): ("sampling/sampling_logp_difference/max", "same, max"),
    },
    "slime": {
        ("mismatch_logprob_abs",): ("train/train_rollout_logprob_abs_diff", "per-sample mean, then summed"),
    },
    "skyrl": {
        ("mismatch_logprob_abs",): ("policy/rollout_train_logprobs_abs_diff_mean", "|log μ − log π_old|"),
        ("mismatch_logprob_abs_max",): ("policy/rollout_train_logprobs_abs_diff_max", "same, max"),
    },
}


def framework_metric(
    framework: str | None, metric: str, method: str = "", low: float = 0.0, high: float = 0.0
) -> tuple[str, str]:
    """(their metric name, note) for one of our metrics in `framework`, or ("", "") when it has none."""
    table = FRAMEWORK_METRICS.get(framework or "", {})
    key = (metric, method, low, high) if method else (metric,)
    return table.get(key, ("", ""))
