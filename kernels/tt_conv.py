"""Triton kernels of the tensor-train convolutions (``torch.ops.snnops.ptt_conv`` /
``tt_block`` and their backward ops, on CUDA tensors).

Two generic kernels do all the multiply-adds, each a tile of pixels x channels fed to
``tl.dot``:

* ``_taps_kernel``: ``y[n, :, p] = sum_t W_t^T x[n, :, p + shift_t]`` for a list of
  (dh, dw) taps with zero padding: the fused 5-tap PTT cross (``ptt_conv`` reads ``o``
  once, both kernels applied in the same pass), the 3x1 / 1x3 STT cores, the 1x1 G4
  and G4^T (one tap), and the transposed taps of the backward; with per-image flags, the
  images of HTT half steps are copied through instead.
* ``_tap_wgrad_kernel``: ``dW_t = sum_{n, p} x[n, :, p + shift_t] g[n, :, p]^T``, the
  weight gradients of all of those.

Plus the 2x2 max-pool (first maximum, as ``F.max_pool2d``) and its un-pooling, and
the unpacking of bit-packed spikes for ``tt_conv`` (G1 then runs as a one-tap
``_taps_kernel`` on the 0/1 values, which tl.dot multiplies exactly). On the
GPU the TT block runs as two to three of these launches with the rank-r intermediate
in global memory (r channels, small next to the block's input and output); the CPU
kernel keeps it in cache instead. Outputs are channels-last like the CPU op's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BP, BC = 32, 16  # pixels and channels per tile (tl.dot needs >= 16)

PTT_TAPS = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
VERTICAL_TAPS = ((-1, 0), (0, 0), (1, 0))
HORIZONTAL_TAPS = ((0, -1), (0, 0), (0, 1))
ONE_TAP = ((0, 0),)


@triton.jit
def _taps_kernel(x_ptr, w_ptr, y_ptr, taps_ptr, flag_ptr, H, W, CI, CO,
                 sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                 NTAPS: tl.constexpr, HAS_FLAGS: tl.constexpr, ACC_F64: tl.constexpr,
                 BP: tl.constexpr, BCI: tl.constexpr, BCO: tl.constexpr):
    pid_p = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    blocks = tl.cdiv(H * W, BP)
    n = pid_p // blocks
    px = (pid_p % blocks) * BP + tl.arange(0, BP)
    pmask = px < H * W
    h = px // W
    w = px % W
    co = pid_c * BCO + tl.arange(0, BCO)
    cmask = co < CO
    if ACC_F64:
        acc = tl.zeros([BP, BCO], dtype=tl.float64)
    else:
        acc = tl.zeros([BP, BCO], dtype=tl.float32)
    full = 1
    if HAS_FLAGS:
        full = tl.load(flag_ptr + n)
    if full != 0:
        for t in range(NTAPS):
            dh = tl.load(taps_ptr + 2 * t)
            dw = tl.load(taps_ptr + 2 * t + 1)
            hh = h + dh
            ww = w + dw
            valid = pmask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            for c0 in range(0, CI, BCI):
                ci = c0 + tl.arange(0, BCI)
                a = tl.load(x_ptr + n * sxn + ci[None, :] * sxc + hh[:, None] * sxh + ww[:, None] * sxw,
                            mask=valid[:, None] & (ci[None, :] < CI), other=0.0)
                b = tl.load(w_ptr + (t * CI + ci[:, None]) * CO + co[None, :],
                            mask=(ci[:, None] < CI) & cmask[None, :], other=0.0)
                acc += tl.dot(a, b, input_precision="ieee")
    else:  # HTT half step: the middle is skipped, y = x (CI == CO)
        acc += tl.load(x_ptr + n * sxn + co[None, :] * sxc + h[:, None] * sxh + w[:, None] * sxw,
                       mask=pmask[:, None] & cmask[None, :], other=0.0)
    tl.store(y_ptr + n * syn + co[None, :] * syc + h[:, None] * syh + w[:, None] * syw, acc,
             mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _tap_wgrad_kernel(x_ptr, g_ptr, out_ptr, taps_ptr, flag_ptr, N, H, W, CI, CO,
                      sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                      HAS_FLAGS: tl.constexpr, ACC_F64: tl.constexpr,
                      BP: tl.constexpr, BCI: tl.constexpr, BCO: tl.constexpr):
    t = tl.program_id(0)
    ci = tl.program_id(1).to(tl.int64) * BCI + tl.arange(0, BCI)
    co = tl.program_id(2).to(tl.int64) * BCO + tl.arange(0, BCO)
    imask = ci < CI
    omask = co < CO
    dh = tl.load(taps_ptr + 2 * t)
    dw = tl.load(taps_ptr + 2 * t + 1)
    if ACC_F64:
        acc = tl.zeros([BCI, BCO], dtype=tl.float64)
    else:
        acc = tl.zeros([BCI, BCO], dtype=tl.float32)
    for n in range(N):
        full = 1
        if HAS_FLAGS:
            full = tl.load(flag_ptr + n)
        if full != 0:
            for p0 in range(0, H * W, BP):
                px = p0 + tl.arange(0, BP)
                pmask = px < H * W
                h = px // W
                w = px % W
                hh = h + dh
                ww = w + dw
                valid = pmask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                a = tl.load(x_ptr + n * sxn + ci[None, :] * sxc + hh[:, None] * sxh + ww[:, None] * sxw,
                            mask=valid[:, None] & imask[None, :], other=0.0)
                g = tl.load(g_ptr + n * sgn + co[None, :] * sgc + h[:, None] * sgh + w[:, None] * sgw,
                            mask=pmask[:, None] & omask[None, :], other=0.0)
                acc += tl.dot(tl.trans(a), g, input_precision="ieee")
    tl.store(out_ptr + (t * CI + ci[:, None]) * CO + co[None, :], acc, mask=imask[:, None] & omask[None, :])


@triton.jit
def _pool_kernel(y_ptr, out_ptr, idx_ptr, total, C, Hp, Wp, syn, syc, syh, syw, son, soc, soh, sow,
                 BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    pw = i % Wp
    ph = (i // Wp) % Hp
    c = (i // (Wp * Hp)) % C
    n = i // (Wp * Hp * C)
    base = y_ptr + n * syn + c * syc + (2 * ph) * syh + (2 * pw) * syw
    best = tl.load(base, mask=mask, other=0.0)
    code = tl.zeros([BLOCK], dtype=tl.int32)
    for d in range(1, 4):
        v = tl.load(base + (d // 2) * syh + (d % 2) * syw, mask=mask, other=0.0)
        take = (v > best) | (v != v)  # the first maximum; NaN wins, as F.max_pool2d
        best = tl.where(take, v, best)
        code = tl.where(take, d, code)
    o = n * son + c * soc + ph * soh + pw * sow
    tl.store(out_ptr + o, best, mask=mask)
    tl.store(idx_ptr + o, code.to(tl.uint8), mask=mask)


@triton.jit
def _unpool_kernel(g_ptr, idx_ptr, out_ptr, total, C, Hp, Wp, sgn, sgc, sgh, sgw, son, soc, soh, sow,
                   BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    pw = i % Wp
    ph = (i // Wp) % Hp
    c = (i // (Wp * Hp)) % C
    n = i // (Wp * Hp * C)
    gi = n * sgn + c * sgc + ph * sgh + pw * sgw
    g = tl.load(g_ptr + gi, mask=mask, other=0.0)
    code = tl.load(idx_ptr + gi, mask=mask, other=0).to(tl.int32)
    base = out_ptr + n * son + c * soc + (2 * ph) * soh + (2 * pw) * sow
    for d in range(4):
        tl.store(base + (d // 2) * soh + (d % 2) * sow, tl.where(code == d, g, 0.0), mask=mask)


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, total, C, H, W, words, son, soc, soh, sow, BLOCK: tl.constexpr):
    # out[n, c, h, w] = bit c % 32 of word c // 32 of pixel (n, h, w), packed [N, H, W, words]
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    w = i % W
    h = (i // W) % H
    c = (i // (W * H)) % C
    n = i // (W * H * C)
    word = tl.load(packed_ptr + ((n * H + h) * W + w) * words + c // 32, mask=mask, other=0)
    bit = (word >> (c % 32).to(tl.int32)) & 1
    tl.store(out_ptr + n * son + c * soc + h * soh + w * sow, bit.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pack_kernel(x_ptr, out_ptr, bad_ptr, total, C, H, W, words, sxn, sxc, sxh, sxw, BLOCK: tl.constexpr):
    # word w of pixel (n, h, w): bit b = (x[n, 32 w + b, h, w] == 1); counts non-0/1 values in bad
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # over N*H*W*words
    mask = i < total
    wd = i % words
    px = i // words
    w = px % W
    h = (px // W) % H
    n = px // (W * H)
    word = tl.zeros([BLOCK], dtype=tl.int32)
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    for b in range(32):
        c = wd * 32 + b
        m = mask & (c < C)
        v = tl.load(x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, mask=m, other=0.0)
        word = word | tl.where(v == 1.0, 1 << b, 0)
        bad += tl.where(m & (v != 0.0) & (v != 1.0), 1, 0)
    tl.store(out_ptr + i, word, mask=mask)
    tl.atomic_add(bad_ptr, tl.sum(bad, axis=0))


# ---------------------------------------------------------------------------- launchers

def _taps_tensor(taps, device):
    return torch.tensor([v for tap in taps for v in tap], dtype=torch.int32, device=device)


def _flags(n, schedule, device):
    if not schedule or all(schedule):
        return None
    per = n // len(schedule)
    return torch.tensor([1 if schedule[i // per] else 0 for i in range(n)], dtype=torch.int8, device=device)


def _cl_empty(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def taps(x, w_packed, tap_list, cout, flags=None, out=None):
    """``y[n, :, p] = sum_t w_packed[t]^T x[n, :, p + tap_t]`` (zero padding); images whose
    flag is 0 are copied through. ``w_packed``: [taps, Cin, Cout] contiguous."""
    n, cin, h, w = x.shape
    y = _cl_empty((n, cout, h, w), x) if out is None else out
    if y.numel() == 0:
        return y
    grid = (n * triton.cdiv(h * w, BP), triton.cdiv(cout, BC))
    _taps_kernel[grid](x, w_packed.contiguous(), y, _taps_tensor(tap_list, x.device),
                       flags if flags is not None else x, h, w, cin, cout,
                       *x.stride(), *y.stride(), NTAPS=len(tap_list), HAS_FLAGS=flags is not None,
                       ACC_F64=x.dtype == torch.float64, BP=BP, BCI=BC, BCO=BC)
    return y


def tap_wgrad(x, g, tap_list, flags=None):
    """``[taps, Cin, Cout]``: ``sum_{n, p} x[n, :, p + tap_t] g[n, :, p]^T`` (flagged images only)."""
    n, cin, h, w = x.shape
    cout = g.shape[1]
    out = torch.zeros((len(tap_list), cin, cout), dtype=x.dtype, device=x.device)
    if x.numel() == 0 or g.numel() == 0:
        return out
    grid = (len(tap_list), triton.cdiv(cin, BC), triton.cdiv(cout, BC))
    _tap_wgrad_kernel[grid](x, g, out, _taps_tensor(tap_list, x.device), flags if flags is not None else x,
                            n, h, w, cin, cout, *x.stride(), *g.stride(), HAS_FLAGS=flags is not None,
                            ACC_F64=x.dtype == torch.float64, BP=BP, BCI=BC, BCO=BC)
    return out


def pool(y):
    n, c, h, w = y.shape
    out = _cl_empty((n, c, h // 2, w // 2), y)
    idx = torch.empty(out.shape, dtype=torch.uint8, device=y.device, memory_format=torch.channels_last)
    total = out.numel()
    if total:
        _pool_kernel[(triton.cdiv(total, 256),)](y, out, idx, total, c, h // 2, w // 2, *y.stride(),
                                                 *out.stride(), BLOCK=256)
    return out, idx


def unpool(g, idx, h, w):
    n, c, hp, wp = g.shape
    out = _cl_empty((n, c, h, w), g).zero_()
    total = g.numel()
    if total:
        idx = idx.contiguous(memory_format=torch.channels_last)
        g = g.contiguous(memory_format=torch.channels_last)
        _unpool_kernel[(triton.cdiv(total, 256),)](g, idx, out, total, c, hp, wp, *g.stride(), *out.stride(),
                                                   BLOCK=256)
    return out


# Packed weights, [taps, in, out]; the PTT taps carry the 1/2 of the mean, the centre
# tap is shared by the 3x1 and the 1x3 kernel.
def ptt_forward_weights(w2, w3):
    a, c = w2[:, :, :, 0], w3[:, :, 0, :]  # [out, in, 3]
    taps_ = torch.stack([a[..., 0], a[..., 2], c[..., 0], c[..., 2], a[..., 1] + c[..., 1]]) / 2
    return taps_.transpose(1, 2).contiguous()  # [5, in, out]


def ptt_backward_weights(w2, w3):
    return ptt_forward_weights(w2, w3).transpose(1, 2).contiguous()  # [5, out, in]


def _flip(tap_list):
    return tuple((-dh, -dw) for dh, dw in tap_list)


def _ptt_weight_grads(d):
    """[5, in, out] sums -> (grad w2 [out, in, 3, 1], grad w3 [out, in, 1, 3]); each tap carries 1/2."""
    d = d.transpose(1, 2) / 2  # [5, out, in]
    g2 = torch.stack([d[0], d[4], d[1]], dim=-1)[..., None]
    g3 = torch.stack([d[2], d[4], d[3]], dim=-1)[:, :, None, :]
    return g2.contiguous(), g3.contiguous()


def ptt_conv(o, w2, w3):
    return taps(o, ptt_forward_weights(w2, w3), PTT_TAPS, o.shape[1])


def ptt_conv_bwd(grad, o, w2, w3, output_mask):
    empty = o.new_empty(0)
    go = taps(grad, ptt_backward_weights(w2, w3), _flip(PTT_TAPS), o.shape[1]) if output_mask[0] else empty
    g2 = g3 = empty
    if output_mask[1] or output_mask[2]:
        g2, g3 = _ptt_weight_grads(tap_wgrad(o, grad, PTT_TAPS))
    return go, (g2 if output_mask[1] else empty), (g3 if output_mask[2] else empty)


def _middle(o, w2, w3, parallel, flags):
    """The rank-r map entering G4: ptt(o) (o itself at half steps) or G3(G2(o)); for STT
    also G2(o)."""
    if parallel:
        return taps(o, ptt_forward_weights(w2, w3), PTT_TAPS, o.shape[1], flags), None
    mid1 = taps(o, w2[:, :, :, 0].permute(2, 1, 0), VERTICAL_TAPS, w2.shape[0])
    return taps(mid1, w3[:, :, 0, :].permute(2, 1, 0), HORIZONTAL_TAPS, w3.shape[0]), mid1


def tt_block(o, w2, w3, w4, parallel, schedule, pool_after):
    flags = _flags(o.shape[0], schedule, o.device)
    mid, _ = _middle(o, w2, w3, parallel, flags)
    y = taps(mid, w4[:, :, 0, 0].t()[None], ONE_TAP, w4.shape[0])
    if pool_after:
        return pool(y)
    return y, o.new_empty(0, dtype=torch.uint8)


def tt_block_bwd(grad_y, o, w2, w3, w4, pool_index, parallel, schedule, pool_after, output_mask):
    n, r1, h, w = o.shape
    flags = _flags(n, schedule, o.device)
    gy = unpool(grad_y, pool_index, h, w) if pool_after else grad_y
    empty = o.new_empty(0)
    gp = taps(gy, w4[:, :, 0, 0][None], ONE_TAP, w4.shape[1])  # G4^T gy
    mid, mid1 = (None, None)
    if output_mask[3] or (not parallel and output_mask[2]):
        mid, mid1 = _middle(o, w2, w3, parallel, flags)
    g4 = tap_wgrad(mid, gy, ONE_TAP)[0].t()[:, :, None, None].contiguous() if output_mask[3] else empty
    go = g2 = g3 = empty
    if parallel:
        if output_mask[0]:
            go = taps(gp, ptt_backward_weights(w2, w3), _flip(PTT_TAPS), r1, flags)
        if output_mask[1] or output_mask[2]:
            g2, g3 = _ptt_weight_grads(tap_wgrad(o, gp, PTT_TAPS, flags))
    else:
        if output_mask[2]:
            g3 = tap_wgrad(mid1, gp, HORIZONTAL_TAPS).permute(2, 1, 0)[:, :, None, :].contiguous()
        if output_mask[0] or output_mask[1]:
            gmid = taps(gp, w3[:, :, 0, :].permute(2, 0, 1), _flip(HORIZONTAL_TAPS), w3.shape[1])
            if output_mask[1]:
                g2 = tap_wgrad(o, gmid, VERTICAL_TAPS).permute(2, 1, 0)[..., None].contiguous()
            if output_mask[0]:
                go = taps(gmid, w2[:, :, :, 0].permute(2, 0, 1), _flip(VERTICAL_TAPS), r1)
    return (go if output_mask[0] else empty, g2 if output_mask[1] else empty,
            g3 if output_mask[2] else empty, g4)


def unpack(packed, channels, dtype):
    n, h, w, words = packed.shape
    out = torch.empty((n, channels, h, w), dtype=dtype, device=packed.device)
    total = out.numel()
    if total:
        _unpack_kernel[(triton.cdiv(total, 256),)](packed.contiguous(), out, total, channels, h, w, words,
                                                   *out.stride(), BLOCK=256)
    return out


def pack(x):
    n, c, h, w = x.shape
    words = (c + 31) // 32
    out = torch.empty((n, h, w, words), dtype=torch.int32, device=x.device)
    bad = torch.zeros(1, dtype=torch.int32, device=x.device)
    total = out.numel()
    if total:
        _pack_kernel[(triton.cdiv(total, 128),)](x, out, bad, total, c, h, w, words, *x.stride(), BLOCK=128)
    if int(bad.item()):
        raise RuntimeError(f"snnops.tt_conv: x must hold 0/1 spikes; found {int(bad.item())} other values")
    return out


def tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool_after):
    packed_out = pack(x) if packed is None else g1.new_empty(0, dtype=torch.int32)
    words = packed_out if packed is None else packed
    s = unpack(words, g1.shape[1], g1.dtype)
    o = taps(s, g1[:, :, 0, 0].t()[None], ONE_TAP, g1.shape[0])
    y, idx = tt_block(o, w2, w3, w4, parallel, schedule, pool_after)
    return y, idx, packed_out


def tt_conv_bwd(grad_y, packed, g1, w2, w3, w4, pool_index, parallel, schedule, pool_after, output_mask):
    s = unpack(packed, g1.shape[1], g1.dtype)
    o = taps(s, g1[:, :, 0, 0].t()[None], ONE_TAP, g1.shape[0])  # recomputed, as on the CPU
    need_o = output_mask[0] or output_mask[1]
    go, g2, g3, g4 = tt_block_bwd(grad_y, o, w2, w3, w4, pool_index, parallel, schedule, pool_after,
                                  [need_o, output_mask[2], output_mask[3], output_mask[4]])
    empty = g1.new_empty(0)
    # channels-last, as the CPU op returns it (the spikes' layout in the models)
    gx = (taps(go, g1[:, :, 0, 0][None], ONE_TAP, g1.shape[1]).contiguous(memory_format=torch.channels_last)
          if output_mask[0] else empty)
    gg1 = tap_wgrad(s, go, ONE_TAP)[0].t()[:, :, None, None].contiguous() if output_mask[1] else empty
    return gx, gg1, g2, g3, g4
