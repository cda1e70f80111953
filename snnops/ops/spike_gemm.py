"""Spike GEMMs: ``Y = S W^T + b`` for 0/1 spikes S, float or bit-packed, with autograd.

Ops (``torch.ops.snnops.*``):
  spike_gemm(spikes, weight, bias, dim) -> (out, packed)
      packs the float spikes along ``dim`` (that dim moved last) and multiplies;
      ``packed`` is the only activation kept for backward (1 bit per spike).
  spike_gemm_packed(packed, weight, bias, spikes, dim) -> out
      from packed words; ``spikes`` (optional) is the float tensor they were made
      from: it is not read, it only receives the gradient dS = dY W.
  spike_gemm_bwd(grad_out, packed, weight, need_spikes, need_weight, need_bias)
      -> (dS rows, dW = dY^T S from the packed spikes, db)
  spike_gemm_lowbit(packed, planes, scale, bias, bits) -> out
      spikes times symmetric low-bit weights, bit-serially (inference; no autograd).

Public forms: :func:`spike_linear`, :func:`spike_conv1x1`, :func:`spike_linear_lowbit`,
:func:`quantize_weight`, :func:`lowbit_weight`, :class:`QuantizedWeight`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..reference.spike_gemm import packed_words
from ..reference.spike_gemm import spike_gemm as _ref_gemm, spike_gemm_bwd as _ref_bwd
from ..reference.spike_gemm import spike_gemm_lowbit as _ref_lowbit, spike_gemm_packed as _ref_packed
from ._params import flag, number
from ._registry import define
from .pack import pack_spikes, unpack_spikes

__all__ = ["pack_spikes", "unpack_spikes", "spike_linear", "spike_conv1x1", "spike_linear_lowbit", "quantize_weight", "lowbit_weight",
           "QuantizedWeight"]


def _triton(name, reference_fn):
    # The Triton kernels take fp32/fp16/bf16 weights; float64 runs the reference.
    def launch(*args):
        weight = args[1] if name != "spike_gemm_bwd" else args[2]
        if weight.dtype == torch.float64:
            return reference_fn(*args)
        from ..kernels import spike_gemm as k
        return getattr(k, name)(*args)
    launch.__name__ = f"triton_{name}"
    return launch


define("spike_gemm(Tensor spikes, Tensor weight, Tensor? bias, int dim) -> (Tensor out, Tensor packed)",
       cpu_reference=_ref_gemm, cuda_kernel=_triton("spike_gemm", _ref_gemm))
define("spike_gemm_packed(Tensor packed, Tensor weight, Tensor? bias, Tensor? spikes, int dim) -> Tensor",
       cpu_reference=_ref_packed, cuda_kernel=_triton("spike_gemm_packed", _ref_packed))
define("spike_gemm_bwd(Tensor grad_out, Tensor packed, Tensor weight, bool need_spikes, bool need_weight,"
       " bool need_bias) -> (Tensor grad_spikes, Tensor grad_weight, Tensor grad_bias)",
       cpu_reference=_ref_bwd, cuda_kernel=_triton("spike_gemm_bwd", _ref_bwd))


def _triton_lowbit(*args):
    from ..kernels import spike_gemm_lowbit as k
    return k.spike_gemm_lowbit(*args)


define("spike_gemm_lowbit(Tensor packed, Tensor planes, Tensor scale, Tensor? bias, int bits) -> Tensor",
       cpu_reference=_ref_lowbit, cuda_kernel=_triton_lowbit)


# ---------------------------------------------------------------------------- fakes

@torch.library.register_fake("snnops::spike_gemm")
def _spike_gemm_fake(spikes, weight, bias, dim):
    d = dim % spikes.dim()
    rows = [s for i, s in enumerate(spikes.shape) if i != d]
    out = spikes.new_empty((*rows, weight.shape[0]), dtype=weight.dtype)
    packed = spikes.new_empty((*rows, packed_words(spikes.shape[d])), dtype=torch.int32)
    return out, packed


@torch.library.register_fake("snnops::spike_gemm_packed")
def _spike_gemm_packed_fake(packed, weight, bias, spikes, dim):
    return packed.new_empty((*packed.shape[:-1], weight.shape[0]), dtype=weight.dtype)


@torch.library.register_fake("snnops::spike_gemm_bwd")
def _spike_gemm_bwd_fake(grad_out, packed, weight, need_spikes, need_weight, need_bias):
    n, k = weight.shape
    gs = weight.new_empty((*packed.shape[:-1], k) if need_spikes else (0,))
    gw = weight.new_empty((n, k) if need_weight else (0,))
    gb = weight.new_empty((n,) if need_bias else (0,))
    return gs, gw, gb


@torch.library.register_fake("snnops::spike_gemm_lowbit")
def _spike_gemm_lowbit_fake(packed, planes, scale, bias, bits):
    dtype = torch.float64 if scale.dtype == torch.float64 else torch.float32
    return packed.new_empty((*packed.shape[:-1], planes.shape[0]), dtype=dtype)


# ---------------------------------------------------------------------------- autograd

def _grads(ctx, grad_out, packed, weight, need_spikes, need_weight, need_bias):
    gs, gw, gb = torch.ops.snnops.spike_gemm_bwd(grad_out, packed, weight, need_spikes, need_weight, need_bias)
    grad_spikes = gs.movedim(-1, ctx.dim).to(ctx.spikes_dtype) if need_spikes else None
    return grad_spikes, (gw if need_weight else None), (gb if need_bias else None)


def _gemm_setup(ctx, inputs, output):
    spikes, weight, bias, dim = inputs
    ctx.save_for_backward(output[1], weight)  # the packed spikes: 1 bit per spike
    ctx.dim = dim % spikes.dim()
    ctx.spikes_dtype = spikes.dtype
    ctx.has_bias = bias is not None


def _gemm_backward(ctx, grad_out, grad_packed):
    packed, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    gs, gw, gb = _grads(ctx, grad_out, packed, weight, need[0] and ctx.spikes_dtype.is_floating_point,
                        need[1], need[2] and ctx.has_bias)
    return gs, gw, gb, None


torch.library.register_autograd("snnops::spike_gemm", _gemm_backward, setup_context=_gemm_setup)


def _packed_setup(ctx, inputs, output):
    packed, weight, bias, spikes, dim = inputs
    ctx.save_for_backward(packed, weight)
    ctx.has_spikes = spikes is not None
    ctx.dim = dim % spikes.dim() if spikes is not None else -1
    ctx.spikes_dtype = spikes.dtype if spikes is not None else weight.dtype
    ctx.has_bias = bias is not None


def _packed_backward(ctx, grad_out):
    packed, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    gs, gw, gb = _grads(ctx, grad_out, packed, weight, need[3] and ctx.has_spikes, need[1],
                        need[2] and ctx.has_bias)
    return None, gw, gb, gs, None


torch.library.register_autograd("snnops::spike_gemm_packed", _packed_backward, setup_context=_packed_setup)


# ---------------------------------------------------------------------------- checks

def _check_weight(weight, bias, op):
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: weight must be a tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{op}: weight must be floating point, got {weight.dtype}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError(f"{op}: bias must be a floating-point tensor or None")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.device != weight.device:
            raise ValueError(f"{op}: bias is on {bias.device} but weight is on {weight.device}")


def _check_spikes(spikes, weight, op, *, feature_dim, what):
    """Float spikes with K = weight.shape[1] features at ``feature_dim``, or packed int32 words."""
    if not isinstance(spikes, torch.Tensor):
        raise TypeError(f"{op}: spikes must be a tensor, got {type(spikes).__name__}")
    if spikes.device != weight.device:
        raise ValueError(f"{op}: spikes are on {spikes.device} but weight is on {weight.device}")
    k = weight.shape[1]
    if spikes.dtype == torch.int32:
        if spikes.shape[-1] != packed_words(k):
            raise ValueError(f"{op}: packed spikes (int32) must have ceil(in_features/32) = {packed_words(k)} words "
                             f"in their last dim for in_features={k}, got shape {tuple(spikes.shape)}")
        return True
    if not (spikes.is_floating_point() or spikes.dtype == torch.bool):
        raise TypeError(f"{op}: spikes must be float or bool 0/1 values, or int32 packed words, got {spikes.dtype}")
    if spikes.shape[feature_dim] != k:
        raise ValueError(f"{op}: spikes must be {what} with {k} features (weight's in_features) at dim "
                         f"{feature_dim}, got shape {tuple(spikes.shape)}")
    return False


def _check_spikes_float(spikes_float, packed_rows, k, dim, op):
    if spikes_float is None:
        return
    expect = list(packed_rows)
    expect.insert(dim % (len(expect) + 1), k)
    if not isinstance(spikes_float, torch.Tensor) or list(spikes_float.shape) != expect:
        got = tuple(spikes_float.shape) if isinstance(spikes_float, torch.Tensor) else type(spikes_float).__name__
        raise ValueError(f"{op}: spikes_float must be the float spikes the packed words were made from, shape "
                         f"{tuple(expect)}, got {got}")


# ---------------------------------------------------------------------------- public API

def spike_linear(spikes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                 spikes_float: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``Y = S W^T + b`` for 0/1 spikes, the linear layer after a spiking layer.

    Args:
        spikes: float/bool 0/1 ``[..., K]``, or int32 packed words ``[..., ceil(K/32)]``
            (see :func:`snnops.pack_spikes`; int32 always means packed).
        weight: ``[N, K]``; bias: ``[N]`` or None.
        spikes_float: with packed ``spikes`` only: the float spikes ``[..., K]`` they were
            made from (for example a LIF's float output). Not read; it receives the
            gradient ``dS = dY W``, so a packed input can sit inside a trained network.

    Returns ``[..., N]`` in ``weight.dtype``. Backward keeps only the packed spikes;
    ``dW = dY^T S`` is computed from them. Non-binary float spikes raise an error.
    """
    op = "snnops.spike_linear"
    _check_weight(weight, bias, op)
    packed = _check_spikes(spikes, weight, op, feature_dim=-1, what="[..., K]")
    if packed:
        _check_spikes_float(spikes_float, spikes.shape[:-1], weight.shape[1], -1, op)
        return torch.ops.snnops.spike_gemm_packed(spikes, weight, bias, spikes_float, -1)
    if spikes_float is not None:
        raise ValueError(f"{op}: spikes_float is only for packed (int32) spikes")
    if spikes.dim() == 0:
        raise ValueError(f"{op}: spikes must have at least one dimension")
    return torch.ops.snnops.spike_gemm(spikes, weight, bias, -1)[0]


