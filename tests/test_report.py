"""The report card: its tables against an independent float64 numpy computation of docs/design.md §2, the
readers (prime-rl export, Parquet / JSONL / CSV tables, verl / TRL converters), streaming, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.special import log_softmax, logsumexp

from trustregion_lab.report import (
    REQUIRED_COLUMNS,
    ReportInputError,
    analyse,
    from_trl,
    from_verl,
    main,
    open_source,
    run_report,
    token_table_path,
    write_prime_rl_export,
    write_token_table,
)

MU_EDGES = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.9, 0.99, 1.0)
FRESH = "fresh"  # a fixture parameter standing for the session's fresh seed (tests/conftest.py)


# ------------------------------------------------------------------------------------ independent reference


def _log1mexp(x):
    with np.errstate(divide="ignore"):
        return np.where(x > -np.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _binary_kl(lmu, lpi):
    mu = np.exp(lmu)
    rest_mu, rest_pi = _log1mexp(lmu), _log1mexp(lpi)
    with np.errstate(invalid="ignore"):
        return mu * (lmu - lpi) + np.where(rest_mu > -np.inf, np.exp(rest_mu) * (rest_mu - rest_pi), 0.0)


def _topk(lmu_set, lpi_set):
    """Top-K TV, KL from log-probs at the reported ids `[n, K]` (NaN = unused), rests = 1 − Σ."""
    used = ~np.isnan(lmu_set)
    mu_s, pi_s = np.where(used, np.exp(lmu_set), 0.0), np.where(used, np.exp(lpi_set), 0.0)
    lmu_rest = _log1mexp(np.minimum(logsumexp(np.where(used, lmu_set, -np.inf), axis=1), 0))
    lpi_rest = _log1mexp(np.minimum(logsumexp(np.where(used, lpi_set, -np.inf), axis=1), 0))
    tv = 0.5 * (np.abs(mu_s - pi_s).sum(1) + np.abs(np.exp(lmu_rest) - np.exp(lpi_rest)))
    terms = np.where(used, mu_s * (np.nan_to_num(lmu_set) - np.nan_to_num(lpi_set)), 0.0).sum(1)
    return tv, terms + np.exp(lmu_rest) * (lmu_rest - lpi_rest)


def _reference_drop(method, low, high, lp, anchor, adv, d=None):
    """docs/design.md §2 drop rules, float64 numpy."""
    if method == "ppo":
        r = np.exp(lp - anchor)
        return ((adv > 0) & (r > 1 + high)) | ((adv < 0) & (r < 1 - low))
    if method == "dppo_binary_tv":
        delta = np.exp(lp) - np.exp(anchor)
        return ((adv > 0) & (delta > high)) | ((adv < 0) & (delta < -low))
    d = _binary_kl(anchor, lp) if method == "dppo_binary_kl" else d
    return ((adv > 0) & (d > high) & (lp > anchor)) | ((adv < 0) & (d > low) & (lp < anchor))


def _reference_summary(t: pd.DataFrame) -> pd.DataFrame:
    """summary.csv recomputed from a flat token frame (response rows only), column by column."""
    adv, lp, lmu = t["advantage"].to_numpy(), t["logprob"].to_numpy(), t["rollout_logprob"].to_numpy()
    finite = np.isfinite(adv) & np.isfinite(lp) & np.isfinite(lmu)
    counted = ~(np.isfinite(adv) & (adv == 0))  # Â ≠ 0 or unknown
    rows = []
    specs = [
        ("ppo", 0.2, 0.2),
        ("ppo", 0.2, 0.28),
        ("dppo_binary_tv", 0.15, 0.15),
        ("dppo_binary_tv", 0.2, 0.2),
    ]
    specs += [("dppo_binary_kl", 0.05, 0.05)]
    extra = []
    if "topk_ids" in t:
        lmu_k, lpi_k = np.stack(t["rollout_topk_logprobs"]), np.stack(t["topk_logprobs"])
        topk_ok = np.isfinite(lmu_k).all(1) & np.isfinite(lpi_k).all(1)
        tv_k, kl_k = _topk(lmu_k, lpi_k)
        extra += [("dppo_topk_tv", 0.15, 0.15, tv_k, topk_ok), ("dppo_topk_tv", 0.2, 0.2, tv_k, topk_ok)]
        extra += [("dppo_topk_kl", 0.05, 0.05, kl_k, topk_ok)]
    if "tv_exact" in t:
        tv_x = t["tv_exact"].to_numpy()
        extra += [(m, lo, hi, tv_x, np.isfinite(tv_x)) for m, lo, hi in (("dppo_exact_tv", 0.15, 0.15),)]
        extra += [("dppo_exact_tv", 0.2, 0.2, tv_x, np.isfinite(tv_x))]
    if "kl_exact" in t:
        kl_x = t["kl_exact"].to_numpy()
        extra += [("dppo_exact_kl", 0.05, 0.05, kl_x, np.isfinite(kl_x))]
    entries = [(m, lo, hi, "rollout", lmu, None, np.ones(len(t), bool)) for m, lo, hi in specs]
    entries += [(m, lo, hi, "rollout", lmu, d, ok) for m, lo, hi, d, ok in extra]
    if "old_logprob" in t:
        old = t["old_logprob"].to_numpy()
        entries += [(m, lo, hi, "recompute", old, None, np.isfinite(old)) for m, lo, hi in specs]
    exact_tv = {}
    for method, low, high, anchor_name, anchor, d, ok in entries:
        available = finite & ok
        members = available & (adv != 0)
        with np.errstate(invalid="ignore"):
            drop = members & _reference_drop(method, low, high, lp, anchor, adv, None if d is None else d)
        if method == "dppo_exact_tv":
            exact_tv[(low, high)] = (members, drop)
        pos, neg = members & (adv > 0), members & (adv < 0)
        rows.append(
            {
                "method": method,
                "low": low,
                "high": high,
                "anchor": anchor_name,
                "mask_frac": drop.sum() / members.sum(),
                "mask_frac_pos": (drop & pos).sum() / pos.sum(),
                "mask_frac_neg": (drop & neg).sum() / neg.sum(),
                "tokens": members.sum(),
                "tokens_pos": pos.sum(),
                "tokens_neg": neg.sum(),
                "dropped": drop.sum(),
                "skipped_nonfinite": (counted & ~available).sum(),
                "_members": members,
                "_drop": drop,
            }
        )
    for row in rows:
        row["agree_exact_tv"] = np.nan
        if row["anchor"] == "rollout" and row["method"] in ("dppo_binary_tv", "dppo_topk_tv") and exact_tv:
            ref_members, ref_drop = exact_tv[(row["low"], row["high"])]
            both = row["_members"] & ref_members
            row["agree_exact_tv"] = (both & (row["_drop"] == ref_drop)).sum() / both.sum()
    return pd.DataFrame(rows).drop(columns=["_members", "_drop"])


def _assert_summary(summary: pd.DataFrame, reference: pd.DataFrame) -> None:
    key = ["method", "low", "high", "anchor"]
    got = summary.set_index(key).sort_index()
    want = reference.set_index(key).sort_index()
    assert list(got.index) == list(want.index)
    for column in want.columns:
        np.testing.assert_allclose(
            got[column].to_numpy(float), want[column].to_numpy(float), rtol=1e-12, atol=0, err_msg=column
        )


def _read_prime_rl(export: Path) -> pd.DataFrame:
    """An independent reader of the prime-rl export: response tokens as a flat frame."""
    frames = []
    for index, path in enumerate(sorted(export.glob("**/rank_*.jsonl"))):
        for line_no, line in enumerate(path.read_text().splitlines()):
            record = json.loads(line)
            mask = np.array(record["loss_mask"], bool)
            first = int(np.flatnonzero(mask)[0])
            f = pd.DataFrame(
                {
                    "step": record["step"],
                    "sequence": index * 10_000 + line_no,
                    "position": np.arange(len(mask)) - first,
                    "rollout_logprob": np.array(record["inference_logprobs"], float),
                    "logprob": np.array(record["trainer_logprobs"], float),
                    "advantage": np.array(record["advantages"], float),
                }
            )
            frames.append(f[mask])
    return pd.concat(frames, ignore_index=True)


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=[0, FRESH], ids=["seed0", "fresh"])
def prime_rl_run(request, tmp_path_factory, session_seed):
    seed = session_seed if request.param == FRESH else request.param
    root = tmp_path_factory.mktemp(f"prime_rl_{seed}")
    export = write_prime_rl_export(
        root / "run",
        steps=5,
        ranks=2,
        sequences_per_rank=8,
        min_length=16,
        max_length=160,
        sigma_start=0.05,
        sigma_end=0.3,
        null_share=0.01,
        outlier_share=0.05,
        seed=seed,
    )
    out = root / "report"
    run_report(export, out=out, progress=False)
    return seed, export, out


def _random_table(seed: int, steps: int = 3, sequences: int = 12, length: int = 20, v: int = 12, k: int = 3):
    """A toy trainer's table: full distributions known (tv_exact), top-K of μ, recomputed π_old, nulls."""
    rng = np.random.default_rng(seed)
    n = steps * sequences * length
    rollout = rng.normal(0, 2.5, (n, v))
    trainer = rollout + rng.normal(0, 0.6, (n, v)) * (rng.random((n, 1)) < 0.3)
    old = rollout + rng.normal(0, 0.3, (n, v))
    lmu_full, lpi_full, lold_full = (log_softmax(x, 1) for x in (rollout, trainer, old))
    token = np.array([rng.choice(v, p=np.exp(row)) for row in lmu_full])
    pick = np.arange(n)
    ids = np.argsort(-lmu_full, axis=1)[:, :k]
    seq = np.repeat(np.arange(steps * sequences), length)
    adv = rng.choice([-1.0, -0.3, 0.0, 0.5, 1.0], steps * sequences)[seq]
    frame = pd.DataFrame(
        {
            "step": np.repeat(np.arange(steps), sequences * length),
            "sequence": seq,
            "position": np.tile(np.arange(length), steps * sequences),
            "token_id": token,
            "rollout_logprob": lmu_full[pick, token],
            "logprob": lpi_full[pick, token],
            "advantage": adv,
            "response_mask": np.tile(np.arange(length), steps * sequences) < length - 3,
            "old_logprob": lold_full[pick, token],
            "tv_exact": 0.5 * np.abs(np.exp(lmu_full) - np.exp(lpi_full)).sum(1),
            "kl_exact": (np.exp(lmu_full) * (lmu_full - lpi_full)).sum(1),
        }
    )
    frame["topk_ids"] = list(ids)
    frame["rollout_topk_logprobs"] = list(np.take_along_axis(lmu_full, ids, 1))
    frame["topk_logprobs"] = list(np.take_along_axis(lpi_full, ids, 1))
    frame.loc[rng.random(n) < 0.02, "logprob"] = np.nan
    frame.loc[rng.random(n) < 0.02, "old_logprob"] = np.nan
    return frame


