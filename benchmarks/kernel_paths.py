"""Which settings change the bits of a transformer run on this CPU (a reproducibility probe, not a timing).

Each setting runs the same seeded job in a fresh process: the sequence trainer's transformer (V = 2,000, d_model
128, 2 layers, 4 heads, d_ff 512) takes 50 Adam steps (lr 1e-4) of next-token cross-entropy on fixed random
batches of 32 × 40 tokens, then gives the log-probs `[16, 39, 2000]` of a fixed batch; one torch thread. Printed
per setting: the CPU capability torch dispatches to, and max / mean |Δ log p| against the baseline run.

Settings: the baseline twice (run-to-run reproducibility), ``torch.use_deterministic_algorithms(True)``,
``ATEN_CPU_CAPABILITY`` = avx2 / default (torch's own vectorised kernels), ``MKL_CBWR`` = COMPATIBLE / AVX2
(MKL's code path). A setting that changes bits on one machine shows a place where two CPU models can differ; a
setting that changes none may be the path this CPU already takes. One machine cannot show that a setting makes
two CPU models agree.

Run: ``.venv/bin/python benchmarks/kernel_paths.py`` (about 10 s of CPU per setting).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STEPS, VOCAB, BATCH, LENGTH = 50, 2_000, 32, 40

SETTINGS: dict[str, tuple[dict[str, str], bool]] = {
    "baseline": ({}, False),
    "baseline, again": ({}, False),
    "torch.use_deterministic_algorithms(True)": ({}, True),
    "ATEN_CPU_CAPABILITY=avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, False),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, False),
    "MKL_CBWR=COMPATIBLE": ({"MKL_CBWR": "COMPATIBLE"}, False),
    "MKL_CBWR=AVX2": ({"MKL_CBWR": "AVX2"}, False),
}


def job(out: str, deterministic: bool) -> None:
    """The seeded job (runs in a child process); writes the final log-probs to ``out`` (.npy)."""
    import torch

    from trustregion_lab.policies import DecoderTransformer, TransformerConfig

    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DecoderTransformer(TransformerConfig(vocab_size=VOCAB, max_seq_len=48))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        tokens = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        probe = torch.randint(0, VOCAB, (16, LENGTH), generator=generator)
        log_p = torch.log_softmax(model(probe[:, :-1]), dim=-1).double().numpy()
    np.save(out, log_p)
    print(torch.backends.cpu.get_cpu_capability())


def main() -> None:
    results: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (env, deterministic) in SETTINGS.items():
            out = str(Path(folder) / f"{len(results)}.npy")
            command = [sys.executable, __file__, "--job", out, str(int(deterministic))]
            done = subprocess.run(
                command, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(f"{name}: the job failed\n{done.stderr}")
            results[name] = np.load(out)
            base = results["baseline"]
            delta = np.abs(results[name] - base)
            print(
                f"{name:42s} capability {done.stdout.strip():8s} max |Δ log p| {delta.max():.3g}  "
                f"mean {delta.mean():.3g}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--job":
        job(sys.argv[2], bool(int(sys.argv[3])))
    else:
        main()