def _pair(stride, op):
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if len(s) != 2 or not all(isinstance(v, int) and v >= 1 for v in s):
        raise ValueError(f"{op}: stride must be a positive int or a pair of them, got {stride}")
    return s


def spike_conv1x1(spikes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  stride=1, spikes_float: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1x1 convolution of 0/1 spikes: ``Y[..., o, h, w] = sum_c W[o, c] S[..., c, h, w] + b[o]``.

    Args:
        spikes: float/bool 0/1 ``[..., C, H, W]`` (NCHW, or ``[T, B, C, H, W]``), or int32
            packed words ``[..., H, W, ceil(C/32)]`` (packed along C).
        weight: ``[Cout, C, 1, 1]`` or ``[Cout, C]``; bias ``[Cout]`` or None.
        stride: int or pair: the 1x1 conv's stride (reads every stride-th position).
        spikes_float: with packed ``spikes`` only: the float ``[..., C, H, W]`` spikes they
            were made from, receiving the gradient (see :func:`spike_linear`).

    Returns ``[..., Cout, H', W']`` in ``weight.dtype``, laid out channels-last in memory
    (the GEMM writes one row per position; no transposing copy is made).
    """
    op = "snnops.spike_conv1x1"
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: weight must be a tensor, got {type(weight).__name__}")
    if weight.dim() == 4:
        if tuple(weight.shape[2:]) != (1, 1):
            raise ValueError(f"{op}: weight must be [Cout, C, 1, 1], got shape {tuple(weight.shape)}")
        w2 = weight.reshape(weight.shape[0], weight.shape[1])
    elif weight.dim() == 2:
        w2 = weight
    else:
        raise ValueError(f"{op}: weight must be [Cout, C, 1, 1] or [Cout, C], got shape {tuple(weight.shape)}")
    _check_weight(w2, bias, op)
    sh, sw = _pair(stride, op)
    if isinstance(spikes, torch.Tensor) and spikes.dtype == torch.int32:
        if spikes.dim() < 3:
            raise ValueError(f"{op}: packed spikes must be [..., H, W, words], got shape {tuple(spikes.shape)}")
        _check_spikes(spikes, w2, op, feature_dim=-1, what="")
        if (sh, sw) != (1, 1):
            spikes = spikes[..., ::sh, ::sw, :]
            if spikes_float is not None:
                spikes_float = spikes_float[..., ::sh, ::sw]
        _check_spikes_float(spikes_float, spikes.shape[:-1], w2.shape[1], -3, op)
        rows = torch.ops.snnops.spike_gemm_packed(spikes, w2, bias, spikes_float, -3)
    else:
        if isinstance(spikes, torch.Tensor) and spikes.dim() < 3:
            raise ValueError(f"{op}: spikes must be [..., C, H, W], got shape {tuple(spikes.shape)}")
        _check_spikes(spikes, w2, op, feature_dim=-3, what="[..., C, H, W]")
        if spikes_float is not None:
            raise ValueError(f"{op}: spikes_float is only for packed (int32) spikes")
        if (sh, sw) != (1, 1):
            spikes = spikes[..., ::sh, ::sw]
        rows = torch.ops.snnops.spike_gemm(spikes, w2, bias, -3)[0]
    return rows.movedim(-1, -3)


# ---------------------------------------------------------------------------- low-bit weights

# Step of LitE-SNN's symmetric mid-rise quantizer, in units of std(W) (half-wave
# Gaussian constants, docs of the method: c_1 .. c_4).
LITE_STEP = {1: 1.596, 2: 0.996, 3: 0.586, 4: 0.336}


@dataclass(frozen=True)
class QuantizedWeight:
    """A symmetric mid-rise ``bits``-bit weight ``[N, K]``, ready for :func:`spike_linear_lowbit`.

    ``weight[n, k] = (2 * codes[n, k] - (2**bits - 1)) * scale[n]`` (or one scalar scale),
    and 0 where ``mask`` is False (pruned). Levels are odd multiples of ``scale``:
    ``+-scale`` for 1 bit, ``{+-1, +-3} * scale`` for 2 bits, up to ``+-15 * scale`` for 4.
    ``planes`` is the packed form the kernel reads: int32 ``[N, bits + 1, ceil(K/32)]``,
    plane j < bits = bit j of the codes (AND mask), plane ``bits`` = mask.
    """
    codes: torch.Tensor
    scale: torch.Tensor
    bits: int
    mask: Optional[torch.Tensor]
    planes: torch.Tensor

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight these codes stand for (exact in float64; in float32 each level
        ``odd * scale`` rounds once if ``scale`` has more than 20 significant bits)."""
        levels = 2 * self.codes.to(torch.int64) - (2 ** self.bits - 1)
        if self.mask is not None:
            levels = levels * self.mask
        scale = self.scale.to(torch.float64)
        scale = scale.reshape(-1, 1) if scale.dim() == 1 else scale
        return (levels.to(torch.float64) * scale).to(dtype)


def _check_bits(bits, op):
    if bits not in (1, 2, 3, 4) or isinstance(bits, bool):
        raise ValueError(f"{op}: bits must be 1, 2, 3 or 4, got {bits!r}")


def lowbit_weight(codes: torch.Tensor, scale, bits: int, mask: Optional[torch.Tensor] = None) -> QuantizedWeight:
    """A :class:`QuantizedWeight` from codes already computed (``0 <= codes < 2**bits``)."""
    op = "snnops.lowbit_weight"
    _check_bits(bits, op)
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"{op}: codes must be an integer tensor [out_features, in_features]")
    n, k = codes.shape
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2 ** bits):
        raise ValueError(f"{op}: codes must lie in [0, {2 ** bits - 1}] for bits={bits}, "
                         f"got range [{int(codes.min())}, {int(codes.max())}]")
    scale = torch.as_tensor(scale, device=codes.device)
    if not scale.is_floating_point():
        scale = scale.to(torch.float32)
    if not (scale.numel() == 1 or tuple(scale.shape) == (n,)):
        raise ValueError(f"{op}: scale must be a scalar (per layer) or [{n}] (per channel), got {tuple(scale.shape)}")
    scale = scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (n, k):
            raise ValueError(f"{op}: mask must be a bool tensor of shape {(n, k)}")
        mask = mask.bool()
    codes = codes.to(torch.uint8)
    keep = mask if mask is not None else torch.ones(n, k, dtype=torch.bool, device=codes.device)
    planes = [(((codes >> j) & 1).bool() & keep) for j in range(bits)] + [keep]
    planes = pack_spikes(torch.stack(planes, dim=1), dim=-1)  # [N, bits + 1, words]
    return QuantizedWeight(codes=codes, scale=scale, bits=bits, mask=mask, planes=planes)


