"""One streaming pass over a token export → the report's tables (`analyse`), and writing them (`write_report`).

Masks of the summary (docs/design.md §2, thresholds as `ReportMask`s): `ppo` 0.2/0.2 and 0.2/0.28, `dppo_binary_tv`
0.15/0.15 and 0.2/0.2, `dppo_binary_kl` 0.05/0.05 on the rollout anchor; the Top-K methods at the same δ when the
table has top-K columns; `dppo_exact_tv` / `dppo_exact_kl` from tv_exact / kl_exact when present; and the
ppo / binary masks again on the recompute anchor when old_logprob exists. Rows whose inputs never appear in
the export are left out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trustregion_lab._io import TMP_SUFFIX, atomic_write_csv, atomic_write_text, check_writable_folder
from trustregion_lab._validate import check_int
from trustregion_lab.report.maskstats import ConfusionStats, MatchedStats, SummaryStats
from trustregion_lab.report.mismatch import GroupStats, SequenceStats, position_bucket
from trustregion_lab.report.schema import ReportInputError, TokenChunk
from trustregion_lab.report.sources import BATCH_TOKENS, TokenSource
from trustregion_lab.report.view import ReportMask, TokenView, needed_column

__all__ = [
    "DEFAULT_SPECS",
    "REPORT_FILES",
    "ReportTables",
    "analyse",
    "check_out_folder",
    "on_low_precision_grid",
    "write_report",
]

_R, _C = "rollout", "recompute"
DEFAULT_SPECS: tuple[ReportMask, ...] = (
    ReportMask("ppo", 0.2, 0.2),
    ReportMask("ppo", 0.2, 0.28),
    ReportMask("dppo_binary_tv", 0.15, 0.15),
    ReportMask("dppo_binary_tv", 0.2, 0.2),
    ReportMask("dppo_binary_kl", 0.05, 0.05),
    ReportMask("dppo_topk_tv", 0.15, 0.15),
    ReportMask("dppo_topk_tv", 0.2, 0.2),
    ReportMask("dppo_topk_kl", 0.05, 0.05),
    ReportMask("dppo_exact_tv", 0.15, 0.15),
    ReportMask("dppo_exact_tv", 0.2, 0.2),
    ReportMask("dppo_exact_kl", 0.05, 0.05),
    ReportMask("ppo", 0.2, 0.2, _C),
    ReportMask("ppo", 0.2, 0.28, _C),
    ReportMask("dppo_binary_tv", 0.15, 0.15, _C),
    ReportMask("dppo_binary_tv", 0.2, 0.2, _C),
    ReportMask("dppo_binary_kl", 0.05, 0.05, _C),
)
MATCH_PPO: tuple[ReportMask, ...] = (
    ReportMask("ppo", 0.1, 0.1),
    ReportMask("ppo", 0.2, 0.2),
    ReportMask("ppo", 0.2, 0.28),
    ReportMask("ppo", 0.3, 0.3),
)
MATCH_METHODS = (
    "dppo_binary_tv",
    "dppo_binary_kl",
    "dppo_topk_tv",
    "dppo_topk_kl",
    "dppo_exact_tv",
    "dppo_exact_kl",
)
CONFUSION = (ReportMask("ppo", 0.2, 0.2), ReportMask("dppo_binary_tv", 0.15, 0.15))
FRAMEWORK_MASK = ReportMask("dppo_binary_tv", 0.2, 0.2)  # prime-rl's default loss mask (its is_masked flag)


def _needed_column(spec_or_method: ReportMask | str) -> str | None:
    if isinstance(spec_or_method, str):
        return needed_column(spec_or_method)
    return needed_column(spec_or_method.method, spec_or_method.anchor)


_GRID_COLUMNS = ("rollout_logprob", "logprob")
GRID_MIN_ABS = 1e-3  # log-probs nearer 0 are left out of the grid test (many grids hold them exactly)


def on_low_precision_grid(values: np.ndarray) -> tuple[int, int, int]:
    """(checked, on the bfloat16 grid, on the float16 grid) counts of finite log-probs with |x| >= GRID_MIN_ABS.

    A float64 value lies on the bfloat16 grid when it is a float32 whose low 16 bits are zero (bfloat16 keeps
    8 significant bits: spacing 2^(e − 7) for |x| in [2^e, 2^(e+1)), 0.0625 for |x| in [8, 16)); on the float16
    grid when float16 holds it exactly (11 significant bits).
    """
    x = values[np.isfinite(values) & (np.abs(values) >= GRID_MIN_ABS)]
    if x.size == 0:
        return 0, 0, 0
    x32 = x.astype(np.float32)
    exact32 = x32.astype(np.float64) == x
    bf16 = exact32 & ((x32.view(np.uint32) & np.uint32(0xFFFF)) == 0)
    with np.errstate(over="ignore"):
        fp16 = x.astype(np.float16).astype(np.float64) == x
    return int(x.size), int(bf16.sum()), int(fp16.sum())


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 `[n]` (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class RowKeys:
    """Finds a (step, sequence, position) that occurs twice among the response rows of a stream of chunks.

    Each row is kept as a 64-bit hash of its key, in sorted runs merged like a binary counter (memory 8 bytes
    per response token, time O(n log² n)). Two different keys share a hash with probability about
    n² / 2^65 (3e-6 at 10 M tokens), so a report would be refused in error that rarely and never passes a
    repeated row.
    """

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def add(self, chunk: TokenChunk) -> None:
        """Raise ReportInputError naming the row when one of `chunk`'s keys was seen (in it or before)."""
        if len(chunk) == 0:
            return
        u = np.uint64
        keys = _mix(_mix(_mix(chunk.step.astype(u)) ^ chunk.sequence.astype(u)) ^ chunk.position.astype(u))
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        twice = np.flatnonzero(ordered[1:] == ordered[:-1])
        if twice.size:
            self._refuse(chunk, int(order[twice[0] + 1]), f"as {chunk.where(int(order[twice[0]]))} does")
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, ordered), run.shape[0] - 1)
            hit = np.flatnonzero(run[at] == ordered)
            if hit.size:
                self._refuse(chunk, int(order[hit[0]]), "as an earlier row does")
        self.runs.append(ordered)
        while len(self.runs) > 1 and self.runs[-1].shape[0] >= self.runs[-2].shape[0]:
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")

    @staticmethod
    def _refuse(chunk: TokenChunk, i: int, other: str) -> None:
        raise ReportInputError(
            f"{chunk.where(i)}: (step {chunk.step[i]}, sequence {chunk.sequence[i]}, position "
            f"{chunk.position[i]}) occurs twice among the response tokens ({other}); each token must appear "
            "once, or it would be counted twice"
        )


