"""Triton kernels of the fused tdBN + residual add (``torch.ops.snnops.bn_add_fwd /
bn_add_bwd`` on CUDA tensors). Formulas and layouts: ``snnops/reference/bn_add.py`` and
``csrc/cpu/bn_add.cpp`` (z as rows ``[M, C]``, channels last; frames ``[..., C, H, W]``
are read as their H*W rows of C, through one copy unless they are channels-last).

Forward, three launches:
  1. statistics partials and 2. their float64 merge into mean, biased var, invstd and
     the affine coefficients: the tdBN statistics kernels of ``kernels/bn_lif.py``
     (float32 Chan partials over fixed row slices, merged in float64 in fixed order;
     the mean and var are rounded to float32 before scale and shift are derived);
  3. y = z * scale + shift (+ residual), one program per [BLOCK_R, BLOCK_C] tile.
Backward, three launches:
  1. per program (a fixed slice of rows, a block of channels): float32 tile sums of g
     and g * (z - mean), accumulated in float64 over the slice;
  2. finalize: the partials summed in float64 in fixed order (deterministic) ->
     grad_bias = s1, grad_weight = s2 * invstd, and a = gamma * invstd,
     k1 = s1 / M, k2 = s2 * invstd^2 / M computed in float64 and rounded once;
  3. grad_z = ((g - k1) - (z - mean) * k2) * a (training) or g * a (eval).
The residual's gradient is grad_y itself (the autograd formula returns it).

Math is float32; float16/bfloat16 z is read as is and converted in registers; float64 z
runs the reference (as the other ops do). Compiled without FMA contraction, so each
operation rounds as in the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from snnops import reference as _reference

from .bn_lif import MAX_PARTIALS, bn_coefficients

TILE = 2048                  # elements per elementwise tile: BLOCK_R * BLOCK_C
_LAUNCH = dict(enable_fp_fusion=False)


def _block_c(c: int) -> int:
    return min(64, max(16, triton.next_power_of_2(c)))


# ---------------------------------------------------------------------------- kernels

@triton.jit
def _fwd_kernel(z_ptr, r_ptr, scale_ptr, shift_ptr, y_ptr, NR, C, HAS_RES: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    m = (rows < NR)[:, None] & cmask[None, :]
    off = rows[:, None] * C + cols[None, :]
    sc = tl.load(scale_ptr + cols, mask=cmask, other=0.0)[None, :]
    sh = tl.load(shift_ptr + cols, mask=cmask, other=0.0)[None, :]
    y = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32) * sc + sh
    if HAS_RES:
        y = y + tl.load(r_ptr + off, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_sums_kernel(g_ptr, z_ptr, mean_ptr, ps1_ptr, ps2_ptr, NR, C, ROWS_PER_PROG,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_r = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mu = tl.load(mean_ptr + cols, mask=cmask, other=0.0)[None, :]
    s1 = tl.zeros([BLOCK_C], dtype=tl.float64)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    r0 = pid_r * ROWS_PER_PROG
    for i in range(0, ROWS_PER_PROG, BLOCK_R):
        rows = r0 + i + tl.arange(0, BLOCK_R)
        m = (rows < NR)[:, None] & cmask[None, :]
        off = rows[:, None] * C + cols[None, :]
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
        d = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32) - mu
        p = tl.where(m, g * d, 0.0)
        s1 += tl.sum(g, axis=0).to(tl.float64)
        s2 += tl.sum(p, axis=0).to(tl.float64)
    tl.store(ps1_ptr + pid_r * C + cols, s1, mask=cmask)
    tl.store(ps2_ptr + pid_r * C + cols, s2, mask=cmask)


@triton.jit
def _bwd_final_kernel(ps1_ptr, ps2_ptr, w_ptr, invstd_ptr, s1_ptr, gw_ptr, a_ptr, k1_ptr, k2_ptr, P, C, NR,
                      BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    s1 = tl.zeros([BLOCK_C], dtype=tl.float64)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    for p in range(P):  # fixed order: deterministic
        s1 += tl.load(ps1_ptr + p * C + cols, mask=cmask, other=0.0)
        s2 += tl.load(ps2_ptr + p * C + cols, mask=cmask, other=0.0)
    ist = tl.load(invstd_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
    tl.store(s1_ptr + cols, s1, mask=cmask)
    tl.store(gw_ptr + cols, s2 * ist, mask=cmask)
    tl.store(a_ptr + cols, (w * ist).to(tl.float32), mask=cmask)
    tl.store(k1_ptr + cols, (s1 / NR).to(tl.float32), mask=cmask)   # launched only with NR > 0
    tl.store(k2_ptr + cols, (s2 * ist * ist / NR).to(tl.float32), mask=cmask)


@triton.jit
def _bwd_dz_kernel(g_ptr, z_ptr, mean_ptr, a_ptr, k1_ptr, k2_ptr, dz_ptr, NR, C, TRAINING: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    m = (rows < NR)[:, None] & cmask[None, :]
    off = rows[:, None] * C + cols[None, :]
    a = tl.load(a_ptr + cols, mask=cmask, other=0.0)[None, :]
    g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
    if TRAINING:
        mu = tl.load(mean_ptr + cols, mask=cmask, other=0.0)[None, :]
        k1 = tl.load(k1_ptr + cols, mask=cmask, other=0.0)[None, :]
        k2 = tl.load(k2_ptr + cols, mask=cmask, other=0.0)[None, :]
        d = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32) - mu
        dz = ((g - k1) - d * k2) * a
    else:
        dz = g * a
    tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------- layouts

_NATIVE = (torch.float32, torch.float16, torch.bfloat16)


def _channels(z):
    return z.shape[1] if z.dim() == 2 else z.shape[-3]


def _order(dim):
    return [*range(dim - 3), dim - 2, dim - 1, dim - 3]


def _rows(x):
    """Contiguous rows [M, C] (a view of contiguous rows or channels-last frames)."""
    x = x if x.dtype in _NATIVE else x.to(torch.float32)
    if x.dim() == 2:
        return x.contiguous()
    rows = x.permute(_order(x.dim())).contiguous()
    return rows.view(-1 if rows.shape[-1] else rows.shape[:-1].numel(), rows.shape[-1])


def _empty_rows_like(z, dtype):
    """(tensor of z's shape with channels-last frames, its rows [M, C])."""
    if z.dim() == 2:
        t = torch.empty(z.shape, dtype=dtype, device=z.device)
        return t, t
    d = z.dim()
    t = torch.empty([z.shape[i] for i in _order(d)], dtype=dtype, device=z.device)
    c = z.shape[-3]
    return t.permute(*range(d - 3), d - 1, d - 3, d - 2), t.view(-1 if c else t.shape[:-1].numel(), c)


def _check_fwd(z, residual, weight, bias, running_mean, running_var, training):
    op = "snnops.bn_add_fwd"
    if z.dim() < 2:
        raise ValueError(f"{op}: z must be rows [M, C] or frames [..., C, H, W], got shape {tuple(z.shape)}")
    c = _channels(z)
    if residual is not None and tuple(residual.shape) != tuple(z.shape):
        raise ValueError(f"{op}: residual must have z's shape {tuple(z.shape)}, got {tuple(residual.shape)}")
    if weight.numel() != c or bias.numel() != c:
        raise ValueError(f"{op}: weight and bias need {c} entries (one per channel), got {weight.numel()} and "
                         f"{bias.numel()}")
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: eval mode needs running_mean and running_var")
        if running_mean.numel() != c or running_var.numel() != c:
            raise ValueError(f"{op}: running_mean and running_var need {c} entries")
    elif z.numel() == 0 and c:
        raise ValueError(f"{op}: training-mode statistics need at least one value per channel, got z of shape "
                         f"{tuple(z.shape)}")


# ---------------------------------------------------------------------------- launchers

def bn_add_fwd(z, residual, weight, bias, running_mean, running_var, training, eps):
    if z.dtype == torch.float64:
        return _reference.bn_add_fwd(z, residual, weight, bias, running_mean, running_var, training, eps)
    _check_fwd(z, residual, weight, bias, running_mean, running_var, training)
    c = _channels(z)
    dev = z.device
    out_dtype = z.dtype if z.dtype in _NATIVE else torch.float32
    y, y_rows = _empty_rows_like(z, out_dtype)
    mean, invstd, var, scale, shift = (torch.empty(c, dtype=torch.float32, device=dev) for _ in range(5))
    if c == 0:
        return y, mean, invstd, var
    zr = _rows(z)
    nr = zr.shape[0]
    block_c = _block_c(c)
    cblocks = triton.cdiv(c, block_c)
    bn_coefficients(zr, nr, c, weight, bias, running_mean, running_var, training, eps, mean, invstd, var, scale,
                    shift)
    if nr:
        res = _rows(residual) if residual is not None else zr
        block_r = TILE // block_c
        _fwd_kernel[(triton.cdiv(nr, block_r), cblocks)](zr, res, scale, shift, y_rows, nr, c,
                                                          HAS_RES=residual is not None, BLOCK_R=block_r,
                                                          BLOCK_C=block_c, **_LAUNCH)
    return y, mean, invstd, var


def bn_add_bwd(grad_y, z, weight, mean, invstd, training, output_mask):
    if z.dtype == torch.float64:
        return _reference.bn_add_bwd(grad_y, z, weight, mean, invstd, training, output_mask)
    op = "snnops.bn_add_bwd"
    if tuple(grad_y.shape) != tuple(z.shape):
        raise ValueError(f"{op}: grad_y must have z's shape {tuple(z.shape)}, got {tuple(grad_y.shape)}")
    c = _channels(z)
    dev = z.device
    want_dz = bool(output_mask[0])
    out_dtype = z.dtype if z.dtype in _NATIVE else torch.float32
    dz, dz_rows = _empty_rows_like(z, out_dtype) if want_dz else (z.new_empty(0), None)
    s1 = torch.zeros(c, dtype=torch.float64, device=dev)
    gw = torch.zeros(c, dtype=torch.float64, device=dev)
    zr, g = _rows(z), _rows(grad_y)
    nr = zr.shape[0]
    if nr and c:
        mu, ist = mean.reshape(-1).to(torch.float32).contiguous(), invstd.reshape(-1).to(torch.float32).contiguous()
        block_c = _block_c(c)
        block_r = TILE // block_c
        cblocks = triton.cdiv(c, block_c)
        a, k1, k2 = (torch.empty(c, dtype=torch.float32, device=dev) for _ in range(3))
        tiles = triton.cdiv(nr, block_r)
        rows_per_prog = triton.cdiv(tiles, min(tiles, MAX_PARTIALS)) * block_r
        parts = triton.cdiv(nr, rows_per_prog)
        ps1 = torch.empty((parts, c), dtype=torch.float64, device=dev)
        ps2 = torch.empty((parts, c), dtype=torch.float64, device=dev)
        _bwd_sums_kernel[(parts, cblocks)](g, zr, mu, ps1, ps2, nr, c, rows_per_prog, BLOCK_R=block_r,
                                           BLOCK_C=block_c, **_LAUNCH)
        _bwd_final_kernel[(cblocks,)](ps1, ps2, weight.reshape(-1).contiguous(), ist, s1, gw, a, k1, k2, parts, c,
                                      nr, BLOCK_C=block_c, **_LAUNCH)
        if want_dz:
            _bwd_dz_kernel[(triton.cdiv(nr, block_r), cblocks)](g, zr, mu, a, k1, k2, dz_rows, nr, c,
                                                                 TRAINING=bool(training), BLOCK_R=block_r,
                                                                 BLOCK_C=block_c, **_LAUNCH)
    return (dz,
            gw.to(weight.dtype) if output_mask[1] else weight.new_empty(0),
            s1.to(weight.dtype) if output_mask[2] else weight.new_empty(0))
