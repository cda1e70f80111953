"""Reference of the fused tdBN + residual add (``bn_add_fwd`` / ``bn_add_bwd``).

Layout: ``z`` is rows ``[M, C]`` (channels last) or frames ``[..., C, H, W]``, read as
their ``H*W`` rows of ``C`` (a channels-last ``[T, B, C, H, W]`` is ``[T*B*H*W, C]``);
``y`` and ``grad_z`` have z's shape with channels-last frames. Per channel:

    mean, var   = batch mean and biased variance over all M rows (double sums;
                  var = max(sum(z^2)/M - mean^2, 0)), or the running statistics (eval)
    invstd      = 1 / sqrt(var + eps)                                       (double)
    scale       = gamma * invstd,  shift = beta - mean * scale     (double, then cast)
    y           = z * scale + shift  (+ residual)       (compute dtype: float32 / float64)

Backward (d = z - mean in the compute dtype; sums in double):

    s1 = sum(g),  s2 = sum(g * d)
    grad_bias = s1,  grad_weight = s2 * invstd
    a = gamma * invstd,  k1 = s1 / M,  k2 = s2 * invstd^2 / M      (double, then cast)
    grad_z = ((g - k1) - d * k2) * a        (training)
    grad_z = g * a                          (eval)
    grad_residual = g                       (returned by the autograd formula)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["bn_add_fwd", "bn_add_bwd"]


def _ct(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _order(dim):
    return [*range(dim - 3), dim - 2, dim - 1, dim - 3]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as rows ``[M, C]`` (a view for channels-last frames)."""
    if x.dim() == 2:
        return x
    c = x.shape[-3]
    rows = x.permute(_order(x.dim()))
    return rows.reshape(rows.numel() // c if c else rows.shape[:-1].numel(), c)


def _like(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows ``[M, C]`` back in x's shape, frames channels-last."""
    if x.dim() == 2:
        return rows.contiguous()
    d = x.dim()
    stored = rows.contiguous().reshape([x.shape[i] for i in _order(d)])
    return stored.permute(*range(d - 3), d - 1, d - 3, d - 2)


def _stats(z, running_mean, running_var, training, eps):
    if training:
        zd = z.double()
        n = zd.shape[0]
        mean = zd.sum(0) / n
        var = ((zd * zd).sum(0) / n - mean * mean).clamp_min(0.0)
    else:
        mean, var = running_mean.reshape(-1).double(), running_var.reshape(-1).double()
    invstd = 1.0 / torch.sqrt(var + eps)
    return mean, var, invstd


def _check(op, z, residual=None, **per_channel):
    if z.dim() < 2:
        raise ValueError(f"{op}: z must be rows [M, C] or frames [..., C, H, W], got shape {tuple(z.shape)}")
    if residual is not None and residual.shape != z.shape:
        raise ValueError(f"{op}: residual must have z's shape {tuple(z.shape)}, got {tuple(residual.shape)}")
    c = z.shape[1] if z.dim() == 2 else z.shape[-3]
    for name, t in per_channel.items():
        if t is not None and t.numel() != c:
            raise ValueError(f"{op}: {name} needs {c} entries (one per channel), got {t.numel()}")


def bn_add_fwd(z: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor,
               running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], training: bool,
               eps: float):
    """Returns ``(y, mean [C], invstd [C], var [C])`` (biased var; statistics in the
    compute dtype)."""
    op = "snnops.bn_add_fwd"
    _check(op, z, residual, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    ct = _ct(z.dtype)
    zr = _rows(z).to(ct)
    if training and zr.shape[0] == 0:
        raise ValueError(f"{op}: training-mode statistics need at least one value per channel, got z of shape "
                         f"{tuple(z.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: eval mode needs running_mean and running_var")
    mean, var, invstd = _stats(zr, running_mean, running_var, training, eps)
    scale_d = weight.reshape(-1).double() * invstd
    scale = scale_d.to(ct)
    shift = (bias.reshape(-1).double() - mean * scale_d).to(ct)
    y = zr * scale + shift
    if residual is not None:
        y = y + _rows(residual).to(ct)
    return _like(y.to(z.dtype), z), mean.to(ct), invstd.to(ct), var.to(ct)


def bn_add_bwd(grad_y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
               invstd: torch.Tensor, training: bool, output_mask: Sequence[bool]):
    """Returns ``(grad_z, grad_weight, grad_bias)``; empty tensors where ``output_mask``
    is False."""
    op = "snnops.bn_add_bwd"
    _check(op, z, weight=weight, mean=mean, invstd=invstd)
    if grad_y.shape != z.shape:
        raise ValueError(f"{op}: grad_y must have z's shape {tuple(z.shape)}, got {tuple(grad_y.shape)}")
    ct = _ct(z.dtype)
    g = _rows(grad_y).to(ct)
    zr = _rows(z).to(ct)
    n = zr.shape[0]
    d = zr - mean.reshape(-1).to(ct)
    s1 = g.double().sum(0)
    s2 = (g * d).double().sum(0)
    ist = invstd.reshape(-1).to(ct).double()
    grad_z = z.new_empty(0)
    if output_mask[0]:
        a = (weight.reshape(-1).double() * ist).to(ct)
        if training and n:
            k1 = (s1 / n).to(ct)
            k2 = (s2 * ist * ist / n).to(ct)
            dz = ((g - k1) - d * k2) * a
        else:
            dz = g * a
        grad_z = _like(dz.to(z.dtype), z)
    return (grad_z,
            (s2 * ist).to(weight.dtype) if output_mask[1] else weight.new_empty(0),
            s1.to(weight.dtype) if output_mask[2] else weight.new_empty(0))