@dataclass
class ReportTables:
    """The report's tables (pandas DataFrames) and the input counts behind them."""

    summary: pd.DataFrame
    by_mu: pd.DataFrame
    matched_delta: pd.DataFrame
    by_step: pd.DataFrame
    by_position: pd.DataFrame
    sequence_is: pd.DataFrame
    inputs: dict[str, int | str] = field(default_factory=dict)

    TABLES = ("summary", "by_mu", "matched_delta", "by_step", "by_position", "sequence_is")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads (restored afterwards).

    The per-chunk torch calls are small element-wise ops: on a shared machine extra threads spin-wait and
    cost up to 100× (measured: float64 exp of 24k values, 9 ms with 2 threads vs 0.1 ms with 1).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def analyse(
    source: TokenSource,
    *,
    progress: bool | None = None,
    specs: Sequence[ReportMask] = DEFAULT_SPECS,
    batch_tokens: int = BATCH_TOKENS,
) -> ReportTables:
    """Stream `source` once, `batch_tokens` rows at a time, and return every table.

    Memory does not grow with the number of tokens, only with the number of steps, position buckets and
    sequences (one (Σ log r, n) pair per sequence). progress: True / False / None (= only on a terminal).
    """
    batch_tokens = check_int("batch_tokens", batch_tokens, minimum=1)
    with _torch_threads(1):
        return _analyse(source, progress, list(specs), batch_tokens)


