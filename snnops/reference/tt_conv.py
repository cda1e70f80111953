"""Reference of the tensor-train convolutions (``ptt_conv``, ``tt_block``) and of the
whole TT layer, written as the plain ``F.conv2d`` compositions the TT-SNN authors run.

Cores are stored as convolution weights (``../shared/docs/METHODS.md`` section 2):

    g1 [r1, Cin, 1, 1]   1x1            (G1[a, i]      = g1[a, i, 0, 0])
    g2 [r2, r1, 3, 1]    3x1, pad (1,0) (G2[b, a, kh]  = g2[b, a, kh, 0])
    g3 [r3, r2, 1, 3]    1x3, pad (0,1) (G3[c, b, kw]  = g3[c, b, 0, kw])
    g4 [Cout, r3, 1, 1]  1x1            (G4[o, c]      = g4[o, c, 0, 0])

STT: ``y = G4(G3(G2(G1 x)))``; PTT: ``y = G4((G2(o) + G3(o)) / 2)`` with ``o = G1 x``;
HTT: PTT at "full" timesteps, ``y = G4(G1 x)`` at "half" ones. A 2x2 max-pool may follow
G4 (where a block changes resolution, as in the authors' code).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .spike_gemm import unpack_spikes

__all__ = ["ptt_conv", "ptt_conv_bwd", "tt_block", "tt_block_bwd", "tt_conv", "tt_conv_bwd", "tt_layer",
           "pool_code", "merge_stt", "merge_ptt", "merge_half", "step_of_images"]


def ptt_conv(o: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """``(conv3x1(o, w2) + conv1x3(o, w3)) / 2``, same-size padding, stride 1."""
    return (F.conv2d(o, w2, padding=(1, 0)) + F.conv2d(o, w3, padding=(0, 1))) / 2


def _grads(outputs, inputs, grad, mask):
    """Gradients for the inputs whose mask is True; an empty tensor for the others
    (the convention of every ``*_bwd`` op here: nothing is computed that is not asked)."""
    need = [t for t, m in zip(inputs, mask) if m]
    got = iter(torch.autograd.grad(outputs, need, grad, allow_unused=True) if need else ())
    res = []
    for t, m in zip(inputs, mask):
        if not m:
            res.append(t.new_empty(0))
            continue
        g = next(got)
        res.append(torch.zeros_like(t) if g is None else g)
    return res


def ptt_conv_bwd(grad, o, w2, w3, output_mask: Sequence[bool]):
    """Gradients of :func:`ptt_conv` for ``(o, w2, w3)``; empty where the mask is False."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (o, w2, w3)]
        y = ptt_conv(*leaves)
        return tuple(_grads(y, leaves, grad, output_mask))


