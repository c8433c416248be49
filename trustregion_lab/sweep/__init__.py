"""``python -m trustregion_lab.sweep``: run a named preset over a grid of parameters and seeds, write tidy tables.

A sweep expands a preset's grid (its default grid, with ``--grid`` overrides) into runs, one per
(configuration, seed), and checks every configuration before the first run starts. Each run calls the preset's
``run(config, seed)`` and stores its tidy table as ``OUT/runs/<run id>.csv``; the run id is a hash of the
configuration plus the seed, so a run that finished is never recomputed (resume is the default). At the end the
runs are merged into ``OUT/table.csv`` and the preset's figures are drawn into ``--figures-dir``.

Every row carries the run's configuration (one column per parameter), the seed, the preset name, the run id
and the package version; the git commit of the code that computed a run is in its record ``OUT/runs/<run id>.json``
(and the last one in ``OUT/sweep.json``), so tables and figure tables change only when their numbers do.

Modules, one job each:
    plan       the preset registry, ``--grid`` parsing, grid expansion, run ids, the validated `SweepPlan`
    store      the results folder: manifest, verified run files, merge, writability and space errors
    backends   computing the pending runs serially, in worker processes or as Ray tasks; `run_sweep`
    cli        the command line (``main``)
"""

from trustregion_lab.sweep.backends import RunError, SweepInterrupted, run_sweep
from trustregion_lab.sweep.cli import main
from trustregion_lab.sweep.plan import (
    RunSpec,
    SweepConfigError,
    SweepPlan,
    available_presets,
    expand_grid,
    parse_grid_args,
    parse_value,
    plan_sweep,
    run_id,
)
from trustregion_lab.sweep.store import StorageError, git_commit

__all__ = [
    "RunError",
    "RunSpec",
    "StorageError",
    "SweepConfigError",
    "SweepInterrupted",
    "SweepPlan",
    "available_presets",
    "expand_grid",
    "git_commit",
    "main",
    "parse_grid_args",
    "parse_value",
    "plan_sweep",
    "run_id",
    "run_sweep",
]
