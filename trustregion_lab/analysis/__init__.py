"""trustregion_lab.analysis: how wrong is ratio clipping, by token probability?

Pure functions, arrays in and tidy ``pandas.DataFrame`` out (this package never imports training code):

- `estimator_report`: single-sample and approximate TV/KL estimates against the exact values, by μ(a) bucket and
  entropy bucket (bias, variance, MSE, rank correlation).
- `mask_confusion`: false and missed masks of each trust-region mask against the exact-divergence mask, by μ(a)
  bucket and advantage sign, with the policy-gradient mass wrongly dropped / let through.
- `calibration_table`: mask-rate curves and the divergence threshold δ that matches a ratio clip ε.
- `regime_run_summary`, `choose_regime`, `regime_cells`: the regime map's per-run summary, the calibration's
  choice of task and dose levels, and the verdict of each engine × dose-level cell (docs/design.md §9.3).

Inputs are `TokenBatch` objects: `make_token_batch` builds LLM-like ones (environment logit model, rollout-engine
mismatch, simulated policy-gradient update); `enumerate_tokens` / `sampled_tokens` wrap arrays of your own.
"""

from trustregion_lab.analysis.buckets import (
    DEFAULT_ENTROPY_EDGES,
    DEFAULT_MU_EDGES,
    entropy_buckets,
    mu_buckets,
)
from trustregion_lab.analysis.calibration import (
    batch_critical_thresholds,
    calibration_table,
    mask_rate,
    matched_threshold,
)
from trustregion_lab.analysis.confusion import BatchMaskSpec, gradient_mass, mask_confusion, token_mask
from trustregion_lab.analysis.estimators import ESTIMATOR_TARGETS, estimator_report, token_estimates
from trustregion_lab.analysis.regime_map import (
    RegimeCells,
    RegimeChoice,
    choose_regime,
    regime_cells,
    regime_run_summary,
)
from trustregion_lab.analysis.states import make_token_batch, sample_from_logits
from trustregion_lab.analysis.tokens import (
    SET_RULES,
    TokenBatch,
    enumerate_tokens,
    reported_topk_sets,
    sampled_tokens,
    simulated_update,
    state_entropy,
)

__all__ = [
    "DEFAULT_ENTROPY_EDGES",
    "DEFAULT_MU_EDGES",
    "ESTIMATOR_TARGETS",
    "SET_RULES",
    "BatchMaskSpec",
    "RegimeCells",
    "RegimeChoice",
    "TokenBatch",
    "batch_critical_thresholds",
    "calibration_table",
    "choose_regime",
    "entropy_buckets",
    "enumerate_tokens",
    "estimator_report",
    "gradient_mass",
    "make_token_batch",
    "mask_confusion",
    "mask_rate",
    "matched_threshold",
    "mu_buckets",
    "regime_cells",
    "regime_run_summary",
    "reported_topk_sets",
    "sample_from_logits",
    "sampled_tokens",
    "simulated_update",
    "state_entropy",
    "token_estimates",
    "token_mask",
]
