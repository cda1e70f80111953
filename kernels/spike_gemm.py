"""Triton kernels of the packed-spike ops on CUDA tensors: pack/unpack, ``Y = S W^T + b``
from packed spikes, and ``dW = dY^T S``.

Spike words are unpacked in registers into a [rows, 32] tile of 0/1 and fed to
``tl.dot``: 0/1 is exact in fp16/bf16/tf32, so with fp16/bf16 weights the products
run on tensor cores (exactly, see ``_dot_type``) with fp32 accumulation; fp32 weights
use ``input_precision="ieee"``
(no tf32 rounding); float64 is not handled here (the op layer runs its reference). Layout of packed spikes: see
``snnops/ops/pack.py`` (feature dim moved last, ceil(K/32) int32 words, LSB first).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


BLOCK_POS = 64   # positions per pack/unpack program
BLOCK_M = 32     # GEMM rows per program
BLOCK_N = 32     # GEMM columns per program



def packed_words(features: int) -> int:
    return (features + 31) // 32


def _raise_non_binary(spikes: torch.Tensor) -> None:
    bad = ~((spikes == 0) | (spikes == 1))
    idx = tuple(int(i) for i in bad.nonzero()[0])
    raise RuntimeError(f"snnops.pack_spikes: spikes must hold only 0 or 1, found {float(spikes[idx])} at index {idx}")


# ---------------------------------------------------------------------------- pack / unpack

@triton.jit
def _pack_kernel(x_ptr, out_ptr, err_ptr, P, K, NW, inner, s_o, s_k, s_i,
                 BLOCK: tl.constexpr):
    # positions p = o * inner + i; value (p, k) at o * s_o + k * s_k + i * s_i
    pid = tl.program_id(0).to(tl.int64)  # positions may pass 2^31
    w = tl.program_id(1)
    pos = pid * BLOCK + tl.arange(0, BLOCK)
    lanes = tl.arange(0, 32)
    k = w * 32 + lanes
    o = pos // inner
    i = pos % inner
    m = (pos < P)[:, None] & (k < K)[None, :]
    v = tl.load(x_ptr + o[:, None].to(tl.int64) * s_o + k[None, :].to(tl.int64) * s_k
                + i[:, None].to(tl.int64) * s_i, mask=m, other=0.0).to(tl.float32)
    bad = m & (v != 0.0) & (v != 1.0)
    nbad = tl.sum(tl.where(bad, 1, 0), axis=1)
    tl.atomic_max(err_ptr, tl.max(nbad, axis=0))
    bits = tl.where(v == 1.0, 1, 0).to(tl.int64) << lanes[None, :].to(tl.int64)
    words = tl.sum(bits, axis=1).to(tl.uint32, bitcast=False).to(tl.int32, bitcast=True)
    tl.store(out_ptr + pos.to(tl.int64) * NW + w, words, mask=pos < P)


@triton.jit
def _unpack_kernel(p_ptr, out_ptr, P, K, NW, inner, s_o, s_k, s_i, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # positions may pass 2^31
    w = tl.program_id(1)
    pos = pid * BLOCK + tl.arange(0, BLOCK)
    lanes = tl.arange(0, 32)
    k = w * 32 + lanes
    o = pos // inner
    i = pos % inner
    words = tl.load(p_ptr + pos.to(tl.int64) * NW + w, mask=pos < P, other=0)
    bits = (words[:, None] >> lanes[None, :]) & 1
    m = (pos < P)[:, None] & (k < K)[None, :]
    tl.store(out_ptr + o[:, None].to(tl.int64) * s_o + k[None, :].to(tl.int64) * s_k
             + i[:, None].to(tl.int64) * s_i, bits.to(out_ptr.dtype.element_ty), mask=m)


def _outer_inner(shape, dim):
    outer = 1
    for s in shape[:dim]:
        outer *= s
    inner = 1
    for s in shape[dim + 1:]:
        inner *= s
    return outer, inner


def pack_spikes(spikes: torch.Tensor, dim: int) -> torch.Tensor:
    dim = dim % spikes.dim()
    k = spikes.shape[dim]
    nw = packed_words(k)
    rows = [s for d, s in enumerate(spikes.shape) if d != dim]
    out = torch.empty((*rows, nw), dtype=torch.int32, device=spikes.device)
    if out.numel() == 0:
        return out
    x = spikes
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    outer, inner = _outer_inner(x.shape, dim)
    if x.movedim(dim, -1).is_contiguous():  # features of a position contiguous
        s_o, s_k, s_i = inner * k, 1, k
    else:
        x = x.contiguous()
        s_o, s_k, s_i = k * inner, inner, 1
    err = torch.zeros(1, dtype=torch.int32, device=x.device)
    positions = outer * inner
    grid = (triton.cdiv(positions, BLOCK_POS), nw)
    _pack_kernel[grid](x, out, err, positions, k, nw, inner, s_o, s_k, s_i, BLOCK=BLOCK_POS)
    if int(err.item()):
        _raise_non_binary(spikes)
    return out


def unpack_spikes(packed: torch.Tensor, features: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    nd = packed.dim()
    dim = dim % nd
    shape = list(packed.shape[:-1])
    shape.insert(dim, features)
    out = torch.empty(shape, dtype=dtype, device=packed.device)
    if out.numel() == 0:
        return out
    outer, inner = _outer_inner(shape, dim)
    p = packed.contiguous()
    nw = packed.shape[-1]
    positions = outer * inner
    grid = (triton.cdiv(positions, BLOCK_POS), nw)
    target = out if dtype != torch.bool else torch.empty(shape, dtype=torch.uint8, device=packed.device)
    _unpack_kernel[grid](p, target, positions, features, nw, inner, features * inner, inner, 1, BLOCK=BLOCK_POS)
    return target if dtype != torch.bool else target.bool()


# ---------------------------------------------------------------------------- GEMMs

@triton.jit
def _spikes_tile(p_ptr, rows, w, R, NW, DOT: tl.constexpr):
    # [len(rows), 32] 0/1 tile of word w of the given packed rows
    words = tl.load(p_ptr + rows.to(tl.int64) * NW + w, mask=rows < R, other=0)
    lanes = tl.arange(0, 32)
    return ((words[:, None] >> lanes[None, :]) & 1).to(tl.float32).to(DOT)


@triton.jit
def _fwd_kernel(p_ptr, w_ptr, b_ptr, y_ptr, R, N, K, NW, s_wn, s_wk,
                HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr):
    # Y[m, n] = sum_k S[m, k] W[n, k] + b[n], one word (32 features) per step
    pid_m = tl.program_id(0).to(tl.int64)  # rows may pass 2^31
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    lanes = tl.arange(0, 32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for w in range(0, NW):
        s = _spikes_tile(p_ptr, rm, w, R, NW, DOT)
        k = w * 32 + lanes
        wt = tl.load(w_ptr + rn[None, :].to(tl.int64) * s_wn + k[:, None].to(tl.int64) * s_wk,
                     mask=(k < K)[:, None] & (rn < N)[None, :], other=0.0).to(DOT)
        if IEEE:
            acc += tl.dot(s, wt, input_precision="ieee")
        else:
            acc += tl.dot(s, wt)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm < R)[:, None] & (rn < N)[None, :])


@triton.jit
def _dw_kernel(g_ptr, p_ptr, dw_ptr, R, N, K, NW, IEEE: tl.constexpr, DOT: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr):
    # dW[n, k] = sum_m dY[m, n] S[m, k]: one program per (BN outputs, one word of k)
    pid_n = tl.program_id(0)
    w = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    lanes = tl.arange(0, 32)
    acc = tl.zeros((BN, 32), dtype=tl.float32)
    for m0 in range(0, R, BM):
        rm = m0 + tl.arange(0, BM)
        g = tl.load(g_ptr + rm[:, None].to(tl.int64) * N + rn[None, :],
                    mask=(rm < R)[:, None] & (rn < N)[None, :], other=0.0).to(DOT)
        s = _spikes_tile(p_ptr, rm, w, R, NW, DOT)
        if IEEE:
            acc += tl.dot(tl.trans(g), s, input_precision="ieee")
        else:
            acc += tl.dot(tl.trans(g), s)
    k = w * 32 + lanes
    tl.store(dw_ptr + rn[:, None].to(tl.int64) * K + k[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=(rn < N)[:, None] & (k < K)[None, :])


def _dot_type(dtype):
    """(dot operand type, IEEE fp32?) for weights of ``dtype``.

    fp16: fp16 tensor cores. bf16: operands widened to fp32 and multiplied in tf32,
    which holds every bf16 value (8-bit mantissa) exactly, so the products are exact
    as with bf16 tensor cores (Triton's interpreter gets bf16 ``tl.dot`` wrong, and
    this form is testable there). fp32: IEEE fp32, no tf32 rounding of the weights.
    """
    if dtype == torch.float16:
        return tl.float16, False
    if dtype == torch.bfloat16:
        return tl.float32, False
    return tl.float32, True


def _forward_packed(packed, weight, bias):
    n, k = weight.shape
    nw = packed.shape[-1]
    out = torch.empty((*packed.shape[:-1], n), dtype=weight.dtype, device=weight.device)
    if out.numel() == 0:
        return out
    if k == 0:
        out.copy_(bias.expand_as(out) if bias is not None else torch.zeros_like(out))
        return out
    p = packed.reshape(-1, nw).contiguous()
    r = p.shape[0]
    dot, ieee = _dot_type(weight.dtype)
    grid = (triton.cdiv(r, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _fwd_kernel[grid](p, weight, bias if bias is not None else weight, out, r, n, k, nw,
                      weight.stride(0), weight.stride(1), HAS_BIAS=bias is not None, IEEE=ieee, DOT=dot,
                      BM=BLOCK_M, BN=BLOCK_N)
    return out


def spike_gemm_packed(packed, weight, bias, spikes=None, dim=-1):
    return _forward_packed(packed, weight, bias)


def spike_gemm(spikes, weight, bias, dim):
    packed = pack_spikes(spikes, dim)
    return spike_gemm_packed(packed, weight, bias), packed


def spike_gemm_bwd(grad_out, packed, weight, need_spikes, need_weight, need_bias):
    n, k = weight.shape
    nw = packed.shape[-1]
    g = grad_out.reshape(-1, n).to(weight.dtype).contiguous()
    empty = weight.new_empty(0)
    gs = (g @ weight).reshape(*packed.shape[:-1], k) if need_spikes else empty
    gb = g.to(torch.float32).sum(0).to(weight.dtype) if need_bias else empty.clone()
    gw = empty.clone()
    if need_weight:
        gw = torch.zeros((n, k), dtype=weight.dtype, device=weight.device)
        r = g.shape[0]
        if r and n and k:
            p = packed.reshape(-1, nw).contiguous()
            dot, ieee = _dot_type(weight.dtype)
            grid = (triton.cdiv(n, BLOCK_N), nw)
            _dw_kernel[grid](g, p, gw, r, n, k, nw, IEEE=ieee, DOT=dot, BM=BLOCK_M, BN=BLOCK_N)
    return gs, gw, gb
