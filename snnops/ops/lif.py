"""The multi-timestep LIF neuron, fused over time: ``torch.ops.snnops.lif_fwd/lif_bwd``
and the public :func:`lif`."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import reference, surrogate as _surrogate
from ._params import flag, number
from ._registry import define


def _triton_fwd(*args):
    from ..kernels import lif as k
    return k.lif_fwd(*args)


def _triton_bwd(*args):
    from ..kernels import lif as k
    return k.lif_bwd(*args)


_PARAMS = ("float decay, float input_scale, float v_threshold, float? v_reset, int surrogate, "
           "float alpha, bool detach_reset")

define(
    f"lif_fwd(Tensor x, Tensor? v, {_PARAMS}, bool return_membrane, bool save_for_backward, int? pack_dim)"
    " -> (Tensor spikes, Tensor v_last, Tensor membrane, Tensor saved, Tensor packed)",
    cpu_reference=reference.lif_fwd, cuda_kernel=_triton_fwd)
define(
    "lif_bwd(Tensor? grad_spikes, Tensor? grad_v_last, Tensor? grad_membrane, Tensor? x, Tensor? v,"
    f" Tensor saved, SymInt[] shape, ScalarType dtype, bool has_v, {_PARAMS})"
    " -> (Tensor grad_x, Tensor grad_v)",
    cpu_reference=reference.lif_bwd, cuda_kernel=_triton_bwd)


def saves_bits(surrogate_kind: int, detach_reset: bool) -> bool:
    """True when the backward needs only bits: the rectangular surrogate's window
    (1 bit) and, for a hard reset, the spike (1 bit). Otherwise the input is kept
    and the membrane recomputed from it in the backward."""
    return surrogate_kind == _surrogate.Rectangular.kind and detach_reset


def saved_bits_per_neuron_step(surrogate, detach_reset: bool, hard_reset: bool,
                               input_dtype=torch.float32) -> int:
    """Bits the op keeps for backward per neuron and timestep."""
    if saves_bits(_surrogate.get(surrogate).kind, detach_reset):
        return 2 if hard_reset else 1
    return torch.finfo(input_dtype).bits


@torch.library.register_fake("snnops::lif_fwd")
def _lif_fwd_fake(x, v, decay, input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset,
                  return_membrane, save_for_backward, pack_dim):
    spikes = torch.empty_like(x, memory_format=torch.contiguous_format)
    v_last = x.new_empty(x.shape[1:])
    membrane = torch.empty_like(spikes) if return_membrane else x.new_empty(0)
    if save_for_backward and saves_bits(surrogate, detach_reset):
        n = 1
        for d in x.shape[1:]:
            n = n * d
        planes = 1 if v_reset is None else 2
        saved = x.new_empty((planes, x.shape[0], (n + 31) // 32), dtype=torch.int32)
    else:
        saved = x.new_empty(0, dtype=torch.int32)
    if pack_dim is not None:
        torch._check(1 <= pack_dim < x.dim(), lambda: f"snnops.lif: pack_dim must name a non-time dimension, got {pack_dim}")
        shape = [s for d, s in enumerate(x.shape) if d != pack_dim] + [(x.shape[pack_dim] + 31) // 32]
        packed = x.new_empty(shape, dtype=torch.int32)
    else:
        packed = x.new_empty(0, dtype=torch.int32)
    return spikes, v_last, membrane, saved, packed


@torch.library.register_fake("snnops::lif_bwd")
def _lif_bwd_fake(grad_spikes, grad_v_last, grad_membrane, x, v, saved, shape, dtype, has_v, decay,
                  input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    grad_x = saved.new_empty(shape, dtype=dtype)
    grad_v = saved.new_empty(shape[1:] if has_v else (0,), dtype=dtype)
    del compute
    return grad_x, grad_v


def _setup_context(ctx, inputs, output):
    (x, v, decay, input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset,
     return_membrane, save_for_backward, pack_dim) = inputs
    saved = output[3]
    # Unused outputs (v_last, the membrane) get None instead of materialized zeros:
    # measured 0.6 ms of zero-filling plus their reads per lif-T4 backward.
    ctx.set_materialize_grads(False)
    ctx.params = (decay, input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset)
    ctx.shape = x.shape
    ctx.dtype = x.dtype
    ctx.has_v = v is not None
    ctx.bits = saves_bits(surrogate, detach_reset)
    if ctx.bits:
        # Only the bits are kept: x and v may be freed as soon as the forward ends.
        ctx.save_for_backward(saved)
    else:
        ctx.save_for_backward(x, v, saved)
    ctx.save_ok = save_for_backward


def _backward(ctx, grad_spikes, grad_v_last, grad_membrane, grad_saved, grad_packed):
    if not ctx.save_ok:
        raise RuntimeError("snnops.lif_fwd was called with save_for_backward=False; it cannot be differentiated")
    if ctx.bits:
        (saved,) = ctx.saved_tensors
        x = v = None
    else:
        x, v, saved = ctx.saved_tensors
    grad_x, grad_v = torch.ops.snnops.lif_bwd(
        grad_spikes, grad_v_last, grad_membrane, x, v, saved, list(ctx.shape), ctx.dtype, ctx.has_v,
        *ctx.params)
    return grad_x, (grad_v if ctx.has_v else None), None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("snnops::lif_fwd", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------- public API

def resolve_params(*, tau, decay_input, v_threshold, v_reset, detach_reset, decay, surrogate):
    """Validate SpikingJelly-style arguments and map them to the kernel's canonical
    form ``h = decay * v + input_scale * x + (1 - decay) * v_reset``.

    Returns ``(decay, input_scale, v_threshold, v_reset, surrogate_obj, detach_reset)``.
    """
    op = "snnops.lif"
    decay_input = flag(op, "decay_input", decay_input)
    detach_reset = flag(op, "detach_reset", detach_reset)
    if decay is not None:
        if tau is not None:
            raise ValueError("snnops.lif: give either tau (SpikingJelly form) or decay (factor form), not both")
        decay = number(op, "decay", decay)
        if not (0.0 <= decay <= 1.0):
            raise ValueError(f"snnops.lif: decay must be in [0, 1], got {decay}")
        input_scale = 1.0
    else:
        tau = 2.0 if tau is None else number(op, "tau", tau)
        if not (tau > 1.0 and math.isfinite(tau)):
            raise ValueError(f"snnops.lif: tau must be a finite number > 1, got {tau}")
        decay = 1.0 - 1.0 / tau
        input_scale = 1.0 / tau if decay_input else 1.0
    v_threshold = number(op, "v_threshold", v_threshold, finite=True)
    if v_reset is not None:
        v_reset = number(op, "v_reset", v_reset)
        if not math.isfinite(v_reset):
            raise ValueError(f"snnops.lif: v_reset must be a finite float or None (soft reset), got {v_reset}")
    sg = _surrogate.get(surrogate)
    if isinstance(sg, _surrogate.Triangle) and v_threshold <= 0:
        raise ValueError(f"snnops.lif: the triangle surrogate needs v_threshold > 0, got {v_threshold}")
    return decay, input_scale, v_threshold, v_reset, sg, detach_reset


def check_lif_input(x_seq, v):
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"snnops.lif: x_seq must be a tensor [T, ...], got {type(x_seq).__name__}")
    if x_seq.dim() < 1:
        raise ValueError("snnops.lif: x_seq must have a leading time dimension [T, ...], got a 0-d tensor")
    if not x_seq.is_floating_point():
        raise TypeError(f"snnops.lif: x_seq must be floating point (float16/bfloat16/float32/float64), got {x_seq.dtype}")
    if v is not None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"snnops.lif: v must be a tensor or None, got {type(v).__name__}")
        if tuple(v.shape) != tuple(x_seq.shape[1:]):
            raise ValueError(f"snnops.lif: v must have the shape of one timestep of x_seq "
                             f"{tuple(x_seq.shape[1:])}, got {tuple(v.shape)}")
        if not v.is_floating_point():
            raise TypeError(f"snnops.lif: v must be floating point, got {v.dtype}")
        if v.device != x_seq.device:
            raise ValueError(f"snnops.lif: v is on {v.device} but x_seq is on {x_seq.device}")


def lif(x_seq: torch.Tensor, v: Optional[torch.Tensor] = None, *, tau: Optional[float] = None,
        decay_input: bool = True, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
        detach_reset: bool = False, decay: Optional[float] = None, surrogate="sigmoid",
        return_membrane: bool = False, pack_dim: Optional[int] = None):
    """Multi-timestep leaky integrate-and-fire neuron, fused over time.

    Args:
        x_seq: input current ``[T, B, ...]`` (any trailing shape), time-major.
        v: membrane at t = -1, shape ``[B, ...]``; None means zeros.
        tau, decay_input, v_threshold, v_reset, detach_reset: as SpikingJelly's
            ``LIFNode``: ``h = v + (x - (v - v_reset)) / tau`` with ``decay_input``,
            ``h = v - (v - v_reset) / tau + x`` without; ``v_reset=None`` is a soft
            reset (``v = h - s * v_threshold``), a float a hard reset to it. Default tau 2.
        decay: the papers' factor form instead of tau: ``h = decay * v + x`` (leaking
            towards ``v_reset``; 0.25 in TT-SNN / Joint A-SNN, 0.2 in LitE-SNN).
        surrogate: a name (``snnops.surrogate.names()``) or a ``snnops.surrogate`` object.
        return_membrane: also return the membrane after each step's reset.
        pack_dim: also return the spikes bit-packed along this feature dimension of
            ``x_seq`` (e.g. 2 for ``[T, B, C, H, W]``, -1 for ``[T, B, F]``), in the
            layout of :func:`snnops.pack_spikes` (the dim moves last as int32 words), for
            a following spike layer: ``snnops.spike_conv1x1(packed, w, spikes_float=spikes)``
            reads only the bits and sends its gradient into the float spikes.

    A neuron fires when ``h >= v_threshold``. Returns ``(spike_seq, v_last)``, plus
    ``membrane_seq`` with ``return_membrane``, plus ``packed`` with ``pack_dim`` (last);
    spikes have the dtype of ``x_seq`` (float16/bfloat16 compute in float32).
    """
    check_lif_input(x_seq, v)
    decay, input_scale, v_threshold, v_reset, sg, detach_reset = resolve_params(
        tau=tau, decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset,
        detach_reset=detach_reset, decay=decay, surrogate=surrogate)
    if pack_dim is not None:
        if not isinstance(pack_dim, int) or not (-x_seq.dim() < pack_dim < x_seq.dim()) or pack_dim % x_seq.dim() == 0:
            raise ValueError(f"snnops.lif: pack_dim must name a non-time dimension of x_seq "
                             f"(shape {tuple(x_seq.shape)}), got {pack_dim!r}")
        pack_dim = pack_dim % x_seq.dim()
    need_grad = torch.is_grad_enabled() and (x_seq.requires_grad or (v is not None and v.requires_grad))
    spikes, v_last, membrane, _, packed = torch.ops.snnops.lif_fwd(
        x_seq, v, decay, input_scale, v_threshold, v_reset, sg.kind, sg.alpha, detach_reset,
        return_membrane, need_grad, pack_dim)
    out = (spikes, v_last)
    if return_membrane:
        out = out + (membrane,)
    if pack_dim is not None:
        out = out + (packed,)
    return out
