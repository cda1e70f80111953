"""Tensor-train convolutions: ``torch.ops.snnops.ptt_conv`` / ``tt_block`` (and their
``*_bwd``), and the public functional forms :func:`ptt_conv` and :func:`tt_conv`.

Ops:
  ptt_conv(o, w2, w3) -> y
      ``(conv3x1(o, w2) + conv1x3(o, w3)) / 2``, fused: o read once, 5 taps in one pass.
  ptt_conv_bwd(grad, o, w2, w3, output_mask) -> (grad_o, grad_w2, grad_w3)
  tt_block(o, w2, w3, w4, parallel, schedule, pool) -> (y, pool_index)
      everything after G1: ``G4(ptt(o))`` (parallel) or ``G4(G3(G2(o)))``, images of
      HTT half steps ``G4(o)`` (schedule: one bool per timestep, True = full; empty = all
      full), then optionally a 2x2 max-pool whose argmax codes (``2*dh + dw``, uint8)
      are the second output, kept for backward.
  tt_block_bwd(grad_y, o, w2, w3, w4, pool_index, parallel, schedule, pool, output_mask)
      -> (grad_o, grad_w2, grad_w3, grad_w4); the intermediates are recomputed from o.
  tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool) -> (y, pool_index, packed_out)
      the whole layer on spikes bit-packed along the channels (``snnops.pack_spikes``
      format, int32 ``[N, H, W, ceil(Cin/32)]``): G1 runs inside the same pass as the
      packed spike GEMM, so o = G1(s) stays in cache too. ``x`` is the float 0/1 spikes
      ``[N, Cin, H, W]``: with ``packed`` given it is never read (it receives the
      gradient); without, the kernel packs it band by band while it is in cache (a
      value other than 0/1 raises) and returns the words as ``packed_out`` (empty when
      ``packed`` was given), the one activation the backward needs. NCHW and
      channels-last spikes are packed where they lie; other layouts are copied first.
  tt_conv_bwd(grad_y, packed, g1, w2, w3, w4, pool_index, parallel, schedule, pool,
      output_mask) -> (grad_x, grad_g1, grad_w2, grad_w3, grad_w4); o is recomputed from
      the bits, so the packed spikes (1 bit each) are the only activation kept.

Float outputs are channels-last in memory (the kernels write a row of channels per
pixel); gradients not asked for in ``output_mask`` come back as empty tensors. The
only activation kept for backward is the block's input ``o`` (r channels).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import reference
from ._params import flag
from ._registry import define

__all__ = ["ptt_conv", "tt_conv", "tt_block", "first_core"]

_CL = torch.channels_last


def _cl(t):
    return t.contiguous(memory_format=_CL) if t.dim() == 4 and t.numel() else t


# The references, in the ops' output conventions (used when the native extension is absent).
def _ref_ptt_conv(o, w2, w3):
    return _cl(reference.ptt_conv(o, w2, w3))


def _ref_ptt_conv_bwd(grad, o, w2, w3, output_mask):
    go, g2, g3 = reference.ptt_conv_bwd(grad, o, w2, w3, output_mask)
    return _cl(go), g2, g3


def _ref_tt_block(o, w2, w3, w4, parallel, schedule, pool):
    y, idx = reference.tt_block(o, w2, w3, w4, parallel, schedule, pool)
    return _cl(y), _cl(idx)


def _ref_tt_block_bwd(grad_y, o, w2, w3, w4, pool_index, parallel, schedule, pool, output_mask):
    go, g2, g3, g4 = reference.tt_block_bwd(grad_y, o, w2, w3, w4, pool_index, parallel, schedule, pool,
                                            output_mask)
    return _cl(go), g2, g3, g4


def _ref_tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool):
    packed_out = packed.new_empty(0) if packed is not None else reference.pack_spikes(x, 1)
    y, idx = reference.tt_conv(packed if packed is not None else packed_out, x, g1, w2, w3, w4, parallel,
                               schedule, pool)
    return _cl(y), _cl(idx), packed_out


def _ref_tt_conv_bwd(grad_y, packed, g1, w2, w3, w4, pool_index, parallel, schedule, pool, output_mask):
    gx, g1g, g2, g3, g4 = reference.tt_conv_bwd(grad_y, packed, g1, w2, w3, w4, pool_index, parallel, schedule,
                                                pool, output_mask)
    return _cl(gx), g1g, g2, g3, g4


def _triton(name):
    def launch(*args):
        from ..kernels import tt_conv as k
        return getattr(k, name)(*args)
    launch.__name__ = f"triton_{name}"
    return launch


define("ptt_conv(Tensor o, Tensor w2, Tensor w3) -> Tensor",
       cpu_reference=_ref_ptt_conv, cuda_kernel=_triton("ptt_conv"))
define("ptt_conv_bwd(Tensor grad, Tensor o, Tensor w2, Tensor w3, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
       cpu_reference=_ref_ptt_conv_bwd, cuda_kernel=_triton("ptt_conv_bwd"))
define("tt_block(Tensor o, Tensor w2, Tensor w3, Tensor w4, bool parallel, bool[] schedule, bool pool)"
       " -> (Tensor y, Tensor pool_index)",
       cpu_reference=_ref_tt_block, cuda_kernel=_triton("tt_block"))
define("tt_block_bwd(Tensor grad_y, Tensor o, Tensor w2, Tensor w3, Tensor w4, Tensor pool_index, bool parallel,"
       " bool[] schedule, bool pool, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)",
       cpu_reference=_ref_tt_block_bwd, cuda_kernel=_triton("tt_block_bwd"))
define("tt_conv(Tensor? packed, Tensor? x, Tensor g1, Tensor w2, Tensor w3, Tensor w4, bool parallel,"
       " bool[] schedule, bool pool) -> (Tensor y, Tensor pool_index, Tensor packed_out)",
       cpu_reference=_ref_tt_conv, cuda_kernel=_triton("tt_conv"))
define("tt_conv_bwd(Tensor grad_y, Tensor packed, Tensor g1, Tensor w2, Tensor w3, Tensor w4, Tensor pool_index,"
       " bool parallel, bool[] schedule, bool pool, bool[5] output_mask)"
       " -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
       cpu_reference=_ref_tt_conv_bwd, cuda_kernel=_triton("tt_conv_bwd"))


# ---------------------------------------------------------------------------- fakes

def _empty_cl(shape, like, dtype=None):
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=_CL)


def _grad_or_empty(need, t, channels_last=False):
    if not need:
        return t.new_empty(0)
    return _empty_cl(t.shape, t) if channels_last else torch.empty_like(t, memory_format=torch.contiguous_format)


@torch.library.register_fake("snnops::ptt_conv")
def _ptt_conv_fake(o, w2, w3):
    return _empty_cl(o.shape, o)


@torch.library.register_fake("snnops::ptt_conv_bwd")
def _ptt_conv_bwd_fake(grad, o, w2, w3, output_mask):
    return (_grad_or_empty(output_mask[0], o, True), _grad_or_empty(output_mask[1], w2),
            _grad_or_empty(output_mask[2], w3))


def _block_out_shape(o, w4, pool):
    n, _, h, w = o.shape
    return (n, w4.shape[0], h // 2, w // 2) if pool else (n, w4.shape[0], h, w)


@torch.library.register_fake("snnops::tt_block")
def _tt_block_fake(o, w2, w3, w4, parallel, schedule, pool):
    shape = _block_out_shape(o, w4, pool)
    idx = _empty_cl(shape, o, torch.uint8) if pool else o.new_empty(0, dtype=torch.uint8)
    return _empty_cl(shape, o), idx


@torch.library.register_fake("snnops::tt_block_bwd")
def _tt_block_bwd_fake(grad_y, o, w2, w3, w4, pool_index, parallel, schedule, pool, output_mask):
    return (_grad_or_empty(output_mask[0], o, True), _grad_or_empty(output_mask[1], w2),
            _grad_or_empty(output_mask[2], w3), _grad_or_empty(output_mask[3], w4))


def _conv_out_shape(packed, w4, pool):
    n, h, w, _ = packed.shape
    return (n, w4.shape[0], h // 2, w // 2) if pool else (n, w4.shape[0], h, w)


@torch.library.register_fake("snnops::tt_conv")
def _tt_conv_fake(packed, x, g1, w2, w3, w4, parallel, schedule, pool):
    if packed is None:
        n, _, h, w = x.shape
        packed_out = g1.new_empty((n, h, w, (g1.shape[1] + 31) // 32), dtype=torch.int32)
        words = packed_out
    else:
        packed_out = g1.new_empty(0, dtype=torch.int32)
        words = packed
    shape = _conv_out_shape(words, w4, pool)
    idx = _empty_cl(shape, g1, torch.uint8) if pool else g1.new_empty(0, dtype=torch.uint8)
    return _empty_cl(shape, g1), idx, packed_out


@torch.library.register_fake("snnops::tt_conv_bwd")
def _tt_conv_bwd_fake(grad_y, packed, g1, w2, w3, w4, pool_index, parallel, schedule, pool, output_mask):
    n, h, w, _ = packed.shape
    gx = _empty_cl((n, g1.shape[1], h, w), g1) if output_mask[0] else g1.new_empty(0)
    return (gx, _grad_or_empty(output_mask[1], g1), _grad_or_empty(output_mask[2], w2),
            _grad_or_empty(output_mask[3], w3), _grad_or_empty(output_mask[4], w4))


# ---------------------------------------------------------------------------- autograd

def _ptt_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _ptt_backward(ctx, grad):
    o, w2, w3 = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:3])
    go, g2, g3 = torch.ops.snnops.ptt_conv_bwd(grad, o, w2, w3, mask)
    return tuple(g if m else None for g, m in zip((go, g2, g3), mask))


torch.library.register_autograd("snnops::ptt_conv", _ptt_backward, setup_context=_ptt_setup)


def _block_setup(ctx, inputs, output):
    o, w2, w3, w4, parallel, schedule, pool = inputs
    ctx.save_for_backward(o, w2, w3, w4, output[1])
    ctx.params = (parallel, list(schedule), pool)


def _block_backward(ctx, grad_y, grad_index):
    o, w2, w3, w4, pool_index = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    parallel, schedule, pool = ctx.params
    if grad_y is None:
        grad_y = torch.zeros(_block_out_shape(o, w4, pool), dtype=o.dtype, device=o.device)
    grads = torch.ops.snnops.tt_block_bwd(grad_y, o, w2, w3, w4, pool_index, parallel, schedule, pool, mask)
    return tuple(g if m else None for g, m in zip(grads, mask)) + (None, None, None)


torch.library.register_autograd("snnops::tt_block", _block_backward, setup_context=_block_setup)


def _conv_setup(ctx, inputs, output):
    packed, x, g1, w2, w3, w4, parallel, schedule, pool = inputs
    # The packed spikes are the only activation kept (x is not saved).
    ctx.save_for_backward(packed if packed is not None else output[2], g1, w2, w3, w4, output[1])
    ctx.params = (parallel, list(schedule), pool)


def _conv_backward(ctx, grad_y, grad_index, grad_packed):
    packed, g1, w2, w3, w4, pool_index = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[1], need[2], need[3], need[4], need[5]]
    parallel, schedule, pool = ctx.params
    if grad_y is None:
        grad_y = torch.zeros(_conv_out_shape(packed, w4, pool), dtype=g1.dtype, device=g1.device)
    grads = torch.ops.snnops.tt_conv_bwd(grad_y, packed, g1, w2, w3, w4, pool_index, parallel, schedule, pool, mask)
    return (None,) + tuple(g if m else None for g, m in zip(grads, mask)) + (None, None, None)


torch.library.register_autograd("snnops::tt_conv", _conv_backward, setup_context=_conv_setup)


# ---------------------------------------------------------------------------- public API

def _check_tensor(t, name, op, dim):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: {name} must be float32 or float64, got {t.dtype}")


def _check_ptt_weights(o, w2, w3, op):
    r = o.shape[1]
    if tuple(w2.shape) != (r, r, 3, 1):
        raise ValueError(f"{op}: w2 must be [r, r, 3, 1] = {(r, r, 3, 1)} for o with r = {r} channels, "
                         f"got {tuple(w2.shape)}")
    if tuple(w3.shape) != (r, r, 1, 3):
        raise ValueError(f"{op}: w3 must be [r, r, 1, 3] = {(r, r, 1, 3)} for o with r = {r} channels, "
                         f"got {tuple(w3.shape)}")


def _check_same(o, ws, op):
    for name, w in ws:
        if w.dtype != o.dtype:
            raise TypeError(f"{op}: {name} has dtype {w.dtype} but o has {o.dtype}")
        if w.device != o.device:
            raise ValueError(f"{op}: {name} is on {w.device} but o is on {o.device}")


def ptt_conv(o: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """``(conv3x1(o, w2) + conv1x3(o, w3)) / 2``, same-size padding, stride 1, fused.

    Args:
        o: ``[N, r, H, W]`` (any strides; channels-last is read without a copy).
        w2: ``[r, r, 3, 1]``; w3: ``[r, r, 1, 3]``.

    Returns ``[N, r, H, W]``, channels-last in memory. Differentiable in all three.
    """
    op = "snnops.ptt_conv"
    for name, t, d in (("o", o, 4), ("w2", w2, 4), ("w3", w3, 4)):
        _check_tensor(t, name, op, d)
    _check_ptt_weights(o, w2, w3, op)
    _check_same(o, (("w2", w2), ("w3", w3)), op)
    return torch.ops.snnops.ptt_conv(o, w2, w3)


def tt_block(o, w2, w3, w4, *, parallel: bool = True, schedule: Sequence[bool] = (), pool: bool = False):
    """Everything after G1 (see the module docstring); returns ``y`` (channels-last)."""
    op = "snnops.tt_block"
    parallel, pool, schedule = _flags(op, parallel, pool, schedule)
    for name, t in (("o", o), ("w2", w2), ("w3", w3), ("w4", w4)):
        _check_tensor(t, name, op, 4)
    _check_same(o, (("w2", w2), ("w3", w3), ("w4", w4)), op)
    r1 = o.shape[1]
    if parallel:
        _check_ptt_weights(o, w2, w3, op)
    else:
        if w2.shape[1:] != (r1, 3, 1):
            raise ValueError(f"{op}: w2 must be [r2, {r1}, 3, 1], got {tuple(w2.shape)}")
        if w3.shape[1:] != (w2.shape[0], 1, 3):
            raise ValueError(f"{op}: w3 must be [r3, {w2.shape[0]}, 1, 3], got {tuple(w3.shape)}")
        if not all(schedule):
            raise ValueError(f"{op}: half steps need the parallel form (HTT is PTT with half steps)")
    if w4.shape[1:] != (w3.shape[0], 1, 1):
        raise ValueError(f"{op}: w4 must be [Cout, {w3.shape[0]}, 1, 1], got {tuple(w4.shape)}")
    if schedule and o.shape[0] % len(schedule):
        raise ValueError(f"{op}: {o.shape[0]} images are not a whole number of the schedule's "
                         f"{len(schedule)} timesteps")
    return torch.ops.snnops.tt_block(o, w2, w3, w4, parallel, schedule, pool)[0]


def _flags(op, parallel, pool, schedule):
    """parallel and pool as booleans, schedule as a list of them (True: a full step)."""
    if isinstance(schedule, (str, bytes)) or not hasattr(schedule, "__iter__"):
        raise TypeError(f"{op}: schedule must be a sequence of booleans, got {type(schedule).__name__}")
    return (flag(op, "parallel", parallel), flag(op, "pool", pool),
            [flag(op, "schedule entries", s) for s in schedule])


def first_core(x: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
    """G1, the 1x1 convolution ``Cin -> r1``, as one channels-last GEMM; returns
    ``[N, r1, H, W]`` channels-last in memory (what ``tt_block`` reads without a copy)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    o = rows @ g1.view(g1.shape[0], c).t()
    return o.view(n, h, w, g1.shape[0]).permute(0, 3, 1, 2)