def quantize_weight(weight: torch.Tensor, bits: int, *, per_channel: bool = False, step=None,
                    mask: Optional[torch.Tensor] = None) -> QuantizedWeight:
    """Quantize ``weight [N, K]`` with LitE-SNN's symmetric mid-rise quantizer.

    ``Q(w) = clamp((round(w / step + 0.5) - 0.5) * step, +-(2**bits / 2 - 0.5) * step)``
    with ``step = LITE_STEP[bits] * std(W)`` (std over the kept weights, per output
    channel with ``per_channel``), unless ``step`` (scalar or ``[N]``) is given.
    ``mask`` (bool ``[N, K]``, False = pruned) zeroes weights. Returns codes with
    ``scale = step / 2``: ``Q(w) = (2 * code - (2**bits - 1)) * scale``.
    """
    op = "snnops.quantize_weight"
    _check_bits(bits, op)
    per_channel = flag(op, "per_channel", per_channel)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise TypeError(f"{op}: weight must be a floating-point tensor [out_features, in_features]")
    if step is not None and not isinstance(step, torch.Tensor):
        step = number(op, "step", step)
    w = weight.detach().to(torch.float32)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"{op}: mask must be a bool tensor of shape {tuple(w.shape)}")
        mask = mask.bool()
    if step is None:
        keep = mask if mask is not None else torch.ones_like(w, dtype=torch.bool)
        if per_channel:
            cnt = keep.sum(1).clamp_min(2).to(torch.float32)
            mean = (w * keep).sum(1) / cnt
            std = (((w - mean[:, None]) * keep) ** 2).sum(1).div(cnt - 1).sqrt()
        else:
            std = w[keep].std() if int(keep.sum()) > 1 else w.new_tensor(0.0)
        step = LITE_STEP[bits] * std
    step = torch.as_tensor(step, dtype=torch.float32, device=w.device)
    if per_channel and step.dim() == 0:
        step = step.expand(w.shape[0]).clone()
    if bool((step <= 0).any()) or not bool(torch.isfinite(step).all()):
        raise ValueError(f"{op}: the quantizer step must be finite and > 0 (got {step.tolist()}); "
                         "a constant weight has std 0: pass step=")
    s = step.reshape(-1, 1) if step.dim() == 1 else step
    half_levels = 2 ** bits / 2 - 0.5
    q = torch.clamp(torch.round(w / s + 0.5) - 0.5, -half_levels, half_levels)
    codes = (q + half_levels).round().to(torch.int64)
    return lowbit_weight(codes, step / 2, bits, mask)