@pytest.fixture(scope="module", params=[1, FRESH], ids=["seed1", "fresh"])
def toy_run(request, tmp_path_factory, session_seed):
    seed = session_seed if request.param == FRESH else request.param
    root = tmp_path_factory.mktemp(f"toy_{seed}")
    frame = _random_table(seed)
    for step, part in frame.groupby("step"):
        write_token_table(
            part.reset_index(drop=True),
            token_table_path(root / "tokens", int(step)),
            source="trustregion_lab",
        )
    tables = analyse(open_source(root / "tokens"), progress=False)
    return frame, root, tables


# --------------------------------------------------------------------------------------------- summary


def test_prime_rl_summary_equals_independent_computation(prime_rl_run):
    seed, export, out = prime_rl_run
    tokens = _read_prime_rl(export)
    summary = pd.read_csv(out / "summary.csv")
    _assert_summary(summary, _reference_summary(tokens))
    assert set(summary["method"]) == {"ppo", "dppo_binary_tv", "dppo_binary_kl"}, seed
    assert summary["skipped_nonfinite"].min() > 0  # the generated nulls are counted, not silently dropped


def test_toy_summary_equals_independent_computation_with_topk_exact_and_recompute(toy_run):
    frame, _, tables = toy_run
    tokens = frame[frame["response_mask"]].reset_index(drop=True)
    _assert_summary(tables.summary, _reference_summary(tokens))
    assert {"dppo_topk_tv", "dppo_topk_kl", "dppo_exact_tv", "dppo_exact_kl"} <= set(tables.summary["method"])
    assert set(tables.summary["anchor"]) == {"rollout", "recompute"}


