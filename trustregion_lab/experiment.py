"""The preset interface shared by the sweep runner and the modules that define experiments.

A *preset* is a named experiment that owns its computation, its checks and its figures:

- ``run(config, seed) -> pandas.DataFrame``: a module-level function returning tidy rows;
- ``defaults``: every parameter it takes with its default (the default's type is how the sweep command line
  parses ``--grid key=v1,v2``), a default ``grid`` over some of them and a default number of ``seeds``;
- ``validate(config)``: raises ``ValueError``/``TypeError`` for a configuration ``run`` would reject, so a sweep
  checks every configuration of its grid before the first run starts;
- ``figures(table, config_columns) -> {file name: Figure or DataFrame}``: what ``trustregion_lab.plots`` draws
  from the preset's stored table (PNG for a figure, CSV for a table). The modules that define presets leave it
  None; the sweep attaches ``trustregion_lab.plots.PRESET_FIGURES[name]`` (so they never import ``plots``).

This module is deliberately dependency-free (dataclasses and typing only) so that analysis and training modules
can define presets without importing the sweep machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["FigureFunction", "Preset"]

FigureFunction = Callable[["pd.DataFrame", list[str]], dict[str, "Figure | pd.DataFrame"]]


@dataclass(frozen=True)
class Preset:
    """A named experiment the sweep can run.

    Attributes:
        name: the name given to ``--preset`` (e.g. ``"default"``, ``"bandit-train"``).
        help: one or two sentences shown by ``--list-presets``.
        run: a module-level (picklable) function ``run(config: dict, seed: int) -> pandas.DataFrame`` returning
            tidy rows. ``config`` holds every key of ``defaults`` (grid values substituted).
        defaults: every parameter ``run`` takes, with its default value. The default's type (bool, int, float,
            str) is the type a ``--grid`` value is parsed to.
        grid: the preset's default grid, ``{parameter: [values, ...]}``, over keys of ``defaults``.
        seeds: the default number of seeds (seeds are ``0 .. seeds - 1``).
        validate: ``validate(config: dict) -> None`` raising ``ValueError``/``TypeError`` (naming the parameter)
            for a configuration ``run`` cannot compute; called for every configuration when a sweep is planned.
            None: every configuration is accepted.
        include: ``include(config: dict) -> bool``, which combinations of the grid the design holds (a study
            that is not a full Cartesian product, e.g. some arms with one engine only); a combination it
            rejects is not run. None: every combination.
        seeds_for: ``seeds_for(config: dict) -> int``, the number of seeds of one configuration where a study
            runs more seeds in some cells than in others (e.g. a third seed where arms separate); ``--seeds``
            overrides it. None: ``seeds`` for every configuration.
        figures: ``figures(table, config_columns) -> {file name: Figure | DataFrame}``, drawing the preset's
            figures (and the tables behind them) from its merged table alone; ``config_columns`` names the
            preset's parameters present in the table. The names end in ``.png`` (a Figure) or ``.csv``
            (a DataFrame). None: the preset has no figures.
    """

    name: str
    help: str
    run: Callable[[dict, int], pd.DataFrame]
    defaults: Mapping[str, Any]
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: int = 1
    validate: Callable[[dict], None] | None = None
    figures: FigureFunction | None = None
    include: Callable[[dict], bool] | None = None
    seeds_for: Callable[[dict], int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Preset name must be a non-empty string, got {self.name!r}")
        if not callable(self.run):
            raise TypeError(f"Preset {self.name!r}: run must be callable run(config, seed), got {self.run!r}")
        for attribute in ("validate", "figures", "include", "seeds_for"):
            value = getattr(self, attribute)
            if value is not None and not callable(value):
                raise TypeError(f"Preset {self.name!r}: {attribute} must be callable or None, got {value!r}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"Preset {self.name!r}: seeds must be a positive int, got {self.seeds!r}")
        unknown = sorted(set(self.grid) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"Preset {self.name!r}: grid keys {unknown} are not parameters; expected keys of defaults "
                f"{sorted(self.defaults)}"
            )
        for key, values in self.grid.items():
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
                raise ValueError(
                    f"Preset {self.name!r}: grid[{key!r}] must be a non-empty list of values, got {values!r}"
                )
        # plain dict copies (picklable, so a Preset can travel to worker processes and Ray tasks)
        object.__setattr__(self, "defaults", dict(self.defaults))
        object.__setattr__(self, "grid", {k: tuple(v) for k, v in self.grid.items()})
