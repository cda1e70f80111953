"""Reference of bit-packed spikes and the spike GEMMs (and of their ops).

Packed-spike layout: packing along feature dim ``dim`` (size K) moves that dim last
and replaces it by ceil(K/32) int32 words; feature k is bit k % 32 of word k // 32,
least significant bit first; the unused high bits of the last word are 0.
"""
from __future__ import annotations

from typing import Optional

import torch

from .bits import pack_bits_flat, unpack_bits_flat

__all__ = ["packed_words", "pack_spikes", "unpack_spikes", "spike_gemm", "spike_gemm_packed",
           "spike_gemm_bwd", "spike_gemm_lowbit", "spike_linear", "spike_conv1x1", "lowbit_dequantize"]


def packed_words(features: int) -> int:
    return (features + 31) // 32


def _unpack(packed: torch.Tensor, features: int) -> torch.Tensor:
    """bool ``[..., features]`` from words ``[..., ceil(features/32)]`` (also for empty tensors)."""
    if packed.numel() == 0:
        return torch.zeros(*packed.shape[:-1], features, dtype=torch.bool, device=packed.device)
    return unpack_bits_flat(packed, features)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_binary(spikes: torch.Tensor, op: str) -> None:
    bad = ~((spikes == 0) | (spikes == 1))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise RuntimeError(f"{op}: spikes must hold only 0 or 1, found {float(spikes[idx])} at index {idx}")


def pack_spikes(spikes: torch.Tensor, dim: int) -> torch.Tensor:
    """0/1 values ``[..., K, ...]`` (K at ``dim``) -> int32 words ``[..., ceil(K/32)]``."""
    _check_binary(spikes, "snnops.pack_spikes")
    return pack_bits_flat(spikes.movedim(dim, -1) != 0).contiguous()


def unpack_spikes(packed: torch.Tensor, features: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_spikes`; ``dim`` is the feature dim of the result."""
    if packed.shape[-1] != packed_words(features):
        raise RuntimeError(f"snnops.unpack_spikes: packed has {packed.shape[-1]} words but {features} features "
                           f"need {packed_words(features)}")
    bits = _unpack(packed, features).to(dtype)
    return bits.movedim(-1, dim).contiguous()


def spike_gemm(spikes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dim: int):
    """``(S W^T + b, packed S)`` with S = spikes with ``dim`` moved last."""
    packed = pack_spikes(spikes, dim)
    ct = _compute_dtype(weight.dtype)
    s = spikes.movedim(dim, -1).to(ct)
    out = torch.nn.functional.linear(s, weight.to(ct), None if bias is None else bias.to(ct))
    return out.to(weight.dtype), packed


def spike_gemm_packed(packed: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      spikes: Optional[torch.Tensor] = None, dim: int = -1) -> torch.Tensor:
    """``S W^T + b`` from packed S ``[..., ceil(K/32)]`` (``spikes``/``dim`` only route gradients)."""
    ct = _compute_dtype(weight.dtype)
    s = _unpack(packed, weight.shape[1]).to(ct)
    out = torch.nn.functional.linear(s, weight.to(ct), None if bias is None else bias.to(ct))
    return out.to(weight.dtype)


def spike_gemm_bwd(grad_out: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, need_spikes: bool,
                   need_weight: bool, need_bias: bool):
    """``(dS = dY W [..., K], dW = dY^T S [N, K], db = sum dY [N])``; empty when not needed."""
    n, k = weight.shape
    ct = _compute_dtype(weight.dtype)
    rows = packed.shape[:-1]
    g = grad_out.reshape(-1, n).to(ct)
    w = weight.to(ct)
    empty = weight.new_empty(0)
    gs = (g @ w).reshape(*rows, k).to(weight.dtype) if need_spikes else empty
    if need_weight:
        s = _unpack(packed.reshape(-1, packed.shape[-1]), k).to(ct)
        gw = (g.t() @ s).to(weight.dtype)
    else:
        gw = empty.clone()
    gb = g.sum(0).to(weight.dtype) if need_bias else empty.clone()
    return gs, gw, gb


def lowbit_dequantize(planes: torch.Tensor, scale: torch.Tensor, bits: int, features: int,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Weights ``(2 code - (2^bits - 1)) * scale``, 0 where the keep-mask is 0, from bit-planes."""
    codes = torch.zeros(planes.shape[0], features, dtype=torch.int64, device=planes.device)
    for j in range(bits):
        codes += _unpack(planes[:, j], features).to(torch.int64) << j
    keep = _unpack(planes[:, bits], features)
    levels = (2 * codes - (2 ** bits - 1)) * keep
    s = scale.to(dtype).reshape(-1, 1) if scale.numel() != 1 else scale.to(dtype).reshape(())
    return levels.to(dtype) * s


def spike_gemm_lowbit(packed: torch.Tensor, planes: torch.Tensor, scale: torch.Tensor,
                      bias: Optional[torch.Tensor], bits: int) -> torch.Tensor:
    """``S W^T + b`` for the low-bit weight of :func:`lowbit_dequantize`, in float64 (exact:
    every product and partial sum is an integer times the scale), rounded once."""
    features = packed.shape[-1] * 32
    w = lowbit_dequantize(planes, scale, bits, features)
    s = _unpack(packed, features).to(torch.float64)
    out = s @ w.t()
    if bias is not None:
        out = out + bias.to(torch.float64)
    return out.to(torch.float64 if scale.dtype == torch.float64 else torch.float32)


def spike_linear(spikes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What :func:`snnops.spike_linear` computes, as a dense linear layer on float spikes."""
    return torch.nn.functional.linear(spikes.to(weight.dtype), weight, bias)


def spike_conv1x1(spikes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride=1) -> torch.Tensor:
    """What :func:`snnops.spike_conv1x1` computes, as a dense 1x1 convolution on ``[..., C, H, W]``."""
    lead = spikes.shape[:-3]
    x = spikes.reshape(-1, *spikes.shape[-3:]).to(weight.dtype)
    w = weight.reshape(weight.shape[0], -1, 1, 1)
    y = torch.nn.functional.conv2d(x, w, bias, stride=stride)
    return y.reshape(*lead, *y.shape[1:])