def _analyse(
    source: TokenSource, progress: bool | None, specs: list[ReportMask], batch_tokens: int
) -> ReportTables:
    summary = SummaryStats(specs)
    confusion = ConfusionStats(*CONFUSION)
    matched = MatchedStats(MATCH_PPO, MATCH_METHODS)
    by_step = GroupStats([s for s in specs if s.anchor == _R] + [s for s in specs if s.anchor == _C])
    by_position = GroupStats(list(CONFUSION))
    sequences = SequenceStats()
    seen: set[str] = set()
    counts = dict.fromkeys(("response_tokens", "null_rollout_logprob", "null_logprob", "null_advantage"), 0)
    counts |= {"null_old_logprob": 0, "zero_advantage": 0, "invalid_topk": 0, "null_any": 0}
    counts |= {"identical_logprob": 0, "finite_logprob_pairs": 0}
    counts |= {f"{name}_{grid}": 0 for name in _GRID_COLUMNS for grid in ("checked", "bf16", "fp16")}
    counts |= {"is_weight_tokens": 0, "is_weight_zero": 0, "is_weight_above_1": 0}
    counts |= {"framework_flagged_tokens": 0, "framework_flagged": 0, "framework_flagged_zero_adv": 0}
    counts |= {"framework_compared": 0, "framework_disagree": 0}
    is_weight_max = -np.inf
    steps: set[int] = set()
    positions: set[int] = set()
    keys = RowKeys() if source.format != "prime-rl" else None  # prime-rl: ids unique by construction
    for chunk in source.chunks(progress=progress, batch_tokens=batch_tokens):
        if len(chunk) == 0:
            continue
        if keys is not None:
            keys.add(chunk)
        view = TokenView(chunk)
        seen |= set(chunk.optional)
        counts["response_tokens"] += len(chunk)
        counts["null_rollout_logprob"] += int(np.isnan(chunk.rollout_logprob).sum())
        counts["null_logprob"] += int(np.isnan(chunk.logprob).sum())
        counts["null_advantage"] += int((~view.adv_ok).sum())
        counts["zero_advantage"] += int((view.adv_ok & (chunk.advantage == 0)).sum())
        counts["null_any"] += int((~(view.ok & view.adv_ok)).sum())  # tokens, each counted once
        counts["finite_logprob_pairs"] += int(view.ok.sum())
        counts["identical_logprob"] += int((view.ok & (chunk.logprob == chunk.rollout_logprob)).sum())
        for name in _GRID_COLUMNS:
            checked, bf16, fp16 = on_low_precision_grid(getattr(chunk, name))
            counts[f"{name}_checked"] += checked
            counts[f"{name}_bf16"] += bf16
            counts[f"{name}_fp16"] += fp16
        flag = chunk.get("framework_masked")
        if flag is not None:
            has = np.isfinite(flag)
            flagged = has & (flag == 1)
            counts["framework_flagged_tokens"] += int(has.sum())
            counts["framework_flagged"] += int(flagged.sum())
            counts["framework_flagged_zero_adv"] += int(
                (flagged & view.adv_ok & (chunk.advantage == 0)).sum()
            )
            members, drop = view.drop(FRAMEWORK_MASK)
            compared = members & has
            counts["framework_compared"] += int(compared.sum())
            counts["framework_disagree"] += int((compared & (flagged != drop)).sum())
        weight = chunk.get("is_weight")
        if weight is not None:
            finite = weight[np.isfinite(weight)]
            counts["is_weight_tokens"] += int(finite.size)
            counts["is_weight_zero"] += int((finite == 0).sum())
            counts["is_weight_above_1"] += int((finite > 1).sum())
            is_weight_max = max(is_weight_max, float(finite.max(initial=-np.inf)))
        if chunk.get("old_logprob") is not None:
            counts["null_old_logprob"] += int(np.isnan(chunk.get("old_logprob")).sum())
        if chunk.get("topk_ids") is not None:
            counts["invalid_topk"] += int((~view.topk_ok).sum())
        summary.add(view)
        confusion.add(view)
        matched.add(view)
        by_step.add(view, chunk.step)
        bucket = position_bucket(chunk.position)
        by_position.add(view, bucket)
        sequences.add(view)
        steps.update(np.unique(chunk.step).tolist())
        positions.update(np.unique(bucket).tolist())
    if counts["response_tokens"] == 0:
        raise ReportInputError(
            f"{source.path}: the export holds no response tokens (loss_mask / response_mask all false)"
        )

    def present(item: ReportMask | str) -> bool:
        needed = _needed_column(item)
        return needed is None or needed in seen

    has_exact = "tv_exact" in seen
    summary_table = summary.table(has_exact)
    summary_table = summary_table[[present(s) for s in specs]].reset_index(drop=True)
    matched_table = matched.table()
    matched_table = matched_table[[present(m) for m in matched_table["method"]]].reset_index(drop=True)
    step_table = by_step.table({s: {"step": s} for s in steps}, source.framework)
    step_table = _drop_absent(step_table, present)
    position_keys = {
        b: {"position_lo": 0 if b == 0 else 2 ** (b - 1), "position_hi": 2**b} for b in positions
    }
    position_table = by_position.table(position_keys, source.framework)
    position_table = _drop_absent(position_table.drop(columns=["source", "source_metric"]), present)
    by_mu = confusion.table()
    if not has_exact:
        by_mu = by_mu.drop(columns=["exact_tokens", "exact_drop", "ppo_agree_exact", "tv_agree_exact"])
    seq_table = sequences.table()
    inputs: dict[str, int | str] = {
        "path": str(source.path),
        "format": source.format,
        "framework": source.framework or "",
        "files": len(source.files),
        "steps": len(steps),
        "sequences": int(seq_table.loc[seq_table["level"] == "product", "count"].max())
        if (seq_table["level"] == "product").any()
        else 0,
        "optional_columns": ", ".join(sorted(seen)),
        "notes": " ".join(source.notes),
        **counts,
        **{k: int(v) for k, v in source.counts.items()},
    }
    if counts["is_weight_tokens"]:
        inputs["is_weight_max"] = is_weight_max
    return ReportTables(
        summary=summary_table,
        by_mu=by_mu,
        matched_delta=matched_table,
        by_step=step_table,
        by_position=position_table,
        sequence_is=seq_table,
        inputs=inputs,
    )


