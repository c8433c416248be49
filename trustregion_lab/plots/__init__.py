"""Figures drawn only from stored sweep tables: ``python -m trustregion_lab.plots RESULTS_DIR``.

Each preset names its own figure function (``Preset.figures``, see ``trustregion_lab.experiment``); the
functions live here and read a merged table only. `draw_figures` finds the preset by the name in
``RESULTS_DIR/sweep.json`` (or the table's ``preset`` column), calls its function and writes what it returns
into ``RESULTS_DIR/figures`` or ``--figures-dir``: PNG figures (dpi 120), each with a CSV of the rows it is drawn
from (the numbers behind the picture). The figure functions:

- `estimator_figures`: ``estimators_by_mu.png``, bias and spread of each TV/KL estimate by μ(a) bucket.
- `mask_figures`: ``masks_by_mu.png``, false- and missed-mask rates by μ(a) bucket and advantage sign.
- `calibration_figures`: ``calibration.png``, mask rate against the threshold and the δ that matches PPO's
  mask rate at each ε (the iso-mask curves).
- `vocab_scaling_figures`: ``vocab_scaling.png``, estimator RMSE and bias against the vocabulary size.
- `analysis_suite_figures`: all four, each from the rows of its analysis (the ``default`` preset).
- `training_figures`: ``training_curves.png``, reward and exact TV(μ, π) over training steps (mean and a band
  over seeds, one hue per variant), and ``training_summary.csv``.
- `stability_figures`: ``stability_curves.png``, reward, mean |π − μ| and max (π − μ) over steps, one row per
  rollout engine (the stability study's layout).

Configuration columns that vary within a table (e.g. ``perturbation`` or ``engine``) become facets.
Every figure is a `matplotlib.figure.Figure` built without pyplot, so drawing needs no display. Every file is
written through a temporary file and a rename (``trustregion_lab._io``).

Modules: ``common`` (saving, facets, legends, μ(a)-bucket axes), ``analysis`` (the analysis presets' figures),
``training`` (the training presets' figures), ``driver`` (`draw_figures` and the command line).
"""

from trustregion_lab.plots.analysis import (
    analysis_suite_figures,
    calibration_figures,
    estimator_figures,
    mask_figures,
    plot_calibration,
    plot_estimators,
    plot_masks,
    plot_vocab_scaling,
    vocab_scaling_figures,
)
from trustregion_lab.plots.common import DPI, MIN_TOKENS, Outputs
from trustregion_lab.plots.driver import ResultsError, draw_figures, main
from trustregion_lab.plots.training import (
    plot_stability,
    plot_training,
    stability_figures,
    training_figures,
    training_summary,
)

__all__ = [
    "DPI",
    "MIN_TOKENS",
    "Outputs",
    "ResultsError",
    "analysis_suite_figures",
    "calibration_figures",
    "draw_figures",
    "estimator_figures",
    "main",
    "mask_figures",
    "plot_calibration",
    "plot_estimators",
    "plot_masks",
    "plot_stability",
    "plot_training",
    "plot_vocab_scaling",
    "stability_figures",
    "training_figures",
    "training_summary",
    "vocab_scaling_figures",
]