def test_every_table_format_gives_the_same_summary(toy_run, tmp_path):
    frame, _, tables = toy_run
    flat = frame.copy()
    for name in ("topk_ids", "rollout_topk_logprobs", "topk_logprobs"):
        flat[name] = [json.dumps(np.asarray(v).tolist()) for v in flat[name]]
    flat.to_csv(tmp_path / "tokens.csv", index=False)
    with open(tmp_path / "tokens.jsonl", "w") as handle:
        for row in frame.to_dict("records"):
            row = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}
            row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            handle.write(json.dumps(row) + "\n")
    for path, fmt in ((tmp_path / "tokens.csv", "csv"), (tmp_path / "tokens.jsonl", "jsonl")):
        other = analyse(open_source(path, "auto"), progress=False).summary
        assert open_source(path).format == fmt
        pd.testing.assert_frame_equal(other, tables.summary, rtol=1e-12)


def test_streaming_in_small_batches_gives_the_same_tables(toy_run):
    _, root, tables = toy_run
    small = analyse(open_source(root / "tokens"), progress=True, batch_tokens=37)  # the bar is drawn too
    for name in ("summary", "by_mu", "matched_delta", "by_step", "by_position", "sequence_is"):
        pd.testing.assert_frame_equal(getattr(small, name), getattr(tables, name), rtol=1e-10, obj=name)


