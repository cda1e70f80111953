"""Triton kernels of the multi-step LIF op (``torch.ops.snnops.lif_fwd`` / ``lif_bwd``
on CUDA tensors).

One program owns BLOCK neurons and walks all T timesteps, the membrane in registers:
every tensor is read or written exactly once, as in the CPU kernel. The saved state
has the CPU format (int32 words, bit i of word w = neuron 32w + i; plane 0 the
rectangular window, plane 1 the spikes). Where only the input is kept, the backward
first recomputes h into a scratch [T, N] buffer, then walks time backwards.

Math is float32 (float16/bfloat16/float64 inputs are converted). The kernels are
compiled without FMA contraction (Triton contracts ``a * b + c`` by default): h must
round like the reference's ``(v * decay + x * c) + b``, or a spike can flip where h lies
within one rounding of the threshold.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK = 256  # neurons per program: 8 int32 words of saved bits


@triton.jit
def _pack_words(flag, BLOCK: tl.constexpr):
    # [BLOCK] booleans -> [BLOCK // 32] int32 words, bit i of word w = lane 32 w + i.
    lanes = tl.arange(0, BLOCK) % 32
    bits = tl.where(flag, 1, 0).to(tl.int64) << lanes.to(tl.int64)
    words = tl.sum(tl.reshape(bits, (BLOCK // 32, 32)), axis=1)
    return words.to(tl.uint32, bitcast=False).to(tl.int32, bitcast=True)


@triton.jit
def _unpack_words(words, BLOCK: tl.constexpr):
    # [BLOCK // 32] int32 words -> [BLOCK] booleans
    lanes = tl.arange(0, 32)
    bits = (words[:, None] >> lanes[None, :]) & 1
    return tl.reshape(bits, (BLOCK,)) != 0


@triton.jit
def _surrogate_grad(u, alpha, vth, dspike_k, SURROGATE: tl.constexpr):
    au = tl.abs(u)
    if SURROGATE == 0:  # rectangular
        g = tl.where(au < alpha * 0.5, 1.0 / alpha, 0.0)
    elif SURROGATE == 1:  # triangle
        g = alpha * tl.maximum(1.0 - au / vth, 0.0)
    elif SURROGATE == 2:  # atan
        z = 1.5707963267948966 * alpha * u
        g = (alpha * 0.5) / (1.0 + z * z)
    elif SURROGATE == 3:  # sigmoid
        e = tl.exp(-alpha * au)
        g = alpha * e / ((1.0 + e) * (1.0 + e))
    elif SURROGATE == 4:  # fast sigmoid / SuperSpike
        d = alpha * au + 1.0
        g = 1.0 / (d * d)
    else:  # dspike
        e = tl.exp(-2.0 * alpha * au)
        g = tl.where(au < 0.5, dspike_k * 4.0 * e / ((1.0 + e) * (1.0 + e)), 0.0)
    return g


@triton.jit
def _lif_fwd_kernel(x_ptr, v0_ptr, spk_ptr, vlast_ptr, mem_ptr, saved_ptr, T, N, words,
                    decay, scale, bias, vth, vreset, half_width,
                    HAS_V0: tl.constexpr, HARD: tl.constexpr, STORE_MEM: tl.constexpr,
                    SAVE_BITS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    woffs = pid * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    wmask = woffs < words
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    else:
        v = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(T):
        base = t * N
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
        h = (v * decay + x * scale) + bias
        fired = h >= vth
        tl.store(spk_ptr + base + offs, tl.where(fired, 1.0, 0.0), mask=mask)
        if HARD:
            v = tl.where(fired, vreset, h)
        else:
            v = h - tl.where(fired, vth, 0.0)
        if STORE_MEM:
            tl.store(mem_ptr + base + offs, v, mask=mask)
        if SAVE_BITS:
            window = (tl.abs(h - vth) < half_width) & mask
            tl.store(saved_ptr + t * words + woffs, _pack_words(window, BLOCK), mask=wmask)
            if HARD:
                tl.store(saved_ptr + (T + t) * words + woffs, _pack_words(fired & mask, BLOCK), mask=wmask)
    tl.store(vlast_ptr + offs, v, mask=mask)


@triton.jit
def _lif_bwd_kernel(gs_ptr, gvl_ptr, gm_ptr, x_ptr, v0_ptr, saved_ptr, hist_ptr, gx_ptr, gv0_ptr,
                    T, N, words, decay, scale, bias, vth, vreset, alpha, dspike_k,
                    HAS_GS: tl.constexpr, HAS_GVL: tl.constexpr, HAS_GM: tl.constexpr,
                    HAS_V0: tl.constexpr, STORE_GV0: tl.constexpr, HARD: tl.constexpr,
                    DETACH: tl.constexpr, BITS: tl.constexpr, SURROGATE: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    woffs = pid * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    wmask = woffs < words
    if not BITS:
        # recompute h from the kept input, into a scratch history
        if HAS_V0:
            v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
        else:
            v = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(T):
            x = tl.load(x_ptr + t * N + offs, mask=mask, other=0.0)
            h = (v * decay + x * scale) + bias
            tl.store(hist_ptr + t * N + offs, h, mask=mask)
            fired = h >= vth
            if HARD:
                v = tl.where(fired, vreset, h)
            else:
                v = h - tl.where(fired, vth, 0.0)
    g = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        base = t * N
        if BITS:
            window = _unpack_words(tl.load(saved_ptr + t * words + woffs, mask=wmask, other=0), BLOCK)
            sg = tl.where(window, 1.0 / alpha, 0.0)
            if HARD:
                fired = _unpack_words(tl.load(saved_ptr + (T + t) * words + woffs, mask=wmask, other=0), BLOCK)
                dvdh = tl.where(fired, 0.0, 1.0)
            else:
                dvdh = tl.full([BLOCK], 1.0, tl.float32)
        else:
            h = tl.load(hist_ptr + base + offs, mask=mask, other=0.0)
            sg = _surrogate_grad(h - vth, alpha, vth, dspike_k, SURROGATE)
            if HARD:
                dvdh = tl.where(h >= vth, 0.0, 1.0)
                if not DETACH:
                    dvdh = dvdh + (vreset - h) * sg
            else:
                if DETACH:
                    dvdh = tl.full([BLOCK], 1.0, tl.float32)
                else:
                    dvdh = 1.0 - vth * sg
        gv = g
        if HAS_GM:
            gv = gv + tl.load(gm_ptr + base + offs, mask=mask, other=0.0)
        if HAS_GVL:
            if t == T - 1:
                gv = gv + tl.load(gvl_ptr + offs, mask=mask, other=0.0)
        gh = gv * dvdh
        if HAS_GS:
            gh = tl.load(gs_ptr + base + offs, mask=mask, other=0.0) * sg + gh
        tl.store(gx_ptr + base + offs, gh * scale, mask=mask)
        g = gh * decay
    if STORE_GV0:
        tl.store(gv0_ptr + offs, g, mask=mask)


def _f32(t):
    return t.to(torch.float32).contiguous()


def _saves_bits(surrogate, detach_reset):
    return surrogate == 0 and detach_reset


def lif_fwd(x, v, decay, input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset,
            return_membrane, save_for_backward, pack_dim=None):
    steps = x.shape[0]
    n = x[0].numel() if steps else math.prod(x.shape[1:])
    words = (n + 31) // 32
    xf = _f32(x)
    hard = v_reset is not None
    spikes = torch.empty_like(xf)
    v_last = torch.empty(x.shape[1:], dtype=torch.float32, device=x.device)
    membrane = torch.empty_like(xf) if return_membrane else torch.empty(0, dtype=torch.float32, device=x.device)
    bits = save_for_backward and _saves_bits(surrogate, detach_reset)
    planes = 2 if hard else 1
    saved = (torch.empty((planes, steps, words), dtype=torch.int32, device=x.device) if bits
             else torch.empty(0, dtype=torch.int32, device=x.device))
    v0 = _f32(v) if v is not None else None
    if steps == 0 or n == 0:
        v_last.copy_(v0 if v0 is not None else torch.zeros_like(v_last))
    else:
        grid = (triton.cdiv(n, BLOCK),)
        _lif_fwd_kernel[grid](
            xf, v0 if v0 is not None else xf, spikes, v_last, membrane if return_membrane else xf,
            saved if bits else xf, steps, n, words, float(decay), float(input_scale),
            float((1.0 - decay) * (v_reset or 0.0)), float(v_threshold), float(v_reset or 0.0),
            float(alpha / 2), HAS_V0=v0 is not None, HARD=hard, STORE_MEM=return_membrane,
            SAVE_BITS=bits, BLOCK=BLOCK, enable_fp_fusion=False)
    if pack_dim is not None:
        # packed along a feature dim: the spike-packing kernel on the fresh spikes
        from .spike_gemm import pack_spikes
        packed = pack_spikes(spikes, pack_dim)
    else:
        packed = torch.empty(0, dtype=torch.int32, device=x.device)
    return spikes.to(x.dtype), v_last.to(x.dtype), membrane.to(x.dtype), saved, packed


def lif_bwd(grad_spikes, grad_v_last, grad_membrane, x, v, saved, shape, dtype, has_v, decay,
            input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset):
    steps = shape[0]
    n = math.prod(shape[1:])
    words = (n + 31) // 32
    device = saved.device if x is None else x.device
    gx = torch.empty(shape, dtype=torch.float32, device=device)
    gv0 = torch.empty(shape[1:] if has_v else (0,), dtype=torch.float32, device=device)

    def opt(g):
        return None if g is None or g.numel() == 0 else _f32(g)

    gs, gvl, gm = opt(grad_spikes), opt(grad_v_last), opt(grad_membrane)
    bits = _saves_bits(surrogate, detach_reset)
    if steps == 0 or n == 0:
        gv0.zero_()
        return gx.to(dtype), gv0.to(dtype)
    xf = None if bits else _f32(x)
    v0 = _f32(v) if (not bits and v is not None) else None
    hist = None if bits else torch.empty((steps, n), dtype=torch.float32, device=device)
    dummy = gx
    grid = (triton.cdiv(n, BLOCK),)
    _lif_bwd_kernel[grid](
        gs if gs is not None else dummy, gvl if gvl is not None else dummy, gm if gm is not None else dummy,
        xf if xf is not None else dummy, v0 if v0 is not None else dummy, saved if bits else dummy,
        hist if hist is not None else dummy, gx, gv0 if has_v else dummy,
        steps, n, words, float(decay), float(input_scale), float((1.0 - decay) * (v_reset or 0.0)),
        float(v_threshold), float(v_reset or 0.0), float(alpha), float(alpha / (2 * math.tanh(alpha / 2))),
        HAS_GS=gs is not None, HAS_GVL=gvl is not None, HAS_GM=gm is not None,
        HAS_V0=v0 is not None, STORE_GV0=bool(has_v), HARD=v_reset is not None, DETACH=bool(detach_reset), BITS=bits,
        SURROGATE=int(surrogate), BLOCK=BLOCK, enable_fp_fusion=False)
    return gx.to(dtype), gv0.to(dtype)
