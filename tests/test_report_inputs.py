"""The report card's input handling: every file read or the run refused, no row counted twice, out-of-range
values rejected with their file and line or row, prime-rl's current export schema, and the output folder
replaced whole (docs/design.md §8)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trustregion_lab.report import (
    ReportInputError,
    analyse,
    main,
    open_source,
    run_report,
    token_table_path,
    write_prime_rl_export,
    write_token_table,
)
from trustregion_lab.report.table import check_export_folder

SEED = int(np.random.SeedSequence().entropy % 2**31)


def _table(seed: int = 0, steps: int = 2, sequences: int = 3, length: int = 6) -> pd.DataFrame:
    """A small valid token table (float64 log-probs from a random softmax)."""
    rng = np.random.default_rng(seed)
    n = steps * sequences * length
    lmu = -rng.exponential(1.0, n)
    return pd.DataFrame(
        {
            "step": np.repeat(np.arange(steps), sequences * length),
            "sequence": np.repeat(np.arange(steps * sequences), length),
            "position": np.tile(np.arange(length), steps * sequences),
            "token_id": rng.integers(0, 100, n),
            "rollout_logprob": lmu,
            "logprob": np.minimum(lmu + rng.normal(0, 0.3, n), 0.0),
            "advantage": np.repeat(rng.choice([-1.0, 1.0], steps * sequences), length),
            "response_mask": np.ones(n, bool),
        }
    )


def _cli_error(capsys, *args) -> str:
    assert main([*map(str, args), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------ every file accounted for


def test_unreadable_subfolder_is_named_not_skipped(tmp_path, capsys, monkeypatch):
    write_token_table(_table(), tmp_path / "run" / "step_000000.parquet")
    (tmp_path / "run" / "more").mkdir()
    real_walk = os.walk

    def walk(top, onerror=None, **kw):  # as os.walk reports a folder it may not list (root reads everything)
        for folder, subs, names in real_walk(top, **kw):
            if folder.endswith("more"):
                onerror(PermissionError(13, "Permission denied", folder))
                continue
            yield folder, subs, names

    monkeypatch.setattr("trustregion_lab.report.sources.os.walk", walk)
    err = _cli_error(capsys, tmp_path / "run", "--out", tmp_path / "out")
    assert "more" in err and "cannot read this folder" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders of any mode")
def test_unreadable_subfolder_by_mode(tmp_path, capsys):
    write_token_table(_table(), tmp_path / "run" / "step_000000.parquet")
    (tmp_path / "run" / "more").mkdir(mode=0)
    try:
        assert "more" in _cli_error(capsys, tmp_path / "run", "--out", tmp_path / "out")
    finally:
        (tmp_path / "run" / "more").chmod(0o755)


def test_broken_link_and_mixed_formats_are_refused(tmp_path, capsys):
    frame = _table()
    write_token_table(frame, tmp_path / "run" / "step_000000.parquet")
    (tmp_path / "run" / "step_000001.parquet").symlink_to(tmp_path / "gone.parquet")
    assert "step_000001.parquet" in _cli_error(capsys, tmp_path / "run", "--out", tmp_path / "out")
    (tmp_path / "run" / "step_000001.parquet").unlink()
    frame.assign(step=5).to_csv(tmp_path / "run" / "late.csv", index=False)
    err = _cli_error(capsys, tmp_path / "run", "--out", tmp_path / "out")
    assert "several formats" in err and "1 *.csv" in err and "1 *.parquet" in err
    source = open_source(tmp_path / "run", "parquet")  # an explicit format reads it and notes the rest
    assert source.files == (tmp_path / "run" / "step_000000.parquet",) and "late.csv" in source.notes[0]
    tables = analyse(source, progress=False)
    assert "late.csv" in tables.inputs["notes"]


# ------------------------------------------------------------------------------------ duplicates and ranges


def test_duplicate_rows_are_refused_within_and_across_files(tmp_path, capsys):
    frame = _table(SEED)
    twice = pd.concat([frame, frame.iloc[[7]]], ignore_index=True)
    pq.write_table(pa.Table.from_pandas(twice, preserve_index=False), tmp_path / "a.parquet")
    err = _cli_error(capsys, tmp_path / "a.parquet", "--out", tmp_path / "out")
    row = len(frame)
    assert f"a.parquet row {row}" in err and "occurs twice" in err and "a.parquet row 7" in err
    write_token_table(frame, tmp_path / "two" / "step_000000.parquet")
    write_token_table(frame.iloc[[3]], tmp_path / "two" / "step_000001.parquet")
    err = _cli_error(capsys, tmp_path / "two", "--out", tmp_path / "out")
    assert "step_000001.parquet row 0" in err and "occurs twice" in err
    # streaming in small batches finds a repeat across chunks of one file
    pq.write_table(pa.Table.from_pandas(twice, preserve_index=False), tmp_path / "b.parquet")
    with pytest.raises(ReportInputError, match=rf"b\.parquet row {row}: .*occurs twice"):
        analyse(open_source(tmp_path / "b.parquet"), progress=False, batch_tokens=5)
    # prompt rows (response_mask false) may repeat: they are not tokens of the report
    prompt = frame.iloc[[0, 0]].assign(response_mask=False, position=-1)
    pq.write_table(
        pa.Table.from_pandas(pd.concat([frame, prompt]), preserve_index=False), tmp_path / "c.parquet"
    )
    assert analyse(open_source(tmp_path / "c.parquet"), progress=False).inputs["response_tokens"] == len(
        frame
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("step", 1e20, "must hold integers"),
        ("step", 1.7, "must hold integers"),
        ("step", -1, "must be >= 0"),
        ("position", -2, "must be >= 0"),
        ("response_mask", 0.5, "response_mask"),
        ("response_mask", 2, "response_mask"),
    ],
)
def test_out_of_range_values_name_their_row(tmp_path, capsys, fmt, column, value, words):
    frame = _table(1).astype({column: object})
    frame.at[4, column] = value
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
        where = "t.csv row 4"
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
        where = "t.jsonl:5"
    else:
        frame[column] = frame[column].astype(float)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        where = "t.parquet row 4"
    err = _cli_error(capsys, path, "--out", tmp_path / "out")
    assert where in err and column in err and words in err


def test_text_in_numeric_columns_is_an_error_not_a_null(tmp_path, capsys):
    frame = _table(2).astype({"logprob": object})
    frame.at[5, "logprob"] = "-0.3x"
    frame.to_csv(tmp_path / "t.csv", index=False)
    err = _cli_error(capsys, tmp_path / "t.csv", "--out", tmp_path / "out")
    assert "t.csv row 5" in err and "'logprob'" in err and "-0.3x" in err
    frame.at[5, "logprob"] = "-0.3"  # a number written as a JSON string is text too
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    assert "t.jsonl:6" in _cli_error(capsys, tmp_path / "t.jsonl", "--out", tmp_path / "out")
    strings = _table(2).astype({"logprob": str})
    pq.write_table(pa.Table.from_pandas(strings, preserve_index=False), tmp_path / "s.parquet")
    err = _cli_error(capsys, tmp_path / "s.parquet", "--out", tmp_path / "out")
    assert "s.parquet" in err and "'logprob'" in err and "numbers" in err


def test_csv_mask_words_empty_and_damaged_files(tmp_path, capsys):
    frame = _table(3)
    words = frame.assign(response_mask=np.where(frame["response_mask"], "True", "false"))
    words.loc[2, "response_mask"] = "false"
    words.to_csv(tmp_path / "w.csv", index=False)
    tables = analyse(open_source(tmp_path / "w.csv"), progress=False)
    assert tables.inputs["response_tokens"] == len(frame) - 1
    words.loc[3, "response_mask"] = "maybe"
    words.to_csv(tmp_path / "w.csv", index=False)
    err = _cli_error(capsys, tmp_path / "w.csv", "--out", tmp_path / "out")
    assert "w.csv row 3" in err and "maybe" in err
    (tmp_path / "e.csv").write_text("")
    assert "e.csv" in _cli_error(capsys, tmp_path / "e.csv", "--out", tmp_path / "out")
    (tmp_path / "e.parquet").write_bytes(b"")
    assert "e.parquet" in _cli_error(capsys, tmp_path / "e.parquet", "--out", tmp_path / "out")
    write_token_table(frame, tmp_path / "d.parquet")
    data = (tmp_path / "d.parquet").read_bytes()
    (tmp_path / "d.parquet").write_bytes(data[:8] + bytes(len(data) // 2) + data[8 + len(data) // 2 :])
    assert "d.parquet" in _cli_error(capsys, tmp_path / "d.parquet", "--out", tmp_path / "out")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.parquet").write_bytes(b"PAR1")  # damaged, found in a folder
    assert "x.parquet" in _cli_error(capsys, tmp_path / "dir", "--out", tmp_path / "out")


def test_no_response_rows_is_a_one_line_error(tmp_path, capsys):
    frame = _table(4).assign(response_mask=False)
    write_token_table(frame, tmp_path / "none.parquet")
    err = _cli_error(capsys, tmp_path / "none.parquet", "--out", tmp_path / "out")
    assert "none.parquet" in err and "no response tokens" in err


# ------------------------------------------------------------------------------------ the output folder


def _prime(tmp_path: Path, name: str = "run", steps: int = 2, **kw) -> Path:
    return write_prime_rl_export(
        tmp_path / name, steps=steps, ranks=1, sequences_per_rank=3, min_length=8, max_length=12, **kw
    )


def test_a_failed_report_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    export = _prime(tmp_path)
    out = tmp_path / "report"
    run_report(export, out=out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr("trustregion_lab.report.card.render_card", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        run_report(_prime(tmp_path, "other", steps=3, seed=9), out=out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "report", "run"]  # no stray temporary


def test_a_report_killed_mid_swap_or_mid_write_is_recovered(tmp_path):
    export = _prime(tmp_path)
    out = tmp_path / "report"
    run_report(export, out=out, progress=False)
    before = sorted(p.name for p in out.iterdir())
    out.rename(tmp_path / ".report.old.tmp")  # killed between moving the old report away and the new in
    (tmp_path / ".report.k2x9.tmp").mkdir()  # and a killed writer's temporary folder
    (tmp_path / ".report.k2x9.tmp" / "summary.csv").write_text("half")
    assert main([str(export), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "run"]


def test_out_folder_checked_before_the_analysis(tmp_path, capsys, monkeypatch):
    export = _prime(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the analysis ran before the output folder was checked")

    monkeypatch.setattr("trustregion_lab.report.cli.analyse", never)
    err = _cli_error(capsys, export, "--out", export / "report")
    assert "inside the export" in err
    err = _cli_error(capsys, export, "--out", tmp_path)
    assert "holds the export" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    err = _cli_error(capsys, export, "--out", tmp_path / "mine")
    assert "notes.txt" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    assert "is a file" in _cli_error(capsys, export, "--out", tmp_path / "file")


def test_export_tokens_folder_of_another_run_is_refused(tmp_path):
    folder = tmp_path / "tokens"
    assert check_export_folder(folder) == folder  # new
    write_token_table(_table(), token_table_path(folder, 1))
    with pytest.raises(ValueError, match=r"step_000001\.parquet.*mix two runs"):
        check_export_folder(folder)
    check_export_folder(folder, first_step=2)  # a run resumed after step 1 continues its own export
    (folder / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        check_export_folder(folder, first_step=2)


def test_train_cli_refuses_an_export_folder_of_another_run(tmp_path, capsys):
    from trustregion_lab.train.cli import main as train_main

    write_token_table(_table(), token_table_path(tmp_path / "tokens", 1))
    with pytest.raises(SystemExit) as info:
        train_main(["bandit", "--steps", "1", "--export-tokens", str(tmp_path / "tokens")])
    assert info.value.code == 2 and "mix two runs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ prime-rl schema


def _edit_records(export: Path, edit) -> None:
    for path in sorted(export.glob("**/rank_*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        records = [r for r in (edit(r, i) for i, r in enumerate(records)) if r is not None]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_prime_rl_sft_records_and_loss_channels_are_left_out_and_counted(tmp_path):
    export = _prime(tmp_path)
    base = analyse(open_source(export), progress=False)
    sft_tokens = []

    def edit(record, index):
        record["env"] = record.pop("env_name")  # today's name
        record.pop("rewards", None)
        if index == 0:
            record["training_mode"] = "sft"
            sft_tokens.append(sum(record["loss_mask"]))
        elif index == 1:  # per-token loss channels: the last response token belongs to another loss only
            mask = record["loss_mask"]
            record["losses"] = [
                {"rl": {"advantage": a, "mask": m}} for a, m in zip(record["advantages"], mask)
            ]
            record["losses"][-1] = {"sft": {"advantage": None, "mask": True}}
        return record

    _edit_records(export, edit)
    tables = analyse(open_source(export), progress=False)
    assert tables.inputs["sft_records"] == 2 and tables.inputs["sft_tokens"] == sum(sft_tokens)
    assert tables.inputs["non_rl_tokens"] == 2
    assert tables.inputs["response_tokens"] == base.inputs["response_tokens"] - sum(sft_tokens) - 2


def test_prime_rl_multi_run_folder_is_refused(tmp_path, capsys):
    _prime(tmp_path / "out" / "run_a", name="x")
    _prime(tmp_path / "out" / "run_b", name="x")
    err = _cli_error(capsys, tmp_path / "out", "--out", tmp_path / "report")
    assert "2 runs" in err and "run_a" in err and "run_b" in err


def test_prime_rl_in_progress_step_without_any_stable_marker_is_skipped(tmp_path):
    export = _prime(tmp_path, steps=3)
    for marker in export.glob("*/STABLE"):
        marker.unlink()
    partial = export / "step_3" / "rank_0.jsonl"
    partial.write_text(partial.read_text()[:-40])  # the writer is in the middle of a line
    source = open_source(export)
    assert "step_3" in source.notes[0] and "half-written" in source.notes[0]
    assert analyse(source, progress=False).inputs["steps"] == 2
    earlier = export / "step_1" / "rank_0.jsonl"  # a half line in an earlier step is damage, not progress
    earlier.write_text(earlier.read_text()[:-40])
    with pytest.raises(ReportInputError, match=r"step_1/rank_0\.jsonl:3"):
        analyse(open_source(export), progress=False)


def test_prime_rl_record_written_twice_is_refused(tmp_path):
    export = _prime(tmp_path, steps=1)
    path = export / "step_1" / "rank_0.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(ReportInputError, match=r"rank_0\.jsonl:4: .*repeats line 2"):
        analyse(open_source(export), progress=False)


# ------------------------------------------------------------------------------------ the mask registry


def test_report_masks_come_from_the_registry_with_min_anchor_prob(monkeypatch, tmp_path):
    """ppo_relaxed (min_anchor_prob 0.1) and a method registered at run time, against numpy float64."""
    from trustregion_lab import masks
    from trustregion_lab.report.pipeline import ReportMask
    from trustregion_lab.report.table import build_chunk
    from trustregion_lab.report.view import TokenView

    print("seed", SEED)
    frame = _table(SEED, steps=1, sequences=40, length=25)
    frame.loc[::7, "advantage"] = 0.0
    chunk = build_chunk({c: frame[c].to_numpy() for c in frame.columns}, "t")
    lp, lmu, adv = (
        frame["logprob"].to_numpy(),
        frame["rollout_logprob"].to_numpy(),
        frame["advantage"].to_numpy(),
    )
    r = np.exp(lp - lmu)
    graded = adv != 0
    relaxed = np.exp(lmu) >= 0.1
    want_c = np.where(graded & relaxed, np.where(adv > 0, r - 1.0, 1.0 - r), -np.inf)
    members, c = TokenView(chunk).critical("ppo_relaxed")
    np.testing.assert_array_equal(members, graded)
    np.testing.assert_allclose(c, want_c, rtol=1e-12)
    _, drop = TokenView(chunk).drop(ReportMask("ppo_relaxed", 0.2, 0.2))
    np.testing.assert_array_equal(
        drop, graded & relaxed & (((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8)))
    )

    def squared(x):  # D = (π(a) − μ(a))², a method that exists only in this test
        return (x.logprob.double().exp() - x.anchor_logprob.double().exp()) ** 2

    monkeypatch.setitem(masks.METHODS, "dummy_sq", masks.MaskMethod("divergence", squared, "tv"))
    d = (np.exp(lp) - np.exp(lmu)) ** 2
    outward = ((adv > 0) & (lp > lmu)) | ((adv < 0) & (lp < lmu))
    members, c = TokenView(chunk).critical("dummy_sq")
    np.testing.assert_allclose(c, np.where(graded & outward, d, -np.inf), rtol=1e-12)
    write_token_table(frame, tmp_path / "t.parquet")
    tables = analyse(
        open_source(tmp_path / "t.parquet"), progress=False, specs=[ReportMask("dummy_sq", 0.01, 0.01)]
    )
    row = tables.summary.iloc[0]
    assert row["method"] == "dummy_sq" and row["dropped"] == int((graded & outward & (d > 0.01)).sum())


# ------------------------------------------------------------------------------------ what the card says


def _card(tmp_path: Path, frame: pd.DataFrame, name: str, source: str | None = None) -> str:
    write_token_table(frame, tmp_path / name / "step_000000.parquet", source=source)
    run_report(tmp_path / name, out=tmp_path / f"{name}_report", progress=False)
    return (tmp_path / f"{name}_report" / "report.md").read_text()


def test_null_count_counts_tokens_once(tmp_path):
    frame = _table(5, steps=1, sequences=4, length=10)
    frame.loc[[1, 2, 3], ["rollout_logprob", "logprob"]] = np.nan  # three tokens, two null fields each
    frame.loc[[7, 8], "advantage"] = np.nan
    tables = analyse(open_source(_write(tmp_path, frame)), progress=False)
    assert tables.inputs["null_any"] == 5 and tables.inputs["null_rollout_logprob"] == 3
    card = _card(tmp_path, frame, "nulls")
    assert f"5 of {len(frame)} response tokens" in card and "What to do" in card


def _write(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "t.parquet"
    write_token_table(frame, path)
    return path


def test_identical_logprobs_are_said_not_reported_as_zero_mismatch(tmp_path):
    from trustregion_lab.report import from_verl

    frame = _table(6)
    card = _card(tmp_path, frame.assign(logprob=frame["rollout_logprob"]), "bypass", source="verl")
    assert "π(a) = μ(a) exactly on all" in card and "bypass" in card
    assert "π(a) = μ(a) exactly" not in _card(tmp_path, frame, "normal", source="verl")
    rng = np.random.default_rng(SEED)
    lmu = -rng.exponential(1.0, (3, 5))
    batch = {
        "responses": rng.integers(0, 9, (3, 5)),
        "response_mask": np.ones((3, 5), bool),
        "rollout_log_probs": lmu,
        "old_log_probs": lmu.copy(),
        "advantages": rng.normal(size=(3, 5)),
    }
    with pytest.warns(UserWarning, match="bypass"):
        from_verl(batch, step=0)


def test_low_precision_grid_is_noted(tmp_path):
    import torch

    from trustregion_lab.report.pipeline import on_low_precision_grid

    frame = _table(7, steps=1, sequences=20, length=10)
    frame["rollout_logprob"] = -np.random.default_rng(SEED).uniform(0.01, 14.0, len(frame))
    rounded = torch.tensor(frame["rollout_logprob"].to_numpy()).to(torch.bfloat16).double().numpy()
    # the bfloat16 grid spacing at |x| in [8, 16) is 0.0625 (8 significant bits)
    big = np.abs(rounded) >= 8
    np.testing.assert_array_equal(np.round(rounded[big] / 0.0625), rounded[big] / 0.0625)
    checked, bf16, fp16 = on_low_precision_grid(rounded)
    assert checked == bf16 == len(frame) and fp16 >= bf16 - 5
    card = _card(tmp_path, frame.assign(rollout_logprob=rounded), "bf16")
    assert "bfloat16 grid" in card and "0.0625" in card
    assert "low-precision grid" not in _card(tmp_path, frame, "f64")


def test_trl_importance_weights_and_one_sided_cap(tmp_path):
    """TRL's sequence weight and action_mask are read; the card leads with the share above the cap."""
    from trustregion_lab.report import from_trl

    rng = np.random.default_rng(SEED)
    b, t = 8, 12
    sampling = -rng.exponential(0.5, (b, t))
    old = sampling - 0.2  # every sequence's weight exp(Σ −0.2) is far below 1/3, none above 3
    mask = np.ones((b, t), int)
    mask[:, -2:] = 0
    action = np.ones((b, t), int)
    action[0, 3] = 0
    ratio = np.exp(((old - sampling) * mask * action).sum(-1, keepdims=True))
    ratio[[1, 2]] = 0.0  # as TRL's sequence_mask mode writes dropped sequences
    inputs = {
        "completion_ids": rng.integers(0, 50, (b, t)),
        "completion_mask": mask,
        "action_mask": action,
        "sampling_per_token_logps": sampling,
        "old_per_token_logps": old,
        "advantages": rng.choice([-1.0, 1.0], b),
        "importance_sampling_ratio": ratio,
    }
    frame = from_trl(inputs, step=0)
    assert len(frame) == int((mask * action).sum()) and "is_weight" in frame
    np.testing.assert_allclose(frame.groupby("sequence")["is_weight"].first().to_numpy(), ratio[:, 0])
    card = _card(tmp_path, frame, "trl", source="trl")
    zero = 2 * (t - 2) - 0  # sequences 1 and 2, every response token
    assert f"are 0 on {100 * zero / len(frame):.1f} %" in card
    assert "touches 0.0 % of sequences (product weight above 3; TRL's cap" in card
    assert "two-sided sequence mask at [1/3, 3] would drop 100.0 %" in card
    assert "before this step's updates" in card and "per_token_logps=" in card


