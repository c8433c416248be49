"""Array plumbing shared by the numerics modules: numpy/torch in, the same kind out; input validation.

Every public numerics function accepts torch tensors or numpy arrays. Internally everything is a torch tensor on
the input's device. `Converter` remembers what the caller passed so results go back as the same kind (numpy in,
numpy out), on the same device, in the input's float dtype (the wider one when two float inputs differ) unless the
caller asks for another (`Converter(dtype=...)`). Computation happens in float32, or float64 when a float64 input is
present or float64 output is asked for ("float32 or better").
Tensors that require grad are validated on a detached view, so checks never warn about it or touch the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """None, or one of torch.float16/bfloat16/float32/float64 (TypeError otherwise, naming the argument)."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in _FLOAT_DTYPES):
        return dtype
    raise TypeError(
        f"{name} must be None or a torch floating dtype (torch.float16, torch.bfloat16, torch.float32, "
        f"torch.float64), got {dtype!r}"
    )


class Converter:
    """Converts a call's inputs to torch and its outputs back to what the caller passed.

    One instance per call. `tensor()` registers an input: torch tensors must all live on one device; numpy arrays
    are moved to that device. The output is numpy when every array input was numpy, else torch. `dtype` (None or
    a torch float dtype, validated) overrides the float dtype of the results; `input_dtype` stays the inputs' own.
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.saw_torch = False
        self.saw_numpy = False
        self.device: torch.device | None = None
        self.input_dtype: torch.dtype | None = None
        self.requested_dtype = check_float_dtype(dtype)

    def tensor(self, x: Any, name: str, *, kind: str = "float") -> torch.Tensor:
        """Return `x` as a torch tensor. kind: "float" (floating point), "int" (integer ids) or "bool"."""
        if isinstance(x, torch.Tensor):
            t = x
            if self.device is not None and t.device != self.device:
                raise ValueError(
                    f"{name} is on device {t.device} but other inputs are on {self.device}; "
                    "move all tensors to one device"
                )
            self.device = t.device
            self.saw_torch = True
            given = str(t.dtype)
        elif isinstance(x, np.ndarray | np.generic):
            arr = np.asarray(x)
            if arr.dtype == object or not (
                np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
            ):
                raise TypeError(
                    f"{name} must be a numeric numpy array or torch tensor, got dtype {arr.dtype}"
                )
            # np.ascontiguousarray would turn a 0-d array into shape (1,); copy only when strides demand it
            t = torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy(order="C"))
            self.saw_numpy = True
            given = f"numpy {arr.dtype}"  # as the caller passed it, not torch's name for it
        else:
            raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")

        if kind == "float":
            if t.dtype not in _FLOAT_DTYPES:
                raise TypeError(
                    f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {given}"
                )
            self.input_dtype = (
                t.dtype if self.input_dtype is None else torch.promote_types(self.input_dtype, t.dtype)
            )
        elif kind == "int":
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer array of token ids, got dtype {given}")
            t = t.long()
        elif kind == "bool":
            if t.dtype.is_complex:
                raise TypeError(f"{name} must be a boolean (or 0/1) mask, got dtype {given}")
            if t.dtype != torch.bool:
                if bool(((t != 0) & (t != 1)).any()):
                    raise ValueError(f"{name} must hold only 0/1 (or True/False) values")
                t = t.bool()
        else:  # pragma: no cover - programming error
            raise AssertionError(kind)
        return t

    def adopt_device(self, *values: Any) -> None:
        """Take the device of the first torch tensor among optional inputs (None allowed), so numpy inputs
        registered before it are placed there too. Counts as a torch input for the output kind."""
        for v in values:
            if isinstance(v, torch.Tensor):
                if self.device is None:
                    self.device = v.device
                self.saw_torch = True
                return

    def place(self, t: torch.Tensor) -> torch.Tensor:
        """Move a registered tensor to the call's device (numpy-born tensors start on the CPU)."""
        return t if self.device is None or t.device == self.device else t.to(self.device)

    @property
    def out_dtype(self) -> torch.dtype | None:
        """The float dtype of the results: the requested one, else the (promoted) float dtype of the inputs."""
        return self.requested_dtype if self.requested_dtype is not None else self.input_dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 when an input or the result is float64, else float32."""
        return torch.float64 if torch.float64 in (self.input_dtype, self.requested_dtype) else torch.float32

    def out(self, t: torch.Tensor) -> ArrayLike:
        """Return a float result as the caller's kind and float dtype."""
        if t.dtype.is_floating_point and self.out_dtype is not None:
            t = t.to(self.out_dtype)
        return self.out_raw(t)

    def out_raw(self, t: torch.Tensor) -> ArrayLike:
        """Return a result (any dtype, e.g. bool) as the caller's kind without changing its dtype."""
        if self.saw_torch:
            return t
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        return t.numpy()


# the toolkit's logit for a token a sampler excluded (top-k / top-p); trustregion_lab.mismatch.EXCLUDED_LOGIT
_EXCLUDED_LOGIT_TEXT = "-1e4 (trustregion_lab.mismatch.EXCLUDED_LOGIT)"


def check_finite(t: torch.Tensor, name: str) -> None:
    """ValueError unless every value is finite; −inf logits (a top-k/top-p truncation's way to exclude tokens)
    get a pointer to the toolkit's convention: excluded tokens carry the finite logit EXCLUDED_LOGIT."""
    t = t.detach()
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        hint = ""
        if name.endswith("logits") and bool((t == -torch.inf).any()):
            hint = (
                f"; -inf logits (tokens a top-k/top-p sampler excluded) are not accepted: give excluded tokens "
                f"the finite logit {_EXCLUDED_LOGIT_TEXT}, the toolkit's convention (docs/design.md §4)"
            )
        raise ValueError(f"{name} must be finite; found {n_bad} NaN/inf value(s){hint}")


def logprob_tolerance(dtype: torch.dtype) -> float:
    """Largest positive value a log-probability may take from rounding (32 ulps of 1 in its dtype)."""
    return 32.0 * torch.finfo(dtype).eps


def check_logprobs(t: torch.Tensor, name: str) -> torch.Tensor:
    """Validate log-probabilities (finite, <= 0 up to rounding) and clamp rounding-level positives to 0.

    The checks read a detached view (no warning for a tensor that requires grad); the returned tensor keeps the
    caller's autograd graph.
    """
    check_finite(t, name)
    tol = logprob_tolerance(t.dtype)
    largest = float(t.detach().max()) if t.numel() else 0.0
    if largest > tol:
        raise ValueError(
            f"{name} must be log-probabilities (<= 0); max value is {largest:.3g}. "
            "Pass log-softmax outputs, not logits or probabilities"
        )
    return t.clamp(max=0.0)


def check_threshold(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
