"""Scalar arguments of the public ops: numbers and flags, checked before they reach a
kernel as constants (``float("2")`` would turn a string into a threshold)."""
from __future__ import annotations

import math
import numbers

import numpy
import torch


def number(op: str, name: str, value, finite: bool = False) -> float:
    """``value`` as a float: a real number (not a bool), or a one-element tensor that does
    not require grad. A tensor that requires grad is refused: the fused kernels take the
    parameter as a constant, so a learnable one would silently get no gradient. With
    ``finite``, NaN and infinities are refused too."""
    value = _real(op, name, value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return value


def _real(op: str, name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{op}: {name} must be a number, got a tensor of shape {tuple(value.shape)}")
        if value.requires_grad:
            raise TypeError(f"{op}: {name} is a tensor that requires grad; the fused op takes {name} as a "
                            f"constant and would not train it")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must be a real number, got a {value.dtype} tensor")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")
    return float(value)


def integer(op: str, name: str, value) -> int:
    """``value`` as an int: an integer (numpy's, or a symbolic size under torch.compile,
    too), not a bool, a float or a string."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__}")
    return int(value)


def flag(op: str, name: str, value) -> bool:
    """``value`` as a bool: True / False (numpy's too), or 0 / 1."""
    if isinstance(value, (bool, int, numpy.bool_)) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