def _check_cores(g1, g2, g3, g4, parallel, op):
    for name, t in (("g1", g1), ("g2", g2), ("g3", g3), ("g4", g4)):
        _check_tensor(t, name, op, 4)
    _check_same(g1, (("g2", g2), ("g3", g3), ("g4", g4)), op)
    if g1.shape[2:] != (1, 1):
        raise ValueError(f"{op}: g1 must be [r1, Cin, 1, 1], got {tuple(g1.shape)}")


def tt_conv(x, g1, g2, g3, g4, *, parallel: bool = True, schedule: Sequence[bool] = (), pool: bool = False,
            spiking: bool = True, packed=None):
    """The TT layer on images: ``G4(ptt(G1 x))`` (or STT, HTT); see :class:`snnops.nn.TTConv2d`.

    Args:
        x: ``[N, Cin, H, W]`` float. With ``spiking`` (the default) its values must be
            0/1 spikes: G1 then runs on them bit-packed inside the fused kernel and only
            the packed bits are kept for backward. ``x`` may also be the packed int32
            words ``[N, H, W, ceil(Cin/32)]`` themselves (no gradient to the spikes then).
        packed: the packed words of ``x`` when the caller already has them (a LIF can
            emit them); ``x`` then only receives the gradient.
        spiking: False for real-valued inputs: G1 is a float GEMM and the tail
            (``tt_block``) keeps the rank-r map o for backward.

    The output is channels-last in memory.
    """
    op = "snnops.tt_conv"
    parallel, pool, schedule = _flags(op, parallel, pool, schedule)
    spiking = flag(op, "spiking", spiking)
    _check_cores(g1, g2, g3, g4, parallel, op)
    if not spiking:
        _check_tensor(x, "x", op, 4)
        if x.shape[1] != g1.shape[1]:
            raise ValueError(f"{op}: x has {x.shape[1]} channels but g1 expects {g1.shape[1]}")
        return tt_block(first_core(x.to(g1.dtype), g1), g2, g3, g4, parallel=parallel, schedule=schedule, pool=pool)
    if isinstance(x, torch.Tensor) and x.dtype == torch.int32:
        packed, x = x, None
    if x is None and packed is None:
        raise ValueError(f"{op}: give the spikes x, or their packed words")
    if x is not None:
        _check_tensor(x, "x", op, 4)
        _check_same(g1, (("x", x),), op)
        if x.shape[1] != g1.shape[1]:
            raise ValueError(f"{op}: x has {x.shape[1]} channels but g1 expects {g1.shape[1]}")
    if packed is not None:
        if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32 or packed.dim() != 4:
            raise ValueError(f"{op}: packed spikes must be int32 [N, H, W, ceil(Cin/32)], got "
                             f"{getattr(packed, 'dtype', type(packed).__name__)} "
                             f"{tuple(getattr(packed, 'shape', ()))}")
        if packed.shape[-1] != (g1.shape[1] + 31) // 32:
            raise ValueError(f"{op}: packed spikes have {packed.shape[-1]} words per pixel but Cin = {g1.shape[1]} "
                             f"needs {(g1.shape[1] + 31) // 32}")
        if x is not None and (tuple(x.shape[2:]) != tuple(packed.shape[1:3]) or x.shape[0] != packed.shape[0]):
            raise ValueError(f"{op}: x {tuple(x.shape)} and its packed words {tuple(packed.shape)} disagree")
    if parallel:
        _check_ptt_weights(g1.new_empty(0, g1.shape[0], 0, 0), g2, g3, op)
    elif not all(schedule):
        raise ValueError(f"{op}: half steps need the parallel form (HTT is PTT with half steps)")
    if g4.shape[1:] != (g3.shape[0], 1, 1):
        raise ValueError(f"{op}: g4 must be [Cout, {g3.shape[0]}, 1, 1], got {tuple(g4.shape)}")
    images = packed.shape[0] if packed is not None else x.shape[0]
    if schedule and images % len(schedule):
        raise ValueError(f"{op}: {images} images are not a whole number of the schedule's "
                         f"{len(schedule)} timesteps")
    try:
        return torch.ops.snnops.tt_conv(packed, x, g1, g2, g3, g4, parallel, schedule, pool)[0]
    except RuntimeError as exc:
        if "0/1 spikes" not in str(exc):
            raise
        raise ValueError(f"{exc}; use spiking=False (TTConv2d(..., spiking=False)) for real-valued inputs") from None