def test_card_says_which_pi_the_table_holds(tmp_path):
    export = _prime(tmp_path)
    run_report(export, out=tmp_path / "p", progress=False)
    assert "inside the loss (prime-rl's trainer_logprobs)" in (tmp_path / "p" / "report.md").read_text()
    frame = _table(8)
    card = _card(tmp_path, frame.assign(old_logprob=np.minimum(frame["logprob"] - 0.01, 0.0)), "rec")
    assert "`old_logprob` the recomputed π_old" in card


def test_a_source_analysed_twice_counts_its_skipped_records_once(tmp_path):
    export = _prime(tmp_path, steps=1)

    def sft(record, index):
        if index == 0:
            record["training_mode"] = "sft"
        return record

    _edit_records(export, sft)
    source = open_source(export)
    first = analyse(source, progress=False).inputs["sft_records"]
    assert first == 1 and analyse(source, progress=False).inputs["sft_records"] == first


def test_prime_rl_is_masked_flag_is_read_and_compared_with_the_default_mask(tmp_path):
    export = _prime(tmp_path, steps=2, outlier_share=0.3, seed=SEED)
    flipped = []

    def flip(record, index):
        if index == 1:
            first = record["loss_mask"].index(True)
            record["is_masked"][first] = not record["is_masked"][first]
            flipped.append(record["advantages"][first] != 0)
        return record

    _edit_records(export, flip)
    tables = analyse(open_source(export), progress=False)
    flags, zero = [], 0
    for path in sorted(export.glob("**/rank_*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            for m, f, a in zip(r["loss_mask"], r["is_masked"], r["advantages"]):
                if m:
                    flags.append(f)
                    zero += int(f and a == 0)
    assert (
        tables.inputs["framework_flagged"] == sum(flags)
        and tables.inputs["framework_flagged_zero_adv"] == zero
    )
    assert tables.inputs["framework_disagree"] == sum(flipped)  # 1 per edited record with Â ≠ 0, else 0
    rows = tables.by_step[tables.by_step["metric"] == "framework_mask_frac"]
    assert set(rows["source_metric"]) == {"is_masked/mean"}
    np.testing.assert_allclose((rows["value"] * rows["tokens"]).sum(), sum(flags), rtol=1e-12)
