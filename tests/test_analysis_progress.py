"""The analysis presets report progress from inside a run, so the sweep's bar moves during a long analysis."""

from __future__ import annotations

import pandas as pd
import pytest

from trustregion_lab import progress
from trustregion_lab.analysis.presets import ANALYSIS_DEFAULTS, PRESETS, run_analysis

TINY = dict(
    ANALYSIS_DEFAULTS,
    num_states=8,
    vocab_size=96,
    samples_per_state=4,
    topk_sizes="3",
    scaling_vocab_sizes="64+96",
)
STAGES = {
    "estimators": "estimators",
    "masks": "masks",
    "calibration": "calibration",
    "vocab-scaling": "vocab scaling",
}


@pytest.mark.parametrize("analysis", sorted(STAGES))
def test_each_run_of_the_default_preset_reports_progress(analysis):
    default = next(p for p in PRESETS if p.name == "default")
    assert analysis in default.grid["analysis"] and default.run is run_analysis
    heard: list[progress.Progress] = []
    config = dict(TINY, analysis=analysis)
    with progress.listening(heard.append):
        table = default.run(config, 0)
    stages = [p.stage for p in heard]
    assert stages[0] == ("batch V=64" if analysis == "vocab-scaling" else "batch V=96"), stages
    assert STAGES[analysis] in stages, stages
    for report in heard:  # every report is a fraction of a known total
        assert 0 <= report.done <= report.total and report.total > 0, report
    last: dict[str, int] = {}
    for report in heard:  # within one batch's analysis, done never goes back
        if report.stage.startswith("batch") and report.done == 0:
            last = {key: value for key, value in last.items() if key == "vocab scaling"}
        assert report.done >= last.get(report.stage, 0), (report, last)
        last[report.stage] = report.done
    finished = [p for p in heard if p.stage == STAGES[analysis] and p.done == p.total]
    assert finished, f"{STAGES[analysis]} never reported done == total: {heard}"
    assert len(heard) <= 300  # cheap: a few reports per part, not one per token
    # listening changes nothing in the results
    pd.testing.assert_frame_equal(table, run_analysis(config, 0))
