"""What a sweep runs: the preset registry, ``--grid`` parsing, grid expansion, run ids and the checked plan.

`plan_sweep` merges the preset's default grid with the requested one, expands it into one `RunSpec` per
(configuration, seed) and validates every configuration with the preset's ``validate`` before anything is
written or computed, so a bad value anywhere in the grid is refused as a whole (`SweepConfigError`).
A run id is ``<12 hex digits of sha1(configuration as sorted JSON)>-s<seed>``: the same configuration and seed
always get the same id, which is what resume keys on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trustregion_lab.analysis.presets import PRESETS as ANALYSIS_PRESETS
from trustregion_lab.experiment import Preset
from trustregion_lab.plots.registry import PRESET_FIGURES
from trustregion_lab.train.presets import PRESETS as TRAINING_PRESETS

__all__ = [
    "RunSpec",
    "SweepConfigError",
    "SweepPlan",
    "available_presets",
    "canonical",
    "expand_grid",
    "parse_grid_args",
    "parse_value",
    "plan_sweep",
    "run_id",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SweepConfigError(ValueError):
    """A sweep request that cannot be honoured (unknown preset or parameter, bad grid, folder conflict)."""


def available_presets() -> dict[str, Preset]:
    """All presets by name: the analysis presets, then the training presets, each with its figure function from
    the figure registry (``trustregion_lab.plots.PRESET_FIGURES``; a preset absent from it draws none)."""
    by_name: dict[str, Preset] = {}
    for preset in [*ANALYSIS_PRESETS, *TRAINING_PRESETS]:
        if preset.name in by_name:
            raise RuntimeError(f"two presets are named {preset.name!r}")
        by_name[preset.name] = dataclasses.replace(preset, figures=PRESET_FIGURES.get(preset.name))
    return by_name


# ------------------------------------------------------------------------------------------ grid parsing
def parse_value(text: str, default: Any, key: str) -> Any:
    """Parse one command-line value to the type of the parameter's default (bool, int, float or str; a default of
    None takes a number or ``own``, meaning None).

    bool accepts 1/0, true/false, yes/no, on/off; int accepts integral floats such as ``1e4``.
    """
    text = text.strip()
    if text == "":
        raise SweepConfigError(f"--grid {key}: empty value; expected {type(default).__name__} values")
    if isinstance(default, bool):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SweepConfigError(f"--grid {key}={text}: expected a boolean (true/false, 1/0, yes/no)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            as_float = float(text)
        except ValueError:
            as_float = float("nan")
        if as_float.is_integer():
            return int(as_float)
        raise SweepConfigError(f"--grid {key}={text}: expected an integer")
    if isinstance(default, float):
        try:
            value = float(text)
        except ValueError:
            raise SweepConfigError(f"--grid {key}={text}: expected a number") from None
        if value != value:
            raise SweepConfigError(f"--grid {key}={text}: expected a number, got NaN")
        return value
    if isinstance(default, str):
        return text
    if default is None:  # an optional number (a trainer's low, high, ratio_cap): "own" = the variant's own
        if text.lower() == "own":
            return None
        try:
            return float(text)
        except ValueError:
            raise SweepConfigError(f"--grid {key}={text}: expected a number or 'own'") from None
    raise SweepConfigError(
        f"--grid {key}: parameter has a default of type {type(default).__name__}, which cannot be set from the "
        "command line (only bool, int, float and str parameters can)"
    )


def parse_grid_args(items: Sequence[str], defaults: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Parse ``["key=v1,v2", ...]`` into ``{key: [v1, v2]}``, each value cast to the type of ``defaults[key]``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise SweepConfigError(
                f"--grid {item!r}: expected KEY=V1,V2,... (for example vocab_size=1024,32768)"
            )
        key, _, values_text = item.partition("=")
        key = key.strip()
        if not key:
            raise SweepConfigError(f"--grid {item!r}: missing parameter name before '='")
        if key not in defaults:
            raise SweepConfigError(
                f"--grid {item!r}: unknown parameter {key!r}; this preset takes: {', '.join(sorted(defaults))}"
            )
        if key in grid:
            raise SweepConfigError(
                f"--grid: parameter {key!r} given twice; put all its values in one KEY=V1,V2"
            )
        values = [parse_value(piece, defaults[key], key) for piece in values_text.split(",")]
        if len(set(map(repr, values))) != len(values):
            raise SweepConfigError(f"--grid {item!r}: repeated value")
        grid[key] = values
    return grid


def expand_grid(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of ``grid`` over ``base``: one config dict per combination, first key varying slowest.

    Keys keep the order of ``base``; a key of ``grid`` absent from ``base`` is an error.
    """
    unknown = [key for key in grid if key not in base]
    if unknown:
        raise SweepConfigError(f"grid parameters {unknown} are not parameters of the preset ({sorted(base)})")
    keys = list(grid)
    configs = []
    for combination in itertools.product(*(list(grid[key]) for key in keys)):
        config = dict(base)
        config.update(zip(keys, combination))
        configs.append(config)
    return configs