def step_of_images(n: int, schedule: Sequence[bool]) -> list:
    """For ``n`` images laid out ``[T*B]`` (time-major), whether image i is a full step."""
    if len(schedule) == 0:
        return [True] * n
    steps = len(schedule)
    if n % steps:
        raise ValueError(f"snnops.tt_block: {n} images are not a whole number of the schedule's "
                         f"{steps} timesteps")
    per = n // steps
    return [bool(schedule[i // per]) for i in range(n)]


def pool_code(y: torch.Tensor):
    """2x2 max-pool of ``y`` (floor mode) and the position of each maximum inside its
    window as a code ``2*dh + dw`` (uint8): the first maximum in scan order, as
    ``F.max_pool2d`` picks it."""
    pooled, index = F.max_pool2d(y, 2, return_indices=True)
    w = y.shape[-1]
    code = ((index // w) % 2) * 2 + (index % w) % 2
    return pooled, code.to(torch.uint8)


def _block_core(o, w2, w3, w4, parallel: bool, full: Optional[list]):
    if not parallel:
        mid = F.conv2d(F.conv2d(o, w2, padding=(1, 0)), w3, padding=(0, 1))
        return F.conv2d(mid, w4)
    if full is None or all(full):
        return F.conv2d(ptt_conv(o, w2, w3), w4)
    # Half steps skip G2/G3 entirely (the whole point of HTT): only full images go through ptt.
    idx = torch.tensor([i for i, f in enumerate(full) if f], dtype=torch.int64, device=o.device)
    mid = o
    if idx.numel():
        mid = o.index_copy(0, idx, ptt_conv(o.index_select(0, idx), w2, w3))
    return F.conv2d(mid, w4)


def tt_block(o, w2, w3, w4, parallel: bool, schedule: Sequence[bool], pool: bool):
    """``G4(ptt(o))`` (parallel) or ``G4(G3(G2(o)))`` (sequential), optionally a 2x2
    max-pool after; with a schedule (parallel only), images of half timesteps are
    ``G4(o)``. ``o = G1(x)`` is ``[T*B, r, H, W]``.

    Returns ``(y, pool_index)``; ``pool_index`` is uint8 ``[N, Cout, H//2, W//2]`` (the
    argmax code of :func:`pool_code`) when pooling, else an empty uint8 tensor.
    """
    full = step_of_images(o.shape[0], schedule) if len(schedule) else None
    y = _block_core(o, w2, w3, w4, parallel, full)
    if pool:
        return pool_code(y)
    return y, torch.empty(0, dtype=torch.uint8, device=o.device)


def tt_block_bwd(grad_y, o, w2, w3, w4, pool_index, parallel: bool, schedule: Sequence[bool], pool: bool,
                 output_mask: Sequence[bool]):
    """Gradients of :func:`tt_block` (its ``y``) for ``(o, w2, w3, w4)``."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (o, w2, w3, w4)]
        y, _ = tt_block(*leaves, parallel, schedule, pool)
        return tuple(_grads(y, leaves, grad_y, output_mask))


def tt_layer(x, g1, g2, g3, g4, *, parallel: bool, schedule: Sequence[bool] = (), pool: bool = False):
    """The whole TT layer on ``x [T*B, Cin, H, W]`` as separate ``F.conv2d`` calls (the
    authors' formulation); ``schedule`` (length T, True = full step) only in parallel mode."""
    o = F.conv2d(x, g1)
    return tt_block(o, g2, g3, g4, parallel, schedule, pool)[0]


def tt_conv(packed, x, g1, w2, w3, w4, parallel: bool, schedule: Sequence[bool], pool: bool):
    """The ``tt_conv`` op: the TT layer on spikes bit-packed along the channels
    (``packed`` int32 ``[N, H, W, ceil(Cin/32)]``, see ``snnops.pack_spikes``); ``x`` is
    the float spikes they came from (only its gradient matters). Returns ``(y, pool_index)``
    as :func:`tt_block`."""
    s = unpack_spikes(packed, g1.shape[1], 1, g1.dtype)
    return tt_block(F.conv2d(s, g1), w2, w3, w4, parallel, schedule, pool)


def tt_conv_bwd(grad_y, packed, g1, w2, w3, w4, pool_index, parallel: bool, schedule: Sequence[bool], pool: bool,
                output_mask: Sequence[bool]):
    """Gradients of :func:`tt_conv` for ``(x, g1, w2, w3, w4)``; the spikes' gradient is
    ``[N, Cin, H, W]``."""
    with torch.enable_grad():
        s = unpack_spikes(packed, g1.shape[1], 1, g1.dtype).requires_grad_()
        leaves = [s] + [t.detach().requires_grad_() for t in (g1, w2, w3, w4)]
        y, _ = tt_block(F.conv2d(leaves[0], leaves[1]), *leaves[2:], parallel, schedule, pool)
        return tuple(_grads(y, leaves, grad_y, output_mask))


# ------------------------------------------------------------------ merge formulas

def merge_stt(g1, g2, g3, g4) -> torch.Tensor:
    """The dense 3x3 kernel ``[Cout, Cin, 3, 3]`` equal to the STT composition:
    ``W[o, i, kh, kw] = sum_{a,b,c} G4[o,c] G3[c,b,kw] G2[b,a,kh] G1[a,i]``."""
    G1, G2, G3, G4 = g1[:, :, 0, 0], g2[:, :, :, 0], g3[:, :, 0, :], g4[:, :, 0, 0]
    return torch.einsum("oc,cbw,bah,ai->oihw", G4, G3, G2, G1)


def merge_ptt(g1, g2, g3, g4) -> torch.Tensor:
    """The dense 3x3 kernel (zero corners) equal to the PTT composition:
    ``W[o,i,kh,1] += 1/2 sum G4[o,c] G2[c,a,kh] G1[a,i]``, ``W[o,i,1,kw] += 1/2 sum G4 G3 G1``."""
    G1, G2, G3, G4 = g1[:, :, 0, 0], g2[:, :, :, 0], g3[:, :, 0, :], g4[:, :, 0, 0]
    w = G4.new_zeros(G4.shape[0], G1.shape[1], 3, 3)
    w[:, :, :, 1] += torch.einsum("oc,cah,ai->oih", G4, G2, G1) / 2
    w[:, :, 1, :] += torch.einsum("oc,caw,ai->oiw", G4, G3, G1) / 2
    return w


def merge_half(g1, g4) -> torch.Tensor:
    """The 1x1 kernel ``[Cout, Cin, 1, 1]`` of an HTT half step, ``G4 G1``."""
    return (g4[:, :, 0, 0] @ g1[:, :, 0, 0])[:, :, None, None]
