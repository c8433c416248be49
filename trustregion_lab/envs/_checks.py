"""Argument checks shared by the environment modules: each error names the argument and the expected form.

Plain numbers use the package-wide checks of ``trustregion_lab._validate``; ``check_token_action`` reads an action.
"""

from __future__ import annotations

import numpy as np

from trustregion_lab._validate import check_int, check_probability

__all__ = ["check_int", "check_probability", "check_token_action"]


def check_token_action(action: object, vocab_size: int, name: str = "action") -> int:
    """A single token id in [0, vocab_size) as an int.

    Accepts a Python or numpy int, or a 0-d integer array or tensor (anything numpy reads as one, e.g. a CPU torch
    tensor, as the vector env does). TypeError for other kinds (bools and floats included), ValueError out of range.
    """
    value = action
    if not isinstance(value, int | np.integer) and (
        isinstance(value, np.ndarray) or hasattr(value, "__array__")
    ):
        try:
            array = np.asarray(value)
        except (TypeError, RuntimeError, ValueError) as error:
            raise TypeError(
                f"{name} must be an int token id in [0, {vocab_size}), got {action!r}: {error}"
            ) from None
        if array.shape != ():
            raise TypeError(
                f"{name} must be a single int token id in [0, {vocab_size}) (0-d), got shape {array.shape}"
            )
        value = array[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int token id in [0, {vocab_size}), got {type(action).__name__}")
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {value}")
    return int(value)
