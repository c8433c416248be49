"""Progress from inside a long job, to whoever is listening.

Code that loops (a trainer's steps, a warm start) calls ``report(stage, done, total, metrics)``; it never knows
who listens. A front end (the train CLI's printer, the sweep's bar, a worker process forwarding to its parent)
installs a sink with ``listening(sink)``. With no sink installed ``report`` does nothing, so library code and tests
pay one attribute read per call. This module imports nothing from the package: every layer may call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Progress", "Sink", "listening", "report"]


@dataclass(frozen=True)
class Progress:
    """One report: ``done`` of ``total`` units of ``stage`` (e.g. "warm start", "train"), with optional metrics."""

    stage: str
    done: int
    total: int
    metrics: Mapping[str, float] = field(default_factory=dict)


Sink = Callable[[Progress], None]
_sinks: list[Sink] = []


def report(stage: str, done: int, total: int, metrics: Mapping[str, float] | None = None) -> None:
    """Tell the innermost installed sink that ``done`` of ``total`` units of ``stage`` are finished."""
    if _sinks:
        _sinks[-1](Progress(stage, int(done), int(total), dict(metrics or {})))


@contextmanager
def listening(sink: Sink) -> Iterator[None]:
    """Install ``sink`` for the body of the ``with`` block (sinks nest; the innermost one hears every report)."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)
