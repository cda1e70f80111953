"""Triton kernel of ``torch.ops.snnops.spike_gemm_lowbit`` on CUDA tensors: 0/1 spikes
(packed words) times a symmetric ``bits``-bit weight held as bit-planes, exactly.

    acc     = sum_k s[m, k] * level[n, k],  level = keep ? 2 * code - (2^bits - 1) : 0
    y[m, n] = acc[m, n] * scale[n] (+ bias[n]) in float64, then rounded to the output dtype

(layouts: ``snnops.ops.spike_gemm.QuantizedWeight``; planes int32 ``[N, bits + 1, words]``,
plane j < bits = bit j of the codes, plane ``bits`` = the keep-mask).

Why unpack + ``tl.dot`` rather than the CPU's bit-serial AND / popcount / shift-add:
both are exact here (the spikes are 0/1 and the levels odd integers within +-15, all
exact in fp16; products and partial sums are integers, exact in the fp32 accumulator
below 2^24). By operation count the dot wins on a GPU: per 32 features and output the
bit-serial form issues (bits + 1) x (AND, popcount, shift-add) on the integer ALUs,
whose throughput is a fraction of the tensor cores' fp16 multiply-adds, while the
unpacking here (a shift-and-mask per weight bit) is shared by the BLOCK_M spike rows of
a program and the spike unpacking by its BLOCK_N outputs. (An operation-count argument,
not a GPU measurement; both forms are exact, so swapping is a speed-only change.)

The fp32 accumulator is flushed into an int64 one every FLUSH words, so the sum stays
exact for any K. The epilogue is float64 (once per output) and compiled without FMA
contraction (``acc * scale`` and ``+ bias`` round separately, as in the reference;
Triton would otherwise fuse them), so the result equals the float64 reference (and the
CPU kernel) exactly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 64   # spike rows per program: each weight tile is unpacked once per 64 rows
BLOCK_N = 32   # output channels per program
KW = 2         # packed words per dot step: K chunk of 64
_LAUNCH = dict(enable_fp_fusion=False)   # see the module docstring: the epilogue must not fuse


def _flush_words(bits: int) -> int:
    # largest multiple of KW words whose partial sums stay below 2^24 in magnitude
    per_word = 32 * (2 ** bits - 1)
    return max(KW, ((2 ** 24 - 1) // per_word) // KW * KW)


@triton.jit
def _lowbit_kernel(p_ptr, pl_ptr, sc_ptr, b_ptr, y_ptr, R, N, NW, FLUSH,
                   BITS: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, KW: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rn = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    mmask = rm < R
    nmask = rn < N
    lanes = tl.arange(0, 32)
    acc = tl.zeros((BM, BN), dtype=tl.int64)
    for w0 in range(0, NW, FLUSH):
        part = tl.zeros((BM, BN), dtype=tl.float32)
        for w in range(w0, tl.minimum(w0 + FLUSH, NW), KW):
            wk = w + tl.arange(0, KW)
            kmask = wk < NW
            # spikes: [BM, KW] words -> [BM, 32 KW] 0/1, k = 32 word + lane
            sw = tl.load(p_ptr + rm[:, None] * NW + wk[None, :], mask=mmask[:, None] & kmask[None, :], other=0)
            s = tl.reshape((sw[:, :, None] >> lanes[None, None, :]) & 1, (BM, KW * 32)).to(tl.float16)
            # weights: [KW, BN] words per plane -> [32 KW, BN] integer levels
            wmask = kmask[:, None] & nmask[None, :]
            base = pl_ptr + rn[None, :] * ((BITS + 1) * NW) + wk[:, None]   # rn int64: no overflow
            code = tl.zeros((KW, 32, BN), dtype=tl.int32)
            for j in tl.static_range(BITS):
                pw = tl.load(base + j * NW, mask=wmask, other=0)
                code += ((pw[:, None, :] >> lanes[None, :, None]) & 1) << j
            kw = tl.load(base + BITS * NW, mask=wmask, other=0)
            keep = ((kw[:, None, :] >> lanes[None, :, None]) & 1) != 0
            level = tl.where(keep, 2 * code - (2 ** BITS - 1), 0)
            lv = tl.reshape(level, (KW * 32, BN)).to(tl.float16)
            part = tl.dot(s, lv, part)
        acc += part.to(tl.int64)
    if PER_CHANNEL:
        sc = tl.load(sc_ptr + rn, mask=nmask, other=0.0).to(tl.float64)[None, :]
    else:
        sc = tl.load(sc_ptr).to(tl.float64)
    y = acc.to(tl.float64) * sc
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float64)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


def spike_gemm_lowbit(packed, planes, scale, bias, bits):
    op = "snnops.spike_gemm_lowbit"
    if isinstance(bits, bool) or bits not in (1, 2, 3, 4):
        raise ValueError(f"{op}: bits must be 1, 2, 3 or 4, got {bits!r}")
    if packed.dtype != torch.int32 or packed.dim() < 1:
        raise ValueError(f"{op}: packed spikes must be int32 [..., words], got {packed.dtype} {tuple(packed.shape)}")
    if planes.dtype != torch.int32 or planes.dim() != 3 or planes.shape[1] != bits + 1:
        raise ValueError(f"{op}: planes must be int32 [out_features, bits + 1 = {bits + 1}, words], got "
                         f"{planes.dtype} {tuple(planes.shape)}")
    n, nw = planes.shape[0], planes.shape[2]
    if packed.shape[-1] != nw:
        raise ValueError(f"{op}: packed spikes have {packed.shape[-1]} words per row but planes have {nw}")
    if not scale.is_floating_point() or not (scale.numel() == 1 or (scale.dim() == 1 and scale.shape[0] == n)):
        raise ValueError(f"{op}: scale must be a floating-point scalar or [{n}], got {scale.dtype} "
                         f"{tuple(scale.shape)}")
    if bias is not None and (not bias.is_floating_point() or tuple(bias.shape) != (n,)):
        raise ValueError(f"{op}: bias must have shape [{n}], got {tuple(bias.shape)}")
    out_dtype = torch.float64 if scale.dtype == torch.float64 else torch.float32
    out = torch.empty((*packed.shape[:-1], n), dtype=out_dtype, device=packed.device)
    if out.numel() == 0:
        return out
    r = out.numel() // n
    p = packed.reshape(r, nw).contiguous()
    sc = scale.reshape(-1).contiguous()
    grid = (triton.cdiv(r, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _lowbit_kernel[grid](p, planes.contiguous(), sc, bias.contiguous() if bias is not None else sc, out, r, n, nw,
                         _flush_words(bits), BITS=int(bits), PER_CHANNEL=sc.numel() != 1, HAS_BIAS=bias is not None,
                         BM=BLOCK_M, BN=BLOCK_N, KW=KW, **_LAUNCH)
    return out
