"""What the fused tdBN ops (``bn_lif``, ``bn_add``) share: their BatchNorm arguments'
checks and the running statistics' update, as ``nn.BatchNorm2d`` does both."""
from __future__ import annotations

from typing import Optional

import torch

from ._params import flag, number


def shape_of(t) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def stat_dtype(z: torch.Tensor) -> torch.dtype:
    """The statistics' dtype: float64 for float64 input, else float32."""
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def values_per_channel(z_seq: torch.Tensor) -> int:
    """T * B * H * W: what a channel's statistics run over."""
    t, b, _, h, w = z_seq.shape
    return t * b * h * w


def check_batch_norm(op: str, z_seq, weight, bias, running_mean, running_var, training: bool, momentum: float,
                     eps: float) -> tuple:
    """z_seq a float32/float64 ``[T, B, C, H, W]``; weight, bias ``[C]``; running
    statistics ``[C]`` (or None in training mode); enough values per channel for
    training statistics; momentum in [0, 1]; eps >= 0 (each test fails on NaN too).
    Returns ``(training, momentum, eps)`` as a bool and floats."""
    training = flag(op, "training", training)
    if not isinstance(z_seq, torch.Tensor) or z_seq.dim() != 5:
        raise ValueError(f"{op}: z must be a [T, B, C, H, W] tensor, got {shape_of(z_seq)}")
    if z_seq.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: z must be float32 or float64, got {z_seq.dtype}")
    c = z_seq.shape[2]
    for name, t in (("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (c,):
            raise ValueError(f"{op}: {name} must be a [{c}] tensor (one per channel), got {shape_of(t)}")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            if not training:
                raise ValueError(f"{op}: eval mode needs {name} of shape [{c}]")
        elif not isinstance(t, torch.Tensor) or tuple(t.shape) != (c,):
            raise ValueError(f"{op}: {name} must be a [{c}] tensor or None, got {shape_of(t)}")
    if training and values_per_channel(z_seq) < 2:
        raise ValueError(f"{op}: training-mode statistics need more than one value per channel, got input "
                         f"shape {tuple(z_seq.shape)}")
    if momentum is None:  # nn.BatchNorm2d's cumulative average
        raise ValueError(f"{op}: momentum must be a number in [0, 1]; None (a cumulative average) is not supported")
    momentum, eps = number(op, "momentum", momentum), number(op, "eps", eps)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{op}: momentum must be in [0, 1], got {momentum}")
    if not eps >= 0.0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    return training, momentum, eps


def update_running_stats(running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                         mean: torch.Tensor, var: torch.Tensor, z_seq: torch.Tensor, momentum: float) -> None:
    """Exponential running averages in place; the variance unbiased over the values per
    channel of z_seq."""
    if running_mean is None or running_var is None:
        return
    n = values_per_channel(z_seq)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(var.to(running_var.dtype) * (n / max(n - 1, 1)), alpha=momentum)
