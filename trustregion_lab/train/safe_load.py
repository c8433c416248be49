"""Reading the package's own torch files without running code from disk.

Checkpoints, the warm-start cache and the prompt-pool cache hold tensors and plain types only (dicts, lists,
tuples, str, int, float, bool, None) and are read with ``torch.load(weights_only=True)``, whose unpickler builds
nothing else: a file planted in ``--checkpoint-dir`` or a shared ``--cache-dir`` holding a pickled object (whose
``__reduce__`` would call arbitrary code) is refused before anything in it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnsafeFileError", "safe_torch_load"]


class UnsafeFileError(ValueError):
    """A torch file that holds more than tensors and plain types; it was refused and nothing in it ran."""


def safe_torch_load(path: str | Path, *, what: str, error: type[Exception] = ValueError) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors naming ``what`` (e.g.
    "checkpoint"): ``UnsafeFileError`` for a file holding anything but tensors and plain types, ``error`` for a
    file that is truncated or no torch file at all."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # the unpickler met a class or function it does not allow
            raise UnsafeFileError(
                f"{what} {path} holds more than tensors and plain types (a pickled object that could run code "
                "when loaded): refused, nothing in it was run; delete it if you did not write it"
            ) from None
        raise error(
            f"{what} {path} is not a trustregion_lab {what} or is truncated (refused by the weights-only "
            "unpickler, nothing in it was run); delete it"
        ) from None
    except Exception as exc:  # truncated zip, garbage, ...
        raise error(
            f"{what} {path} is not a trustregion_lab {what} or is truncated ({type(exc).__name__}); delete it"
        ) from None