# ------------------------------------------------------------------------------------ the other tables


def test_by_mu_counts_and_matched_delta(toy_run):
    frame, _, tables = toy_run
    t = frame[frame["response_mask"]]
    lp, lmu, adv = (t[c].to_numpy() for c in ("logprob", "rollout_logprob", "advantage"))
    members = np.isfinite(lp) & (adv != 0)
    lp, lmu, adv = lp[members], lmu[members], adv[members]
    ppo = _reference_drop("ppo", 0.2, 0.2, lp, lmu, adv)
    tv = _reference_drop("dppo_binary_tv", 0.15, 0.15, lp, lmu, adv)
    bucket = np.clip(np.searchsorted(MU_EDGES[1:-1], np.exp(lmu), side="right"), 0, len(MU_EDGES) - 2)
    by_mu = tables.by_mu[tables.by_mu["sign"] == "all"]
    for b in range(len(MU_EDGES) - 1):
        row = by_mu.iloc[b]
        cell = bucket == b
        assert row["tokens"] == cell.sum()
        assert row["ppo_only"] == (cell & ppo & ~tv).sum() and row["tv_only"] == (cell & tv & ~ppo).sum()
    total = by_mu[by_mu["mu_bucket"] == "all"].iloc[0]
    target = ppo.mean()
    outward = ((adv > 0) & (lp > lmu)) | ((adv < 0) & (lp < lmu))
    critical = np.where(outward, np.abs(np.exp(lp) - np.exp(lmu)), -np.inf)
    delta, lo = total["matched_delta"], total["matched_delta_lo"]
    assert (critical > delta).mean() <= target + 1e-12
    if delta > 0:
        assert (critical > lo).mean() > target and delta - lo <= 0.003 * delta
    exact = tables.matched_delta.query("method == 'dppo_binary_tv' and ppo_low == 0.2 and ppo_high == 0.2")
    assert exact["matched_delta"].iloc[0] == delta
    assert np.isfinite(total["tv_agree_exact"])  # the toy's exact TV is shown beside the estimate


