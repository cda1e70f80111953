"""Reference of the fused tdBN + LIF (``bn_lif_fwd`` / ``bn_lif_bwd``).

Layout: ``z [T, M, C]`` with the channels last (a channels-last ``[T, B, C, H, W]``
seen as ``[T, B*H*W, C]``). BatchNorm statistics per channel over all T*M rows, then
the TT-SNN neuron (hard reset, detached reset, rectangular surrogate) over T:

    mean, var   = per-channel batch mean and biased variance (double sums;
                  var = sum(z^2)/N - mean^2), or the running statistics (eval)
    scale       = gamma / sqrt(var + eps),  shift = beta - mean * scale   (double, then cast)
    y[t]        = z[t] * scale + shift
    h[t]        = (v * decay + y[t]) + (1 - decay) * v_reset,   v = 0 before t = 0
    s[t]        = h[t] >= v_threshold;  v = v_reset where s else h
    window[t]   = |h[t] - v_threshold| < width / 2

Backward (time reversed, g = 0 after the last step):

    dy[t] = (gs[t] / width where window[t] else 0) + (0 where s[t] else g);  g = dy[t] * decay
    xhat  = (z - mean) * invstd
    dbeta = sum(dy),  dgamma = sum(dy * xhat)       (double sums)
    dz    = (dy - dbeta/N - xhat * dgamma/N) * (gamma * invstd)     (training)
    dz    = dy * (gamma * invstd)                                   (eval)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .spike_gemm import pack_spikes, unpack_spikes

__all__ = ["bn_lif_fwd", "bn_lif_bwd"]


def _ct(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stats(z, running_mean, running_var, training, eps):
    c = z.shape[-1]
    if training:
        zd = z.reshape(-1, c).double()
        n = zd.shape[0]
        mean = zd.sum(0) / n
        var = ((zd * zd).sum(0) / n - mean * mean).clamp_min(0.0)
    else:
        mean, var = running_mean.double(), running_var.double()
    invstd = 1.0 / torch.sqrt(var + eps)
    return mean, var, invstd


def bn_lif_fwd(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: Optional[torch.Tensor],
               running_var: Optional[torch.Tensor], training: bool, eps: float, decay: float, v_threshold: float,
               v_reset: float, width: float):
    """Returns ``(spikes [T, M, C], packed spikes [T, M, W], window bits [T, M, W], mean [C],
    invstd [C], var [C])`` (W = ceil(C/32), the ``snnops.pack_spikes`` layout)."""
    ct = _ct(z.dtype)
    steps, rows, c = z.shape
    mean, var, invstd = _stats(z, running_mean, running_var, training, eps)
    scale_d = weight.double() * invstd
    scale = scale_d.to(ct)
    shift = (bias.double() - mean * scale_d).to(ct)
    zc = z.to(ct)
    lam, vth, vr = torch.tensor(decay, dtype=ct), torch.tensor(v_threshold, dtype=ct), torch.tensor(v_reset, dtype=ct)
    b = torch.tensor((1.0 - decay) * v_reset, dtype=ct)
    half = torch.tensor(width / 2, dtype=ct)
    v = torch.zeros(rows, c, dtype=ct, device=z.device)
    spikes, windows = [], []
    for t in range(steps):
        y = zc[t] * scale + shift
        h = (v * lam + y) + b
        s = h >= vth
        windows.append((h - vth).abs() < half)
        spikes.append(s)
        v = torch.where(s, vr, h)
    spk = torch.stack(spikes) if steps else torch.zeros(0, rows, c, dtype=torch.bool, device=z.device)
    win = torch.stack(windows) if steps else torch.zeros_like(spk)
    spikes_f = spk.to(z.dtype)
    return (spikes_f, pack_spikes(spk.to(torch.uint8), -1), pack_spikes(win.to(torch.uint8), -1),
            mean.to(ct), invstd.to(ct), var.to(ct))


def bn_lif_bwd(grad_spikes: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
               invstd: torch.Tensor, packed: torch.Tensor, window: torch.Tensor, training: bool, decay: float,
               width: float, output_mask: Sequence[bool]):
    """Returns ``(grad_z, grad_weight, grad_bias)``; empty tensors where ``output_mask`` is False."""
    ct = _ct(z.dtype)
    steps, rows, c = z.shape
    fired = unpack_spikes(packed, c, -1, torch.bool) if packed.numel() else torch.zeros(z.shape, dtype=torch.bool)
    win = unpack_spikes(window, c, -1, torch.bool) if window.numel() else torch.zeros(z.shape, dtype=torch.bool)
    gs = grad_spikes.to(ct)
    wdt, lam = torch.tensor(width, dtype=ct), torch.tensor(decay, dtype=ct)
    zero = torch.zeros((), dtype=ct)
    g = torch.zeros(rows, c, dtype=ct, device=z.device)
    dy = torch.empty(steps, rows, c, dtype=ct, device=z.device)
    for t in reversed(range(steps)):
        gh = torch.where(win[t], gs[t] / wdt, zero) + torch.where(fired[t], zero, g)
        dy[t] = gh
        g = gh * lam
    xhat = (z.to(ct) - mean.to(ct)) * invstd.to(ct)
    dbeta = dy.reshape(-1, c).double().sum(0)
    dgamma = (dy * xhat).reshape(-1, c).double().sum(0)
    a = weight.to(ct) * invstd.to(ct)
    n = steps * rows
    if training and n:
        k1 = (dbeta / n).to(ct)
        k2 = (dgamma / n).to(ct)
        dz = (dy - k1 - xhat * k2) * a
    else:
        dz = dy * a
    empty = z.new_empty(0)
    return (dz.to(z.dtype) if output_mask[0] else empty,
            dgamma.to(weight.dtype) if output_mask[1] else weight.new_empty(0),
            dbeta.to(weight.dtype) if output_mask[2] else weight.new_empty(0))
