"""LitE-SNN weight compression: the Gaussian-step symmetric quantizer and the learned
top-k pruning mask (METHODS.md section 3).

Quantizer ``Q_b`` with ``2^b`` levels, step ``c_b * std(W)``::

    Q_b(w) = clamp((round(w / step + 0.5) - 0.5) * step, -(2^b/2 - 0.5) * step, +(2^b/2 - 0.5) * step)

Its levels are the odd multiples of ``step / 2``: ``(2c - 1) * step / 2`` for integer
``c`` in ``[1 - 2^(b-1), 2^(b-1)]``. ``torch.round`` rounds halves to even, so a
weight exactly on a level boundary (``w / step`` an integer) may go either way; the
quantizer is defined by that formula, ties included.

Both the quantizer and the mask pass gradients straight through; the functions here
are pure PyTorch and compose with autograd and torch.compile.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

# Half-wave Gaussian quantizer steps, in units of std(W) (Cai et al. 2017, as LitE-SNN uses them).
GAUSSIAN_STEPS = {1: 1.596, 2: 0.996, 3: 0.586, 4: 0.336}

__all__ = [
    "GAUSSIAN_STEPS", "check_bits", "check_keep_ratio", "gaussian_step", "quantize",
    "quantize_ste", "quantize_codes", "dequantize_codes", "num_kept", "topk_mask", "topk_mask_ste",
    "mixed_bits",
]


def check_bits(bits) -> tuple[int, ...]:
    """Validate a candidate bit-width list: non-empty, distinct, each in ``GAUSSIAN_STEPS``."""
    if isinstance(bits, int):
        bits = (bits,)
    try:
        bits = tuple(bits)
    except TypeError:
        raise TypeError(f"bits: expected a sequence of bit-widths, got {bits!r}") from None
    if len(bits) == 0:
        raise ValueError("bits: the candidate bit-width list is empty; give at least one of "
                         f"{sorted(GAUSSIAN_STEPS)}")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or b not in GAUSSIAN_STEPS:
            raise ValueError(f"bits: each bit-width must be one of {sorted(GAUSSIAN_STEPS)}, got {b!r}")
    if len(set(bits)) != len(bits):
        raise ValueError(f"bits: bit-widths must be distinct, got {bits}")
    return bits


def check_keep_ratio(keep_ratio) -> float:
    """The fraction of weights a mask keeps: a number in ``(0, 1]``."""
    try:
        k = float(keep_ratio)
    except (TypeError, ValueError):
        raise TypeError(f"keep_ratio: expected a number in (0, 1], got {keep_ratio!r}") from None
    if not (0.0 < k <= 1.0):
        raise ValueError(f"keep_ratio: must be in (0, 1] (the fraction of weights kept), got {keep_ratio}")
    return k


def gaussian_step(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``c_b * std(W)`` over all of ``W`` (unbiased std, as the authors' code), detached,
    as a 0-dim tensor. A constant ``W`` (std 0) gets a tiny positive step so that the
    quantizer stays finite."""
    if bits not in GAUSSIAN_STEPS:
        raise ValueError(f"bits: must be one of {sorted(GAUSSIAN_STEPS)}, got {bits!r}")
    w = weight.detach()
    std = w.std() if w.numel() > 1 else w.new_zeros(())
    return (GAUSSIAN_STEPS[bits] * std).clamp_min(torch.finfo(w.dtype).tiny)


def quantize(weight: torch.Tensor, bits: int, step=None) -> torch.Tensor:
    """``Q_b(W)`` (no gradient path; see :func:`quantize_ste`). ``step`` defaults to
    :func:`gaussian_step`."""
    if step is None:
        step = gaussian_step(weight, bits)
    limit = (2 ** bits / 2 - 0.5) * step
    q = (torch.round(weight / step + 0.5) - 0.5) * step
    return torch.minimum(torch.maximum(q, -limit), limit)


def quantize_ste(weight: torch.Tensor, bits: int, step=None) -> torch.Tensor:
    """``Q_b(W)`` in the forward pass, identity gradient to ``W`` (straight through)."""
    q = quantize(weight.detach(), bits, step)
    return weight + (q - weight).detach()


def quantize_codes(weight: torch.Tensor, bits: int, step=None):
    """Integer form of ``Q_b``: ``(codes, step)`` with ``Q_b(W) = (codes - 0.5) * step``,
    ``codes`` int8 in ``[1 - 2^(b-1), 2^(b-1)]``."""
    if step is None:
        step = gaussian_step(weight, bits)
    half = 2 ** (bits - 1)
    codes = torch.round(weight.detach() / step + 0.5).clamp(1 - half, half)
    return codes.to(torch.int8), step


def dequantize_codes(codes: torch.Tensor, step, dtype=torch.float32) -> torch.Tensor:
    return (codes.to(dtype) - 0.5) * step


def num_kept(numel: int, keep_ratio: float) -> int:
    """How many of ``numel`` weights a mask with ``keep_ratio`` keeps:
    ``round(keep_ratio * numel)``, at least 1 (for a non-empty layer)."""
    if numel == 0:
        return 0
    return min(numel, max(1, int(math.floor(keep_ratio * numel + 0.5))))


def topk_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """0/1 mask (dtype of ``scores``) keeping exactly ``num_kept(numel, keep_ratio)``
    entries with the largest ``|score|`` (unstructured, over the whole tensor; among
    equal scores the choice is the one ``torch.topk`` makes)."""
    keep_ratio = check_keep_ratio(keep_ratio)
    flat = scores.detach().reshape(-1).abs()
    n = num_kept(flat.numel(), keep_ratio)
    mask = torch.zeros_like(flat)
    if n == flat.numel():
        mask.fill_(1)
    elif n > 0:
        mask.scatter_(0, torch.topk(flat, n, sorted=False).indices, 1.0)
    return mask.view(scores.shape)


def topk_mask_ste(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """:func:`topk_mask` in the forward pass; the gradient of the mask goes straight
    through to ``|score|`` (so, to ``score``, times its sign: growing a kept score's
    magnitude is what keeps it)."""
    mag = scores.abs()
    return topk_mask(scores, keep_ratio) + (mag - mag.detach())


def mixed_bits(beta: torch.Tensor, bits: Sequence[int]) -> torch.Tensor:
    """``b_bar = sum_j softmax(beta)_j * b_j`` (differentiable in ``beta``)."""
    return (torch.softmax(beta, 0) * beta.new_tensor([float(b) for b in bits])).sum()
