"""Exact TV/KL speed and memory against two named baselines, in one run.

Baselines:
  (a) full materialisation ("Stable-RL style"): log_softmax of both `[N, V]` inputs, subtract, exp, sum — the
      straightforward PyTorch expression, holding several `[N, V]` temporaries at once;
  (b) the read floor: one `amax` pass over each input (no kernel can read its inputs faster).
Contenders are interleaved (one round runs each once), timed after a warm-up (which also pays the one-time
`torch.compile` of the opt-in compiled kernel); medians over rounds are reported, with ratios ours/(a) (goal ≤ 1)
and ours/(b) (goal ≤ 6). `tv` and `kl` each run the shared pass that yields both.

Memory: peak resident-set growth while computing, measured in a fresh subprocess per case, as a multiple of the
inputs' size (goal ≤ 1/8 for ours at N = 4,096, V = 262,144; the baseline is measured at a smaller N because at
that size it would need more memory than a 24 GiB machine has).

    python benchmarks/bench_divergence.py            # timings + memory (~2 minutes on 2 cores)
    python benchmarks/bench_divergence.py --quick    # timings at V = 32,000 only, no memory
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from trustregion_lab import divergence as D


def full_tv(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.log_softmax(x, -1).exp() - torch.log_softmax(y, -1).exp()).abs().sum(-1)


def full_kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    lx, ly = torch.log_softmax(x, -1), torch.log_softmax(y, -1)
    return (lx.exp() * (lx - ly)).sum(-1)


def read_floor(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.amax(-1) + y.amax(-1)


CONTENDERS = {
    "tv (ours)": D.tv,
    "kl (ours)": D.kl,
    "tv+kl (ours, one pass)": D.exact_tv_kl,
    "tv+kl (ours, compiled)": lambda x, y: D.exact_tv_kl(x, y, compiled=True),
    "tv (a) full": full_tv,
    "kl (a) full": full_kl,
    "(b) read floor": read_floor,
}


def inputs(n: int, v: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM-like logits (Zipf ranks plus noise) for μ, π = μ plus small noise; filled in blocks of rows so that
    building them never needs more memory than the two inputs themselves (the memory baseline stays clean)."""
    g = torch.Generator().manual_seed(seed)
    zipf = (-1.2 * torch.arange(1, v + 1, dtype=torch.float32).log())[torch.randperm(v, generator=g)]
    x, y = torch.empty(n, v), torch.empty(n, v)
    for start in range(0, n, 64):
        rows = x[start : start + 64]
        rows.normal_(0.0, 0.5, generator=g).add_(zipf)
        y[start : start + 64].normal_(0.0, 0.05, generator=g).add_(rows)
    return x, y


def time_case(n: int, v: int, rounds: int) -> dict[str, float]:
    x, y = inputs(n, v)
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for fn in CONTENDERS.values():  # warm-up
        fn(x, y)
    for _ in range(rounds):
        for name, fn in CONTENDERS.items():
            t0 = time.perf_counter()
            fn(x, y)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _peak_growth(case: str, n: int, v: int) -> None:
    """Child process: allocate inputs, then report peak RSS growth (bytes) of one call, as JSON."""
    x, y = inputs(n, v)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    {"ours": D.exact_tv_kl, "full": lambda a, b: (full_tv(a, b), full_kl(a, b))}[case](x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inputs_bytes = 2 * x.numel() * x.element_size()
    print(json.dumps({"extra": (peak - base) * 1024, "inputs": inputs_bytes}))


def peak_growth(case: str, n: int, v: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, str(n), str(v)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="V = 32,000 only and no memory measurement")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case (default 7)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _peak_growth(args.child[0], int(args.child[1]), int(args.child[2]))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, N = 256")
    vocabs = [32_000] if args.quick else [32_000, 151_936, 262_144]
    for v in vocabs:
        med = time_case(256, v, args.rounds)
        print(f"\nV = {v:,}: median ms over {args.rounds} interleaved rounds")
        for name, t in med.items():
            print(f"  {name:<24} {1e3 * t:8.1f} ms")
        floor = med["(b) read floor"]
        for what in ("tv", "kl"):
            ours, full = med[f"{what} (ours)"], med[f"{what} (a) full"]
            print(f"  {what}: ours/(a) full = {ours / full:.2f}   ours/(b) read floor = {ours / floor:.2f}")
        for name in ("tv+kl (ours, one pass)", "tv+kl (ours, compiled)"):
            print(f"  {name} / (b) read floor = {med[name] / floor:.2f}")

    if args.quick:
        return
    print("\nPeak extra memory (resident-set growth during one call, fresh process per case)")
    for case, n in (("ours", 4096), ("ours", 512), ("full", 512)):
        m = peak_growth(case, n, 262_144)
        print(
            f"  {case:<5} N = {n:>5}, V = 262,144: extra {m['extra'] / 2**20:8.1f} MiB = "
            f"{m['extra'] / m['inputs']:.3f} x the inputs ({m['inputs'] / 2**30:.2f} GiB)"
        )


if __name__ == "__main__":
    main()