def test_by_step_sequence_is_and_positions_against_numpy(prime_rl_run):
    _, export, out = prime_rl_run
    t = _read_prime_rl(export)
    ok = np.isfinite(t["logprob"]) & np.isfinite(t["rollout_logprob"])
    t = t[ok]
    by_step = pd.read_csv(out / "by_step.csv")
    for step, part in t.groupby("step"):
        log_r = part["logprob"] - part["rollout_logprob"]
        r = np.exp(log_r)
        want = {
            "mismatch_mean": np.abs(np.exp(part["logprob"]) - np.exp(part["rollout_logprob"])).mean(),
            "mismatch_k3": (r - 1 - log_r).mean(),
            "mismatch_logprob_abs": np.abs(log_r).mean(),
            "ess": r.sum() ** 2 / (len(r) * (r**2).sum()),
        }
        rows = by_step[(by_step["step"] == step) & by_step["metric"].isin(list(want))].set_index("metric")
        for metric, value in want.items():
            np.testing.assert_allclose(rows.loc[metric, "value"], value, rtol=1e-9, err_msg=metric)
    names = by_step.dropna(subset=["source_metric"]).set_index("metric")["source_metric"].to_dict()
    assert names["mismatch_k3"] == "mismatch_kl/all/mean"
    seq = t.assign(log_r=t["logprob"] - t["rollout_logprob"]).groupby(["step", "sequence"])["log_r"].sum()
    sis = pd.read_csv(out / "sequence_is.csv").set_index(["level", "cap"])
    np.testing.assert_allclose(sis.loc[("product", 3.0), "frac_outside"], (np.abs(seq) > np.log(3)).mean())
    positions = pd.read_csv(out / "by_position.csv")
    counts = positions[positions["metric"] == "mismatch_mean"].set_index("position_lo")["tokens"]
    lo = np.where(t["position"] == 0, 0, 2 ** np.floor(np.log2(np.maximum(t["position"], 1))))
    assert counts.to_dict() == pd.Series(lo.astype(int)).value_counts().to_dict()