def _drop_absent(table: pd.DataFrame, present) -> pd.DataFrame:
    keep = [
        not method or present(ReportMask(method, low, high, anchor))
        for method, low, high, anchor in zip(table["method"], table["low"], table["high"], table["anchor"])
    ]
    return table[keep].reset_index(drop=True)


REPORT_FILES: frozenset[str] = frozenset(
    [f"{name}.csv" for name in ReportTables.TABLES]
    + ["report.md", "mask_rates.png", "mismatch_by_step.png", "masks_by_mu.png", "mismatch_by_position.png"]
    + ["sequence_is.png"]
)


def _old_name(out: Path) -> Path:
    return out.parent / f".{out.name}.old{TMP_SUFFIX}"


def check_out_folder(out: str | os.PathLike, export: str | os.PathLike | None = None) -> Path:
    """Check the report's output folder before any work → its resolved path (ReportInputError otherwise).

    Refused: `out` inside the `export` (a later run would read the report as input), `out` holding the export
    (the report replaces `out` whole), a file, a folder holding anything but a previous report's files
    (`REPORT_FILES`), or a place this process cannot write. A swap a killed report left half done is put
    back first, and temporary folders of killed reports are removed.
    """
    out = Path(out).resolve()
    old = _old_name(out)
    if old.is_dir() and not out.exists():
        os.replace(old, out)  # killed between the two renames of `write_report`: the previous report returns
    if export is not None:
        export = Path(export).resolve()
        if out == export or (export.is_dir() and out.is_relative_to(export)):
            raise ReportInputError(
                f"--out {out} lies inside the export {export}: a later report would read it as input; "
                "choose a folder outside it"
            )
        if export.is_relative_to(out):
            raise ReportInputError(f"--out {out} holds the export {export}; choose a folder beside it")
    if out.exists():
        if not out.is_dir():
            raise ReportInputError(f"--out {out} is a file, expected a folder")
        stale = [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)]
        others = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES and p not in stale)
        if others:
            raise ReportInputError(
                f"--out {out} holds files that are not a report's ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); the report replaces its folder whole: choose an empty "
                "or new folder, or a previous report's"
            )
    try:
        check_writable_folder(out.parent, "--out")
    except ValueError as err:
        raise ReportInputError(str(err)) from None
    if out.parent.is_dir():
        for stale in out.parent.glob(f".{out.name}.*{TMP_SUFFIX}"):
            if stale != old and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return out


def write_report(tables: ReportTables, out: str | os.PathLike, *, figures: bool = True) -> list[Path]:
    """Write the CSV tables, the figures (drawn from the written tables) and report.md into `out` → paths.

    Everything is written into a temporary folder beside `out`, which then replaces `out` whole: a report that
    fails or is killed leaves the previous report as it was (`check_out_folder` runs first).
    """
    from trustregion_lab.report.card import render_card
    from trustregion_lab.report.figures import draw_report_figures

    out = check_out_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=TMP_SUFFIX))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(work, 0o777 & ~mask)
        names = []
        for name in ReportTables.TABLES:
            atomic_write_csv(work / f"{name}.csv", getattr(tables, name))
            names.append(f"{name}.csv")
        read_back = {name: pd.read_csv(work / f"{name}.csv") for name in ReportTables.TABLES}
        pictures = draw_report_figures(read_back, work) if figures else []
        names += [p.name for p in pictures]
        atomic_write_text(
            work / "report.md", render_card(read_back, tables.inputs, [p.name for p in pictures])
        )
        names.append("report.md")
        old = _old_name(out)
        if out.exists():
            os.replace(out, old)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(_old_name(out), ignore_errors=True)
    return [out / name for name in names]