def spike_linear_lowbit(spikes: torch.Tensor, qweight: QuantizedWeight,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``Y = S Q^T + b`` for 0/1 spikes and a low-bit weight, computed bit-serially.

    Per output: AND the spike words with each weight bit-plane, popcount, shift-add; the
    integer result times the scale is exactly the float64 product of the spikes with
    :meth:`QuantizedWeight.dequantize` (plus bias), rounded once to the output dtype
    (float32, or float64 when the scale is float64). Inference only (no autograd).

    ``spikes``: float/bool 0/1 ``[..., K]`` or int32 packed words ``[..., ceil(K/32)]``.
    """
    op = "snnops.spike_linear_lowbit"
    if not isinstance(qweight, QuantizedWeight):
        raise TypeError(f"{op}: qweight must be a QuantizedWeight (see snnops.quantize_weight), "
                        f"got {type(qweight).__name__}")
    k = qweight.in_features
    if not isinstance(spikes, torch.Tensor):
        raise TypeError(f"{op}: spikes must be a tensor, got {type(spikes).__name__}")
    if spikes.dtype == torch.int32:
        if spikes.dim() == 0 or spikes.shape[-1] != packed_words(k):
            raise ValueError(f"{op}: packed spikes must have {packed_words(k)} words in their last dim for "
                             f"in_features={k}, got shape {tuple(spikes.shape)}")
        packed = spikes
    else:
        if spikes.dim() == 0 or spikes.shape[-1] != k:
            raise ValueError(f"{op}: spikes must be [..., {k}] (in_features), got shape {tuple(spikes.shape)}")
        packed = pack_spikes(spikes, -1)
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (qweight.out_features,)):
        raise ValueError(f"{op}: bias must be a tensor of shape ({qweight.out_features},)")
    return torch.ops.snnops.spike_gemm_lowbit(packed, qweight.planes, qweight.scale, bias, qweight.bits)
