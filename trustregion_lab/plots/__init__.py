"""Figures drawn only from stored sweep tables: ``python -m trustregion_lab.plots RESULTS_DIR``.

Every preset's figure function lives in this package, and `PRESET_FIGURES` (``registry``) says which one draws
each preset; the sweep reads that registry (``trustregion_lab.sweep.plan.available_presets``), the presets do
not name their figures, so nothing below ``plots`` imports it and ``plots`` imports neither the sweep nor the
trainers. `draw_figures` finds the preset by the name in ``RESULTS_DIR/sweep.json`` (or the table's ``preset``
column), calls its function and writes what it returns into ``RESULTS_DIR/figures`` or ``--figures-dir``: PNG
figures (dpi 120), each with a CSV of the rows it is drawn from (the numbers behind the picture). The figure
functions:

- `estimator_figures` (preset ``estimators``): ``estimators_by_mu.png``, bias and spread of each TV/KL estimate
  by μ(a) bucket, and ``estimator_bias.png``, the bias of each estimate with its 95 % interval (which ones are
  unbiased under mismatch).
- `mask_figures` (``masks``): ``masks_by_mu.png``, false- and missed-mask rates by μ(a) bucket and advantage
  sign.
- `calibration_figures` (``calibration``): ``calibration.png``, mask rate against the threshold and the δ that
  matches PPO's mask rate at each ε (the iso-mask curves).
- `vocab_scaling_figures` (``vocab-scaling``): ``vocab_scaling.png``, estimator RMSE and bias against the
  vocabulary size.
- `analysis_suite_figures` (``default``): all of the above, each from the rows of its analysis.
- `training_figures` (``bandit-train``, ``sequence-train``): ``training_curves.png``, reward, exact TV(μ, π)
  and the masked share over training steps, one small panel per variant, and ``training_summary.csv``.
- `stability_figures` (``stability``, ``stability-quick``, ``stability-long``): ``stability_curves.png``,
  reward, mean |π − μ| and max (π − μ) over steps, one row per rollout engine, with ``stability_summary.csv``
  and ``stability_verdict.csv``.
- `stability_search_figures` (``stability-search``): ``stability_curves.png`` per search cell and
  ``search.csv``.
- `stability_calibration_figures` (``stability-calibration``): the training curves and ``calibration.csv``.
- `regime_map_figures` (``regime-map``, ``regime-map-quick``): ``regime_map.png``, one heat map per arm (rows
  engines, columns dose levels, colour = the arm's final reward minus pg_is's), with ``regime_map.csv`` (one
  row per run), ``regime_cells.csv`` and ``regime_cell_verdicts.csv``.
- `regime_calibration_figures` (``regime-calibration``): ``regime_calibration.png``, final reward and measured
  dose per ladder level and task candidate, with ``regime_calibration.csv`` and ``regime_choice.csv``.

Configuration columns that vary within a table (e.g. ``perturbation`` or ``engine``) become facets.
Every figure is a `matplotlib.figure.Figure` built without pyplot, so drawing needs no display. Every file is
written through a temporary file and a rename (``trustregion_lab._io``).

Modules: ``common`` (saving, facets, legends, line styles, μ(a)-bucket and log axes), ``analysis`` (the
analysis presets' figures), ``calibration`` (the ε ↔ δ calibration figure), ``training`` (the training presets'), ``stability`` (the stability study's),
``regime_map`` (the regime map's), ``registry`` (`PRESET_FIGURES`), ``driver`` (`draw_figures` and the command
line).
"""

from trustregion_lab.plots.analysis import (
    analysis_suite_figures,
    estimator_figures,
    mask_figures,
    plot_estimator_bias,
    plot_estimators,
    plot_masks,
    plot_vocab_scaling,
    vocab_scaling_figures,
)
from trustregion_lab.plots.calibration import calibration_figures, plot_calibration
from trustregion_lab.plots.common import DPI, MIN_TOKENS, Outputs
from trustregion_lab.plots.driver import ResultsError, draw_figures, draw_table_figures, main
from trustregion_lab.plots.regime_map import (
    plot_regime_calibration,
    plot_regime_map,
    regime_calibration_figures,
    regime_map_figures,
)
from trustregion_lab.plots.registry import PRESET_FIGURES, figures_for
from trustregion_lab.plots.stability import (
    plot_stability,
    stability_calibration_figures,
    stability_figures,
    stability_search_figures,
)
from trustregion_lab.plots.training import plot_training, training_figures, training_summary

__all__ = [
    "DPI",
    "MIN_TOKENS",
    "PRESET_FIGURES",
    "Outputs",
    "ResultsError",
    "analysis_suite_figures",
    "calibration_figures",
    "draw_figures",
    "draw_table_figures",
    "estimator_figures",
    "figures_for",
    "main",
    "mask_figures",
    "plot_calibration",
    "plot_estimator_bias",
    "plot_estimators",
    "plot_masks",
    "plot_regime_calibration",
    "plot_regime_map",
    "plot_stability",
    "plot_training",
    "plot_vocab_scaling",
    "regime_calibration_figures",
    "regime_map_figures",
    "stability_calibration_figures",
    "stability_figures",
    "stability_search_figures",
    "training_figures",
    "training_summary",
    "vocab_scaling_figures",
]
