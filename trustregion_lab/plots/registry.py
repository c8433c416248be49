"""Which figure function draws each preset's figures: `PRESET_FIGURES`, read by the sweep.

The presets themselves (``trustregion_lab.analysis.presets``, ``trustregion_lab.train.presets``) name no figure
function, so that no layer below ``plots`` imports it; ``trustregion_lab.sweep.plan.available_presets`` attaches
``PRESET_FIGURES[name]`` to each preset, and `trustregion_lab.plots.draw_figures` looks up the preset named by a
results folder here. ``tests/test_sweep_presets.py`` checks that the names here and the sweep's presets agree.
"""

from __future__ import annotations

from trustregion_lab.experiment import FigureFunction
from trustregion_lab.plots.analysis import (
    analysis_suite_figures,
    estimator_figures,
    mask_figures,
    vocab_scaling_figures,
)
from trustregion_lab.plots.calibration import calibration_figures
from trustregion_lab.plots.regime_map import regime_calibration_figures, regime_map_figures
from trustregion_lab.plots.stability import (
    stability_calibration_figures,
    stability_figures,
    stability_search_figures,
)
from trustregion_lab.plots.training import training_figures

__all__ = ["PRESET_FIGURES", "figures_for"]

PRESET_FIGURES: dict[str, FigureFunction] = {
    "default": analysis_suite_figures,
    "estimators": estimator_figures,
    "masks": mask_figures,
    "calibration": calibration_figures,
    "vocab-scaling": vocab_scaling_figures,
    "bandit-train": training_figures,
    "sequence-train": training_figures,
    "stability": stability_figures,
    "stability-quick": stability_figures,
    "stability-long": stability_figures,
    "stability-calibration": stability_calibration_figures,
    "stability-search": stability_search_figures,
    "regime-calibration": regime_calibration_figures,
    "regime-map": regime_map_figures,
    "regime-map-quick": regime_map_figures,
}


def figures_for(preset: str) -> FigureFunction | None:
    """The figure function of the preset named ``preset`` (None for a preset without figures or unknown name)."""
    return PRESET_FIGURES.get(preset)