def test_report_files_figures_and_verdicts(prime_rl_run):
    _, _, out = prime_rl_run
    names = {p.name for p in out.iterdir()}
    assert {
        "summary.csv",
        "by_mu.csv",
        "by_step.csv",
        "by_position.csv",
        "sequence_is.csv",
        "report.md",
    } <= names
    assert {"mismatch_by_step.png", "masks_by_mu.png", "sequence_is.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    card = (out / "report.md").read_text()
    assert "drops" in card and "![masks_by_mu.png](masks_by_mu.png)" in card
    # the trend verdict follows the per-step mismatch (first vs last step of this 5-step run), whatever the seed
    steps = pd.read_csv(out / "by_step.csv")
    mean = steps[steps["metric"] == "mismatch_mean"].dropna(subset=["value"]).sort_values("step")["value"]
    ratio = mean.iloc[-1] / mean.iloc[0]
    word = "rose" if ratio >= 1.5 else "fell" if ratio <= 1 / 1.5 else "stayed flat"
    assert f"The mismatch (mean |π(a) − μ(a)|) {word}" in card, (ratio, card)


# ---------------------------------------------------------------------------------------- converters


def test_verl_and_trl_converters(tmp_path):
    rng = np.random.default_rng(3)
    b, t = 4, 6
    mask = np.arange(t)[None, :] < np.array([6, 4, 5, 2])[:, None]
    lmu, lold, lpi = (-rng.exponential(0.5, (b, t)) for _ in range(3))
    ids = rng.integers(0, 100, (b, t))
    batch = {
        "responses": torch.from_numpy(ids),
        "response_mask": torch.from_numpy(mask),
        "rollout_log_probs": torch.from_numpy(lmu).to(torch.bfloat16),
        "old_log_probs": torch.from_numpy(lold),
        "advantages": torch.from_numpy(np.repeat(rng.normal(size=(b, 1)), t, 1)),
    }
    verl = from_verl(batch, step=7)
    assert len(verl) == mask.sum() and verl.attrs["source"] == "verl" and "old_logprob" not in verl
    np.testing.assert_array_equal(verl["logprob"], lold[mask])
    verl_now = from_verl(batch, step=7, log_prob=lpi)
    np.testing.assert_array_equal(verl_now["old_logprob"], lold[mask])
    inputs = {
        "completion_ids": ids,
        "completion_mask": mask.astype(int),
        "sampling_per_token_logps": lmu,
        "old_per_token_logps": lold,
        "advantages": rng.normal(size=b),
    }
    trl = from_trl(inputs, step=2, per_token_logps=lpi)
    np.testing.assert_array_equal(trl["advantage"], np.repeat(inputs["advantages"], mask.sum(1)))
    np.testing.assert_array_equal(trl["position"], np.concatenate([np.arange(n) for n in mask.sum(1)]))
    write_token_table(verl_now, token_table_path(tmp_path / "verl", 7))
    tables = analyse(open_source(tmp_path / "verl"), progress=False)
    assert open_source(tmp_path / "verl").framework == "verl"
    assert tables.summary["tokens"].max() > 0 and "recompute" in set(tables.summary["anchor"])
    with pytest.raises(ValueError, match="per_token_logps"):
        from_trl({k: v for k, v in inputs.items() if k != "old_per_token_logps"}, step=0)
    with pytest.raises(ValueError, match="'rollout_log_probs'"):
        from_verl({k: v for k, v in batch.items() if k != "rollout_log_probs"}, step=0)


# --------------------------------------------------------------------------------------------- bad input


def _export_with(tmp_path: Path, edit) -> Path:
    export = write_prime_rl_export(
        tmp_path / "run", steps=1, ranks=1, sequences_per_rank=3, min_length=8, max_length=12
    )
    path = next(export.glob("**/rank_0.jsonl"))
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    edit(record)
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    return export


def _cli_error(capsys, *args) -> str:
    assert main([*map(str, args), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_missing_field_names_field_file_and_line(tmp_path, capsys):
    export = _export_with(tmp_path, lambda r: r.pop("trainer_logprobs"))
    err = _cli_error(capsys, export, "--out", tmp_path / "out")
    assert "'trainer_logprobs'" in err and "rank_0.jsonl:2" in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_unequal_lengths_name_the_record(tmp_path, capsys):
    export = _export_with(tmp_path, lambda r: r["inference_logprobs"].pop())
    err = _cli_error(capsys, export, "--out", tmp_path / "out")
    assert "rank_0.jsonl:2" in err and "export_sequence_idx 1" in err and "inference_logprobs" in err


def test_positive_logprobs_are_an_error_rounding_is_not(tmp_path, capsys):
    def positive(record):
        record["trainer_logprobs"][-1] = 0.5

    export = _export_with(tmp_path, positive)
    err = _cli_error(capsys, export)
    assert "logprob" in err and "0.5" in err and "rank_0.jsonl:2" in err

    def rounding(record):
        record["trainer_logprobs"][-1] = 1e-7

    export = _export_with(tmp_path / "b", rounding)
    assert main([str(export), "--out", str(tmp_path / "b" / "out"), "--no-progress"]) == 0


def test_null_logprobs_are_counted_not_silent(tmp_path):
    def nulls(record):
        record["inference_logprobs"][-3:] = [None, None, None]

    export = _export_with(tmp_path, nulls)
    tables = analyse(open_source(export), progress=False)
    assert tables.inputs["null_rollout_logprob"] == 3
    assert (tables.summary["skipped_nonfinite"] >= 1).all()


def test_no_export_and_bad_tables(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _cli_error(capsys, tmp_path / "empty")
    assert "no token export found" in err
    err = _cli_error(capsys, tmp_path / "nowhere")
    assert "no such file" in err
    frame = _random_table(0, steps=1, sequences=2, length=4)
    pd.DataFrame(
        frame.drop(columns=["advantage", "topk_ids", "rollout_topk_logprobs", "topk_logprobs"])
    ).to_parquet(tmp_path / "t.parquet")
    err = _cli_error(capsys, tmp_path / "t.parquet")
    assert "'advantage'" in err and "t.parquet" in err
    rows = frame.drop(columns=["topk_ids", "rollout_topk_logprobs", "topk_logprobs"]).to_dict("records")
    del rows[2]["step"]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = _cli_error(capsys, tmp_path / "t.jsonl")
    assert "t.jsonl:3" in err and "'step'" in err


def test_topk_lists_of_unequal_length_are_an_error(tmp_path):
    frame = _random_table(0, steps=1, sequences=2, length=4)
    frame.at[4, "topk_logprobs"] = frame.at[4, "topk_logprobs"][:2]  # row 4: a response token
    with pytest.raises(ValueError, match="row 4: top-K list columns of unequal length"):
        write_token_table(frame, tmp_path / "t.parquet")
    pa_table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(pa_table, tmp_path / "t.parquet")  # written by another tool
    with pytest.raises(ReportInputError, match=r"t\.parquet row 4: top-K lists of unequal length"):
        analyse(open_source(tmp_path / "t.parquet"), progress=False)


def test_write_token_table_checks_and_is_atomic(tmp_path):
    frame = _random_table(0, steps=1, sequences=2, length=4)
    with pytest.raises(ValueError, match="missing required column"):
        write_token_table(frame.drop(columns=["logprob"]), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="unknown column"):
        write_token_table(frame.assign(logprobs=0.0), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="log-probabilities"):
        write_token_table(frame.assign(logprob=0.3), tmp_path / "a.parquet")
    assert not list(tmp_path.iterdir())
    path = write_token_table(
        {c: frame[c].to_numpy() for c in REQUIRED_COLUMNS}, token_table_path(tmp_path, 3)
    )
    assert path.name == "step_000003.parquet" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_cli_help_and_success(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "prime-rl" in capsys.readouterr().out
    export = write_prime_rl_export(
        tmp_path / "run", steps=2, ranks=1, sequences_per_rank=2, min_length=8, max_length=12
    )
    assert main([str(export), "--format", "prime-rl", "--no-progress"]) == 0
    assert (tmp_path / "run" / "token_exports_report" / "report.md").exists()


def test_toy_trainer_export_recipe(tmp_path):
    """The call the project's trainers make per step (README recipe): torch tensors of a rollout batch."""
    from trustregion_lab import divergence
    from trustregion_lab.report import from_arrays

    gen = torch.Generator().manual_seed(5)
    b, t, v, k = 6, 5, 30, 4
    rollout_logits = torch.randn(b, t, v, generator=gen, dtype=torch.float64) * 2
    old_logits = rollout_logits + 0.5 * torch.randn(b, t, v, generator=gen, dtype=torch.float64)
    tokens = torch.distributions.Categorical(logits=rollout_logits).sample()
    topk_ids = rollout_logits.topk(k, dim=-1).indices
    lmu_full, lold_full = rollout_logits.log_softmax(-1), old_logits.log_softmax(-1)
    for step in range(3):
        frame = from_arrays(
            step=step,
            token_ids=tokens,
            response_mask=torch.arange(t)[None, :] < torch.tensor([5, 5, 4, 3, 5, 2])[:, None],
            rollout_logprob=lmu_full.gather(-1, tokens[..., None])[..., 0],
            logprob=lold_full.gather(-1, tokens[..., None])[..., 0],
            advantages=torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 1.0]),
            reward=torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0]),
            tv_exact=divergence.tv(rollout_logits, old_logits),
            topk_ids=topk_ids,
            rollout_topk_logprobs=lmu_full.gather(-1, topk_ids),
            topk_logprobs=lold_full.gather(-1, topk_ids),
            source="trustregion_lab",
        )
        write_token_table(frame, token_table_path(tmp_path / "tokens", step))
    written = run_report(tmp_path / "tokens", out=tmp_path / "out", progress=False)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    exact = summary[summary["method"] == "dppo_exact_tv"]
    assert len(exact) == 2 and (exact["tokens"] == summary["tokens"].iloc[0]).all()
    assert summary.loc[summary["method"] == "dppo_binary_tv", "agree_exact_tv"].between(0, 1).all()
    assert pd.read_csv(tmp_path / "out" / "by_mu.csv")["tv_agree_exact"].notna().any()
    assert "exact-TV mask" in (tmp_path / "out" / "report.md").read_text() and len(written) > 6


def test_step_folders_still_being_written_are_skipped_and_noted(tmp_path):
    export = write_prime_rl_export(
        tmp_path / "run", steps=3, ranks=1, sequences_per_rank=2, min_length=8, max_length=12
    )
    (export / "step_2" / "STABLE").unlink()
    partial = export / "step_2" / "rank_0.jsonl"
    partial.write_text(partial.read_text()[:-50])  # a half-written last line
    source = open_source(export)
    assert "step_2" in source.notes[0] and len(source.files) == 2
    tables = analyse(source, progress=False)
    assert tables.inputs["steps"] == 2 and "step_2" in tables.inputs["notes"]


def test_bad_topk_rows_name_the_row(tmp_path):
    frame = _random_table(0, steps=1, sequences=2, length=4)
    frame.at[0, "topk_ids"] = np.array([3, 3, 1])
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "dup.parquet")
    with pytest.raises(ReportInputError, match=r"dup\.parquet row 0: topk_ids repeats"):
        analyse(open_source(tmp_path / "dup.parquet"), progress=False)
    frame = _random_table(0, steps=1, sequences=2, length=4)
    frame.at[4, "rollout_topk_logprobs"] = np.log([0.7, 0.5, 0.1])
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "mass.parquet")
    with pytest.raises(ReportInputError, match=r"mass\.parquet row 4: rollout_topk_logprobs are not"):
        analyse(open_source(tmp_path / "mass.parquet"), progress=False)


def test_the_trend_sentence_reads_a_mismatch_that_falls_to_zero_or_rises_from_zero():
    """A run whose mismatch ends at exactly 0 (an engine that becomes exact) 'fell to 0', not 'fell inf×'."""
    from trustregion_lab.report.card import _trend

    def by_step(values):
        return pd.DataFrame({"metric": "mismatch_mean", "step": range(1, len(values) + 1), "value": values})

    falling = _trend(by_step([0.01] * 10 + [0.0] * 10))
    assert "fell to 0" in falling and "inf" not in falling
    assert "fell 4.0×" in _trend(by_step([0.04] * 10 + [0.01] * 10))
    assert "rose 3.0×" in _trend(by_step([0.01] * 10 + [0.03] * 10))
    assert "went from 0 to 0.01" in _trend(by_step([0.0] * 10 + [0.01] * 10))
