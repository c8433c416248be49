"""Atomic file writes: every file the package writes goes to a temporary file in the target folder, is flushed
to disk, given the permissions the umask allows (0666 & ~umask, like ``open``) and renamed onto the target.
A process killed at any moment leaves either the old file or the complete new one, never half a file.

Errors carry the path: a full disk raises ``OSError`` (errno ENOSPC) from the write, and the temporary file is
removed in every case.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "TMP_SUFFIX",
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_text",
    "atomic_write_with",
    "check_writable_folder",
    "remove_stale_temporaries",
]

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """``with atomic_open(path, "w" | "wb") as handle: ...`` writes ``path`` atomically (module docstring).

    The parent folder is created. On any exception inside the block the target is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_csv(path: str | os.PathLike, table: Any, float_format: str | None = None) -> None:
    """Write a pandas DataFrame to ``path`` as CSV (no index) atomically; ``float_format`` (e.g. ``"%.10g"``)
    as in ``DataFrame.to_csv`` (None: the shortest repr that reads back exactly)."""
    with atomic_open(path, "w") as handle:
        table.to_csv(handle, index=False, float_format=float_format)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """For writers that take a file name (e.g. ``Figure.savefig``): ``write(tmp_name)``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete temporaries a killed writer left in ``folder`` (``.<name>.*.tmp``)."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f".*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                stale.unlink()


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """ValueError unless ``path`` is (or can be created as) a folder this process can write into.

    The nearest existing folder on the way to ``path`` is probed by creating and removing a temporary file, so
    permissions, read-only file systems and access rules are all seen as a real write would see them. ``what``
    names the argument in the message (e.g. "--out").
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = f"{path} is a file" if probe == path else f"{path}: {probe} is a file"
        raise ValueError(f"{what} {where}, expected a folder")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".write-check.", suffix=TMP_SUFFIX)
    except OSError as exc:
        target = "" if probe == path else f" (it would be created in {probe})"
        raise ValueError(f"{what} {path}{target}: cannot write there ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)
