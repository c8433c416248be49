"""Device selection for policies and trainers: one flag, ``cpu | cuda | auto``.

``auto`` means CUDA when ``torch.cuda.is_available()``, otherwise CPU. Every trainer runs the same code on
either device; only autocast (bf16 on CUDA, opt-in) differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["DEVICE_CHOICES", "autocast", "resolve_device"]

DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the torch device named by ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``).

    ``"auto"`` picks ``cuda`` when a CUDA device is present, else ``cpu``. Asking for ``cuda`` without one
    raises ``ValueError``.
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise TypeError(f"device must be a str ('cpu', 'cuda' or 'auto'), got {type(device).__name__}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} asks for CUDA but torch.cuda.is_available() is False; use 'cpu' or 'auto'"
            )
        return torch.device(name)
    raise ValueError(f"device must be one of {DEVICE_CHOICES} (or 'cuda:N'), got {device!r}")


@contextlib.contextmanager
def autocast(device: torch.device, bf16: bool) -> Iterator[None]:
    """bf16 autocast on CUDA when ``bf16`` is True; a no-op otherwise (CPU always computes in float32)."""
    if bf16 and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
