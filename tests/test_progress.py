"""The progress channel: reports reach the innermost sink, and nothing without one."""

from trustregion_lab import progress


def test_report_reaches_innermost_sink_only():
    outer, inner = [], []
    progress.report("train", 1, 10)  # no sink: nothing happens, nothing raised
    with progress.listening(outer.append):
        progress.report("warm start", 2, 5, {"reward": 0.5})
        with progress.listening(inner.append):
            progress.report("train", 3, 10)
        progress.report("train", 4, 10)
    progress.report("train", 5, 10)
    assert [(p.stage, p.done, p.total) for p in outer] == [("warm start", 2, 5), ("train", 4, 10)]
    assert outer[0].metrics == {"reward": 0.5}
    assert [(p.stage, p.done) for p in inner] == [("train", 3)]


def test_sink_removed_after_exception():
    seen = []
    try:
        with progress.listening(seen.append):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    progress.report("train", 1, 2)
    assert seen == []