def canonical(value: Any) -> Any:
    """A JSON round trip: tuples become lists, so stored and requested configurations compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def run_id(config: Mapping[str, Any], seed: int) -> str:
    """Stable id of one run: ``<12 hex digits of sha1(config as sorted JSON)>-s<seed>``."""
    digest = hashlib.sha1(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:12]
    return f"{digest}-s{seed}"


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a full configuration, a seed and its id."""

    config: dict[str, Any]
    seed: int
    run_id: str


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs: the preset, its fixed parameters, the grid, the seeds and the expanded runs."""

    preset: Preset
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: int
    runs: list[RunSpec]

    def describe(self, config: Mapping[str, Any]) -> str:
        """The grid values of one configuration, as ``key=value, ...`` ("" when the plan has no grid)."""
        return _describe(self.grid, config)


def _describe(grid: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={config[key]!r}" for key in grid)


def _describe_grid(grid: Mapping[str, Sequence[Any]]) -> str:
    return ", ".join(f"{key}={','.join(map(str, values))}" for key, values in grid.items()) or "no grid"


def _included(
    preset: Preset, configs: list[dict[str, Any]], grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The configurations ``preset.include`` holds; a requested value that appears in none of them is refused
    (it would be dropped without a word), and so is a request of which nothing is held."""
    kept = [config for config in configs if preset.include(dict(config))]
    requested = {**{k: list(v) for k, v in grid.items()}, **{k: [v] for k, v in fixed.items()}}
    if not kept:
        raise SweepConfigError(
            f"preset {preset.name!r} holds none of the requested combinations ({_describe_grid(requested)}); "
            "see --list-presets for its design; nothing was run or written"
        )
    for key, values in grid.items():
        dropped = [v for v in values if not any(canonical(c[key]) == canonical(v) for c in kept)]
        if dropped:
            raise SweepConfigError(
                f"preset {preset.name!r} never runs {key}={','.join(map(str, dropped))} with the other values "
                f"requested ({_describe_grid(requested)}); see --list-presets for its design; nothing was run "
                "or written"
            )
    return kept


def _validate_configs(preset: Preset, grid: Mapping[str, Sequence[Any]], configs: list[dict]) -> None:
    """Run ``preset.validate`` on every configuration; the first failure (and how many fail) is reported."""
    if preset.validate is None:
        return
    failures: list[tuple[dict, Exception]] = []
    for config in configs:
        try:
            preset.validate(dict(config))
        except (ValueError, TypeError) as exc:
            failures.append((config, exc))
    if failures:
        config, exc = failures[0]
        where = _describe(grid, config) or "its fixed parameters"
        more = (
            f" ({len(failures)} of the {len(configs)} configurations are rejected)"
            if len(configs) > 1
            else ""
        )
        raise SweepConfigError(
            f"preset {preset.name!r} rejects {where}: {exc}{more}; nothing was run or written"
        ) from exc


def plan_sweep(
    preset: Preset, grid: Mapping[str, Sequence[Any]] | None = None, seeds: int | None = None
) -> SweepPlan:
    """Expand ``preset`` into runs and validate every configuration (`SweepConfigError` on the first bad one).

    ``grid`` entries replace the preset's default grid for their key (a single value fixes the parameter);
    keys of the preset's grid not named keep their default values. ``seeds`` defaults to ``preset.seeds``
    (or, for a preset with ``seeds_for``, to its count per configuration); the seeds are ``0 .. seeds - 1``.
    A preset's ``include`` drops the combinations its design does not hold.
    """
    merged: dict[str, list[Any]] = {key: list(values) for key, values in preset.grid.items()}
    for key, values in (grid or {}).items():
        if key not in preset.defaults:
            raise SweepConfigError(
                f"unknown parameter {key!r} for preset {preset.name!r}; it takes: {', '.join(sorted(preset.defaults))}"
            )
        values = list(values)
        if not values:
            raise SweepConfigError(f"grid[{key!r}] is empty; give at least one value")
        merged[key] = values
    base = dict(preset.defaults)
    for key in list(merged):
        if len(merged[key]) == 1:  # a single value is a fixed parameter, not a grid axis
            base[key] = merged.pop(key)[0]
    n_seeds = preset.seeds if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise SweepConfigError(f"seeds must be a positive integer, got {n_seeds!r}")
    configs = expand_grid(base, merged)
    if preset.include is not None:
        configs = _included(preset, configs, merged, {k: base[k] for k in (grid or {}) if k not in merged})
    _validate_configs(preset, merged, configs)
    per_config = [
        _seeds_of(preset, config) if seeds is None and preset.seeds_for is not None else n_seeds
        for config in configs
    ]
    runs = [
        RunSpec(config=config, seed=seed, run_id=run_id(config, seed))
        for config, count in zip(configs, per_config)
        for seed in range(count)
    ]
    return SweepPlan(preset=preset, base=base, grid=merged, seeds=max(per_config), runs=runs)


def _seeds_of(preset: Preset, config: dict[str, Any]) -> int:
    count = preset.seeds_for(dict(config))
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SweepConfigError(
            f"preset {preset.name!r}: seeds_for must return a positive int, got {count!r} for {config!r}"
        )
    return count
