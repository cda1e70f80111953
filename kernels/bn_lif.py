"""Triton kernels of the fused tdBN + LIF op (``torch.ops.snnops.bn_lif_fwd / bn_lif_bwd``
on CUDA tensors). Formulas and layouts: ``snnops/reference/bn_lif.py`` and
``csrc/cpu/bn_lif.cpp`` (z ``[T, M, C]`` channels last; spike and window bits packed
along C, bit c % 32 of word c // 32).

Forward, three launches:
  1. statistics: each program owns a fixed slice of the T*M rows and a block of channels
     and keeps a float32 (count, mean, M2) per channel of z minus its first row, merging
     [BLOCK_R, BLOCK_C] tiles by Chan's rule (tile mean and squared deviations from it
     first: no E[z^2] - mean^2 cancellation, and the shift keeps a large common offset
     from eating the float32 precision of the spread);
  2. finalize: one program per channel block merges the partials in float64 (Chan
     again, in fixed order: deterministic), then mean, biased var, invstd, and the
     affine coefficients scale = gamma * invstd, shift = beta - mean * scale, computed in
     float64 and rounded once as the reference does. In training the float64 mean and
     var are first rounded to the float32 that the op returns, so the spikes are exactly
     what eval mode gives with those statistics as running statistics;
  3. normalize + neuron: one program per [BLOCK_R rows, BLOCK_C channels] tile walks all
     T steps with the membrane in registers, writing the spikes and one word of spike
     bits and of window bits per 32 channels. BatchNorm's output is never stored.
Backward, three launches:
  1. per tile, the neuron backwards in time (bits unpacked in registers) writing dy (or,
     in eval mode, directly dz = dy * gamma * invstd) and the per-channel float32 partial
     sums of dy and dy * xhat over its rows and steps;
  2. finalize: partials summed in float64 in fixed order -> grad_bias, grad_weight and
     the float32 k1 = sum(dy) / N, k2 = sum(dy * xhat) / N;
  3. (training, grad_z wanted) dz = ((dy - k1) - xhat * k2) * gamma * invstd in place.

Math is float32; float16/bfloat16 z is read as is and converted in registers; float64 z
runs the reference (as the spike-GEMM op does). The kernels are compiled without FMA
contraction and divide with ``div_rn``, so each operation rounds as in the reference
and the spikes and bits are bit-exact, under the interpreter and on a GPU alike.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from snnops import reference as _reference

STAT_ROWS = 64        # rows per statistics tile
MAX_PARTIALS = 256    # statistics programs per channel block (each then loops over its slice)
TILE = 2048           # elements per normalize / backward tile: BLOCK_R * BLOCK_C
# No FMA contraction (Triton contracts a * b + c by default): every operation rounds as
# in the reference, so the spikes and bits are bit-exact on a GPU too (checked in the
# PTX by tests/test_bn_lif.py: mul + add, div.rn, sqrt.rn, no fma).
_LAUNCH = dict(enable_fp_fusion=False)


def _block_c(c: int) -> int:
    # whole words per program: a program writes complete spike / window words
    return 32 if c <= 32 else 64


# ---------------------------------------------------------------------------- helpers

@triton.jit
def _pack_rows(flag, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # [BLOCK_R, BLOCK_C] booleans -> [BLOCK_R, BLOCK_C // 32] int32 words, bit i of word w = column 32 w + i
    lanes = (tl.arange(0, BLOCK_C) % 32).to(tl.int64)
    bits = tl.where(flag, 1, 0).to(tl.int64) << lanes[None, :]
    words = tl.sum(tl.reshape(bits, (BLOCK_R, BLOCK_C // 32, 32)), axis=2)
    return words.to(tl.uint32, bitcast=False).to(tl.int32, bitcast=True)


@triton.jit
def _unpack_rows(words, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # [BLOCK_R, BLOCK_C // 32] int32 words -> [BLOCK_R, BLOCK_C] booleans
    lanes = tl.arange(0, 32)
    bits = (words[:, :, None] >> lanes[None, None, :]) & 1
    return tl.reshape(bits, (BLOCK_R, BLOCK_C)) != 0


# ---------------------------------------------------------------------------- forward

@triton.jit
def _stats_partial_kernel(z_ptr, pmean_ptr, pm2_ptr, NR, C, ROWS_PER_PROG,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # program (p, cb): rows [p * ROWS_PER_PROG, (p + 1) * ROWS_PER_PROG) of the T*M rows
    pid_r = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    r0 = pid_r * ROWS_PER_PROG
    # shifted by the first row (every program the same): the float32 partial means then
    # are of order the spread, not of the offset, and keep the spread's precision
    pilot = tl.load(z_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    n_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(0, ROWS_PER_PROG, BLOCK_R):
        rows = r0 + i + tl.arange(0, BLOCK_R)
        rmask = rows < NR
        m = rmask[:, None] & cmask[None, :]
        x = tl.load(z_ptr + rows[:, None] * C + cols[None, :], mask=m, other=0.0).to(tl.float32)
        x = tl.where(m, x - pilot[None, :], 0.0)
        n_b = tl.sum(tl.where(rmask, 1.0, 0.0), axis=0)
        mean_b = tl.sum(x, axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(m, x - mean_b[None, :], 0.0)
        m2_b = tl.sum(d * d, axis=0)
        n = n_a + n_b
        f = n_b / tl.maximum(n, 1.0)
        delta = mean_b - mean_a
        mean_a = mean_a + delta * f
        m2_a = m2_a + m2_b + delta * delta * n_a * f
        n_a = n
    tl.store(pmean_ptr + pid_r * C + cols, mean_a, mask=cmask)
    tl.store(pm2_ptr + pid_r * C + cols, m2_a, mask=cmask)


@triton.jit
def _stats_final_kernel(z_ptr, pmean_ptr, pm2_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, eps_ptr, mean_ptr, invstd_ptr, var_ptr,
                        scale_ptr, shift_ptr, P, NR, C, ROWS_PER_PROG,
                        TRAINING: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    eps = tl.load(eps_ptr)  # float64: a float argument would arrive rounded to float32
    if TRAINING:
        n_a = tl.zeros([BLOCK_C], dtype=tl.float64)
        mean_a = tl.zeros([BLOCK_C], dtype=tl.float64)
        m2_a = tl.zeros([BLOCK_C], dtype=tl.float64)
        for p in range(P):
            n_b = tl.minimum(ROWS_PER_PROG, NR - p * ROWS_PER_PROG).to(tl.float64)
            mean_b = tl.load(pmean_ptr + p * C + cols, mask=cmask, other=0.0).to(tl.float64)
            m2_b = tl.load(pm2_ptr + p * C + cols, mask=cmask, other=0.0).to(tl.float64)
            n = n_a + n_b
            f = n_b / n
            delta = mean_b - mean_a
            mean_a = mean_a + delta * f
            m2_a = m2_a + m2_b + delta * delta * n_a * f
            n_a = n
        pilot = tl.load(z_ptr + cols, mask=cmask, other=0.0).to(tl.float32).to(tl.float64)
        mean32 = (pilot + mean_a).to(tl.float32)
        var32 = tl.maximum(m2_a / n_a, 0.0).to(tl.float32)
        mean = mean32.to(tl.float64)
        var = var32.to(tl.float64)
    else:
        mean = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
        var = tl.load(rv_ptr + cols, mask=cmask, other=1.0).to(tl.float64)
        mean32 = mean.to(tl.float32)
        var32 = var.to(tl.float32)
    invstd = 1.0 / tl.sqrt(var + eps)   # float64 sqrt and division are correctly rounded
    scale = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float64) * invstd
    shift = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float64) - mean * scale
    tl.store(mean_ptr + cols, mean32, mask=cmask)
    tl.store(var_ptr + cols, var32, mask=cmask)
    tl.store(invstd_ptr + cols, invstd.to(tl.float32), mask=cmask)
    tl.store(scale_ptr + cols, scale.to(tl.float32), mask=cmask)
    tl.store(shift_ptr + cols, shift.to(tl.float32), mask=cmask)


@triton.jit
def _fwd_kernel(z_ptr, scale_ptr, shift_ptr, spk_ptr, packed_ptr, window_ptr, T, M, C, W,
                decay, vth, vreset, bias, half_width, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    wcols = tl.program_id(1) * (BLOCK_C // 32) + tl.arange(0, BLOCK_C // 32)
    rmask = rows < M
    cmask = cols < C
    m = rmask[:, None] & cmask[None, :]
    wm = rmask[:, None] & (wcols < W)[None, :]
    sc = tl.load(scale_ptr + cols, mask=cmask, other=0.0)[None, :]
    sh = tl.load(shift_ptr + cols, mask=cmask, other=0.0)[None, :]
    v = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for t in range(T):
        r = tl.cast(t, tl.int64) * M + rows
        off = r[:, None] * C + cols[None, :]
        y = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32) * sc + sh
        h = (v * decay + y) + bias
        fired = h >= vth
        tl.store(spk_ptr + off, tl.where(fired, 1.0, 0.0).to(spk_ptr.dtype.element_ty), mask=m)
        woff = r[:, None] * W + wcols[None, :]
        tl.store(packed_ptr + woff, _pack_rows(fired & m, BLOCK_R, BLOCK_C), mask=wm)
        in_window = (tl.abs(h - vth) < half_width) & m
        tl.store(window_ptr + woff, _pack_rows(in_window, BLOCK_R, BLOCK_C), mask=wm)
        v = tl.where(fired, vreset, h)


# ---------------------------------------------------------------------------- backward

@triton.jit
def _bwd_dy_kernel(gs_ptr, z_ptr, mean_ptr, invstd_ptr, a_ptr, packed_ptr, window_ptr, dz_ptr, ps1_ptr, ps2_ptr,
                   T, M, C, W, decay, width, STORE: tl.constexpr, SCALE: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_r = tl.program_id(0).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    wcols = tl.program_id(1) * (BLOCK_C // 32) + tl.arange(0, BLOCK_C // 32)
    rmask = rows < M
    cmask = cols < C
    m = rmask[:, None] & cmask[None, :]
    wm = rmask[:, None] & (wcols < W)[None, :]
    mu = tl.load(mean_ptr + cols, mask=cmask, other=0.0)[None, :]
    ist = tl.load(invstd_ptr + cols, mask=cmask, other=0.0)[None, :]
    if SCALE:
        a = tl.load(a_ptr + cols, mask=cmask, other=0.0)[None, :]
    g = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        r = tl.cast(t, tl.int64) * M + rows
        off = r[:, None] * C + cols[None, :]
        woff = r[:, None] * W + wcols[None, :]
        in_window = _unpack_rows(tl.load(window_ptr + woff, mask=wm, other=0), BLOCK_R, BLOCK_C)
        fired = _unpack_rows(tl.load(packed_ptr + woff, mask=wm, other=0), BLOCK_R, BLOCK_C)
        gs = tl.load(gs_ptr + off, mask=m, other=0.0).to(tl.float32)
        # div_rn: IEEE division as the reference (Triton's fp32 '/' may be approximate on a GPU)
        gh = tl.where(in_window, tl.div_rn(gs, width), 0.0) + tl.where(fired, 0.0, g)
        gh = tl.where(m, gh, 0.0)
        if STORE:
            if SCALE:
                tl.store(dz_ptr + off, gh * a, mask=m)
            else:
                tl.store(dz_ptr + off, gh, mask=m)
        g = gh * decay
        xhat = (tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32) - mu) * ist
        s1 += tl.sum(gh, axis=0)
        s2 += tl.sum(gh * xhat, axis=0)
    tl.store(ps1_ptr + pid_r * C + cols, s1, mask=cmask)
    tl.store(ps2_ptr + pid_r * C + cols, s2, mask=cmask)


@triton.jit
def _bwd_final_kernel(ps1_ptr, ps2_ptr, s1_ptr, s2_ptr, k1_ptr, k2_ptr, P, C, NR, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    s1 = tl.zeros([BLOCK_C], dtype=tl.float64)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    for p in range(P):  # fixed order: deterministic
        s1 += tl.load(ps1_ptr + p * C + cols, mask=cmask, other=0.0).to(tl.float64)
        s2 += tl.load(ps2_ptr + p * C + cols, mask=cmask, other=0.0).to(tl.float64)
    tl.store(s1_ptr + cols, s1, mask=cmask)
    tl.store(s2_ptr + cols, s2, mask=cmask)
    tl.store(k1_ptr + cols, (s1 / NR).to(tl.float32), mask=cmask)   # launched only with NR > 0
    tl.store(k2_ptr + cols, (s2 / NR).to(tl.float32), mask=cmask)


@triton.jit
def _bwd_dz_kernel(z_ptr, mean_ptr, invstd_ptr, a_ptr, k1_ptr, k2_ptr, dz_ptr, NR, C,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    m = (rows < NR)[:, None] & cmask[None, :]
    off = rows[:, None] * C + cols[None, :]
    mu = tl.load(mean_ptr + cols, mask=cmask, other=0.0)[None, :]
    ist = tl.load(invstd_ptr + cols, mask=cmask, other=0.0)[None, :]
    a = tl.load(a_ptr + cols, mask=cmask, other=0.0)[None, :]
    k1 = tl.load(k1_ptr + cols, mask=cmask, other=0.0)[None, :]
    k2 = tl.load(k2_ptr + cols, mask=cmask, other=0.0)[None, :]
    xhat = (tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32) - mu) * ist
    dy = tl.load(dz_ptr + off, mask=m, other=0.0)
    tl.store(dz_ptr + off, ((dy - k1) - xhat * k2) * a, mask=m)


# ---------------------------------------------------------------------------- launchers

_NATIVE = (torch.float32, torch.float16, torch.bfloat16)


def _input(t):
    t = t if t.dtype in _NATIVE else t.to(torch.float32)
    return t.contiguous()


def _f32(t):
    return t.to(torch.float32).contiguous()


def _check_fwd(z, weight, bias, running_mean, running_var, training):
    op = "snnops.bn_lif_fwd"
    if z.dim() != 3:
        raise ValueError(f"{op}: z must be [T, M, C], got shape {tuple(z.shape)}")
    c = z.shape[2]
    if weight.numel() != c or bias.numel() != c:
        raise ValueError(f"{op}: weight and bias need {c} entries (one per channel), got {weight.numel()} and "
                         f"{bias.numel()}")
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: eval mode needs running_mean and running_var")
        if running_mean.numel() != c or running_var.numel() != c:
            raise ValueError(f"{op}: running_mean and running_var need {c} entries")
    elif z.shape[0] * z.shape[1] == 0:
        raise ValueError(f"{op}: training-mode statistics need at least one value per channel, got z of shape "
                         f"{tuple(z.shape)}")


def bn_coefficients(z_rows, nr, c, weight, bias, running_mean, running_var, training, eps, mean, invstd, var,
                    scale, shift):
    """The tdBN per-channel coefficients into mean / invstd / var / scale / shift (float32
    [c]): batch statistics of the nr x c rows z_rows (partial sums per block of rows, then
    combined per channel) in training, the running ones in eval. Shared by bn_lif and
    bn_add."""
    dev = z_rows.device
    block_c = _block_c(c)
    cblocks = triton.cdiv(c, block_c)
    eps_t = torch.tensor([eps], dtype=torch.float64, device=dev)
    w, b = weight.reshape(-1).contiguous(), bias.reshape(-1).contiguous()
    if training:
        tiles = triton.cdiv(nr, STAT_ROWS)
        rows_per_prog = triton.cdiv(tiles, min(tiles, MAX_PARTIALS)) * STAT_ROWS
        parts = triton.cdiv(nr, rows_per_prog)
        pmean = torch.empty((parts, c), dtype=torch.float32, device=dev)
        pm2 = torch.empty((parts, c), dtype=torch.float32, device=dev)
        _stats_partial_kernel[(parts, cblocks)](z_rows, pmean, pm2, nr, c, rows_per_prog,
                                                BLOCK_R=STAT_ROWS, BLOCK_C=block_c, **_LAUNCH)
        rm = rv = pmean  # unused
    else:
        parts, rows_per_prog = 0, 1
        pmean = pm2 = eps_t  # unused
        rm, rv = running_mean.reshape(-1).contiguous(), running_var.reshape(-1).contiguous()
    _stats_final_kernel[(cblocks,)](z_rows, pmean, pm2, w, b, rm, rv, eps_t, mean, invstd, var, scale, shift,
                                    parts, nr, c, rows_per_prog, TRAINING=bool(training), BLOCK_C=block_c,
                                    **_LAUNCH)


def bn_lif_fwd(z, weight, bias, running_mean, running_var, training, eps, decay, v_threshold, v_reset, width):
    if z.dtype == torch.float64:
        return _reference.bn_lif_fwd(z, weight, bias, running_mean, running_var, training, eps, decay,
                                     v_threshold, v_reset, width)
    _check_fwd(z, weight, bias, running_mean, running_var, training)
    steps, rows, c = z.shape
    words = (c + 31) // 32
    nr = steps * rows
    dev = z.device
    spikes = torch.empty((steps, rows, c), dtype=z.dtype if z.dtype in _NATIVE else torch.float32, device=dev)
    packed = torch.empty((steps, rows, words), dtype=torch.int32, device=dev)
    window = torch.empty((steps, rows, words), dtype=torch.int32, device=dev)
    mean, invstd, var, scale, shift = (torch.empty(c, dtype=torch.float32, device=dev) for _ in range(5))
    if c == 0:
        return spikes, packed, window, mean, invstd, var
    zc = _input(z)
    block_c = _block_c(c)
    cblocks = triton.cdiv(c, block_c)
    bn_coefficients(zc, nr, c, weight, bias, running_mean, running_var, training, eps, mean, invstd, var, scale,
                    shift)
    if nr:
        block_r = TILE // block_c
        _fwd_kernel[(triton.cdiv(rows, block_r), cblocks)](
            zc, scale, shift, spikes, packed, window, steps, rows, c, words, float(decay), float(v_threshold),
            float(v_reset), float((1.0 - decay) * v_reset), float(width / 2), BLOCK_R=block_r, BLOCK_C=block_c,
            **_LAUNCH)
    return spikes, packed, window, mean, invstd, var


def bn_lif_bwd(grad_spikes, z, weight, mean, invstd, packed, window, training, decay, width, output_mask):
    if z.dtype == torch.float64:
        return _reference.bn_lif_bwd(grad_spikes, z, weight, mean, invstd, packed, window, training, decay, width,
                                     output_mask)
    op = "snnops.bn_lif_bwd"
    if z.dim() != 3:
        raise ValueError(f"{op}: z must be [T, M, C], got shape {tuple(z.shape)}")
    steps, rows, c = z.shape
    words = (c + 31) // 32
    nr = steps * rows
    if tuple(grad_spikes.shape) != tuple(z.shape):
        raise ValueError(f"{op}: grad_spikes must have z's shape {tuple(z.shape)}, got {tuple(grad_spikes.shape)}")
    if packed.numel() != nr * words or window.numel() != nr * words:
        raise ValueError(f"{op}: packed spikes and window bits must be [T, M, ceil(C/32)] = "
                         f"{(steps, rows, words)}, got {tuple(packed.shape)} and {tuple(window.shape)}")
    dev = z.device
    want_dz = bool(output_mask[0])
    dz = torch.empty((steps, rows, c) if want_dz else (0,), dtype=torch.float32, device=dev)
    s1 = torch.zeros(c, dtype=torch.float64, device=dev)
    s2 = torch.zeros(c, dtype=torch.float64, device=dev)
    if nr and c:
        zc, gs = _input(z), _input(grad_spikes)
        mu, ist = _f32(mean), _f32(invstd)
        a = _f32(weight.reshape(-1)) * ist   # float32 product, as the reference
        block_c = _block_c(c)
        block_r = TILE // block_c
        cblocks = triton.cdiv(c, block_c)
        parts = triton.cdiv(rows, block_r)
        ps1 = torch.empty((parts, c), dtype=torch.float32, device=dev)
        ps2 = torch.empty((parts, c), dtype=torch.float32, device=dev)
        _bwd_dy_kernel[(parts, cblocks)](
            gs, zc, mu, ist, a, packed.contiguous(), window.contiguous(), dz if want_dz else ps1, ps1, ps2,
            steps, rows, c, words, float(decay), float(width), STORE=want_dz, SCALE=not training,
            BLOCK_R=block_r, BLOCK_C=block_c, **_LAUNCH)
        k1 = torch.empty(c, dtype=torch.float32, device=dev)
        k2 = torch.empty(c, dtype=torch.float32, device=dev)
        _bwd_final_kernel[(cblocks,)](ps1, ps2, s1, s2, k1, k2, parts, c, nr, BLOCK_C=block_c, **_LAUNCH)
        if want_dz and training:
            _bwd_dz_kernel[(triton.cdiv(nr, block_r), cblocks)](zc, mu, ist, a, k1, k2, dz, nr, c,
                                                                 BLOCK_R=block_r, BLOCK_C=block_c, **_LAUNCH)
    out_dtype = z.dtype if z.dtype in _NATIVE else torch.float32
    return (dz.to(out_dtype) if want_dz else z.new_empty(0),
            s2.to(weight.dtype) if output_mask[1] else weight.new_empty(0),
            s1.to(weight.dtype) if output_mask[2] else weight.new_empty(0))
