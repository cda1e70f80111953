"""Layers of the MS-ResNet SNNs, each on snnops operators (``backend='snnops'``) or on
plain PyTorch ops (``backend='reference'``) with identical parameters and math. The TT
layers are :class:`snnops.nn.TTConv2d` (which has the same two backends).

Every layer takes and returns time-major sequences ``[T, B, C, H, W]``. A layer with
no time dependence runs once on the flattened ``[T*B, C, H, W]``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import reference
from .. import surrogate as _surrogate
from ..nn.tt_conv import parse_schedule
from ..ops.bn_add import bn_add as _bn_add
from ..ops.bn_lif import bn_lif as _bn_lif
from ..ops.lif import lif as _snnops_lif, resolve_params
from ..ops.pack import pack_spikes as _pack_spikes, unpack_spikes as _unpack_spikes

BACKENDS = ("snnops", "reference")
CONV_KINDS = ("dense", "stt", "ptt", "htt")
SCHEDULES = ("first", "last", "alternate")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(0, 1)


def _seq(y: torch.Tensor, steps: int) -> torch.Tensor:
    return y.unflatten(0, (steps, -1))


def frames_channels_last(x: torch.Tensor) -> bool:
    """True when every frame of ``x`` ([..., C, H, W]) is stored channels-last (C
    innermost), the layout of the snnops models."""
    if x.dim() < 4 or x.numel() == 0:
        return False
    c, h, w = x.shape[-3:]
    sc, sh, sw = x.stride()[-3:]
    return (c == 1 or sc == 1) and (w == 1 or sw == c) and (h == 1 or sh == w * c)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[..., C, H, W]`` with each frame channels-last (a copy unless it already is)."""
    if frames_channels_last(x):
        return x
    lead = x.shape[:-3]
    return x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last).view(*lead, *x.shape[-3:])


# ----------------------------------------------------------------------------- neuron

@dataclass(frozen=True)
class NeuronConfig:
    """LIF parameters in the papers' factor form ``h = decay * v + x`` (hard reset).
    Defaults are the TT-SNN / MS-ResNet authors': decay 0.25, threshold 0.5,
    rectangular surrogate of width 1, reset detached from the graph."""

    decay: float = 0.25
    v_threshold: float = 0.5
    v_reset: Optional[float] = 0.0
    surrogate: str = "rect"
    detach_reset: bool = True

    def __post_init__(self):
        # Same validation (and messages) as snnops.lif.
        resolve_params(tau=None, decay_input=True, v_threshold=self.v_threshold, v_reset=self.v_reset,
                       detach_reset=self.detach_reset, decay=self.decay, surrogate=self.surrogate)

    def as_dict(self):
        return asdict(self)


class SpikingNeuron(nn.Module):
    """Multi-step LIF over ``[T, B, ...]``; the membrane starts at 0 on every call.

    ``snnops``: the fused operator (time loop in C++, 2 bits per neuron-step kept for
    backward). ``reference``: the Python loop over time with autograd.
    """

    def __init__(self, neuron: NeuronConfig, backend: str = "snnops"):
        super().__init__()
        self.neuron = neuron
        self.backend = check_backend(backend)

    def forward(self, x_seq: torch.Tensor, pack: bool = False):
        """Spikes of ``x_seq`` ``[T, B, ...]``. With ``pack`` (snnops backend, ``[T, B, C,
        H, W]`` input) returns ``(spikes, packed)``: the kernel also writes the spikes
        bit-packed along the channels (``[T, B, H, W, ceil(C/32)]`` int32, the
        :func:`snnops.pack_spikes` layout); ``packed`` is None on the reference backend."""
        n = self.neuron
        if self.backend != "snnops":
            spikes, _ = reference.lif(x_seq, decay=n.decay, input_scale=1.0, v_threshold=n.v_threshold,
                                      v_reset=n.v_reset, surrogate=n.surrogate, detach_reset=n.detach_reset)
            return (spikes, None) if pack else spikes
        kwargs = dict(decay=n.decay, v_threshold=n.v_threshold, v_reset=n.v_reset, surrogate=n.surrogate,
                      detach_reset=n.detach_reset)
        if x_seq.dim() == 5 and frames_channels_last(x_seq):
            # Channels-last frames: run the (elementwise) neuron on the [T, B, H, W, C]
            # view, which is contiguous, so nothing is copied; spikes come back in the
            # same layout and the channels are the last dim for packing.
            out = _snnops_lif(x_seq.permute(0, 1, 3, 4, 2), pack_dim=4 if pack else None, **kwargs)
            spikes = out[0].permute(0, 1, 4, 2, 3)
        else:
            out = _snnops_lif(x_seq, pack_dim=2 if pack and x_seq.dim() == 5 else None, **kwargs)
            spikes = out[0]
        if pack:
            return spikes, (out[2] if len(out) > 2 else None)
        return spikes

    def extra_repr(self):
        return f"backend={self.backend}, " + ", ".join(f"{k}={v}" for k, v in self.neuron.as_dict().items())


# ----------------------------------------------------------------------------- tdBN

class TemporalBatchNorm(nn.BatchNorm2d):
    """BatchNorm with statistics over T and B together ("tdBN"), optionally followed
    by a residual add: ``forward(x_seq, residual)`` is ``BN(x_seq) + residual``.

    On the snnops backend BN and the add run as one :func:`snnops.bn_add` (one
    statistics pass and one normalize+add pass, its outputs from the kernels' block
    cache, the residual's gradient handed on without a copy); ``fuse_add = False`` runs
    PyTorch's BN then the add instead (the same results, for comparison). Under
    ``torch.distributed`` with ``sync=True`` the batch statistics are reduced over all
    processes (differentiably), so data-parallel training computes what one process
    computes on the global batch. torch.nn.SyncBatchNorm does not run on CPU.
    """

    def __init__(self, num_features: int, *args, backend: str = "reference", **kwargs):
        super().__init__(num_features, *args, **kwargs)
        self.backend = check_backend(backend)
        self.sync = False
        # On snnops, a BN followed directly by a LIF runs fused with it (see fusable);
        # False keeps them separate (the same results, for comparison).
        self.fuse_lif = True
        self.fuse_add = True

    def forward(self, x_seq: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self._runs_bn_add(x_seq, residual):
            if self.training:
                self.num_batches_tracked.add_(1)
            return _bn_add(x_seq, residual, self.weight, self.bias, self.running_mean, self.running_var,
                           self.training, self.momentum, self.eps)
        steps = x_seq.shape[0]
        x = _flat(x_seq)
        if self.sync and self.training and _distributed_world() > 1:
            y = _seq(self._synced(x), steps)
        else:
            y = _seq(super().forward(x), steps)
        return y if residual is None else y + residual

    def _runs_bn_add(self, x_seq: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
        # bn_add keeps nn.BatchNorm2d's exponential running statistics; other
        # configurations (no affine, no or cumulative statistics, synchronized BN)
        # take PyTorch's path.
        return (self.backend == "snnops" and self.fuse_add and self.affine and self.track_running_stats
                and self.momentum is not None and not (self.sync and self.training and _distributed_world() > 1)
                and x_seq.dim() == 5 and frames_channels_last(x_seq) and x_seq.dtype in (torch.float32, torch.float64)
                and (residual is None or (residual.shape == x_seq.shape and residual.dtype == x_seq.dtype)))

    def _synced(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce

        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        count = all_reduce(count, op=dist.ReduceOp.SUM)
        mean = all_reduce(x.sum(dims), op=dist.ReduceOp.SUM) / count
        centered = x - mean[None, :, None, None]
        var = all_reduce(centered.pow(2).sum(dims), op=dist.ReduceOp.SUM) / count
        y = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        return y


def _distributed_world() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ----------------------------------------------------------------------------- BN + LIF

BN_LIF_RANGE = "snnops.bn_lif"


def fusable(bn: "TemporalBatchNorm", lif: SpikingNeuron, z_seq: torch.Tensor) -> bool:
    """BN then LIF run as one :func:`snnops.bn_lif` on the snnops backend for the
    TT-SNN neuron (hard reset detached from the graph, rectangular surrogate) on
    channels-last frames; other neurons, and BN synchronized across processes, run
    BN then the fused LIF."""
    n = lif.neuron
    return (lif.backend == "snnops" and bn.fuse_lif and n.detach_reset and n.v_reset is not None
            and isinstance(_surrogate.get(n.surrogate), _surrogate.Rectangular) and bn.affine
            and bn.track_running_stats and bn.momentum is not None
            and not (bn.sync and bn.training and _distributed_world() > 1)
            and z_seq.dim() == 5 and frames_channels_last(z_seq) and z_seq.dtype in (torch.float32, torch.float64))


def fused_bn_lif(bn: "TemporalBatchNorm", lif: SpikingNeuron, z_seq: torch.Tensor):
    """``(spikes, packed)`` of ``lif(bn(z_seq))`` in one fused op (BN's running
    statistics updated as BN would)."""
    n = lif.neuron
    if bn.training:
        bn.num_batches_tracked.add_(1)
    with torch.autograd.profiler.record_function(BN_LIF_RANGE):
        return _bn_lif(z_seq, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.training, bn.momentum,
                       bn.eps, decay=n.decay, v_threshold=n.v_threshold, v_reset=n.v_reset,
                       width=_surrogate.get(n.surrogate).width)


# ----------------------------------------------------------------------------- convs

class SeqConv2d(nn.Conv2d):
    """``nn.Conv2d`` applied to every timestep (one call on ``[T*B, C, H, W]``).

    With ``subsample_first=True`` a strided 1x1 conv (a shortcut) subsamples its input
    first. With ``spike_input=True`` (the block convs of the snnops backend) the input is the
    0/1 output of a LIF, and the copy autograd keeps for the weight gradient is stored
    bit-packed (:func:`snnops.pack_spikes`, 1 bit instead of 32 per spike) and unpacked
    in the backward: the convolution itself stays oneDNN's.
    """

    def __init__(self, *args, spike_input: bool = False, subsample_first: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.spike_input = spike_input
        self.subsample_first = subsample_first

    def forward(self, x_seq: torch.Tensor, packed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``packed``: the same spikes bit-packed along the channels by the LIF
        (``[T, B, H, W, words]``), kept for backward instead of packing them again."""
        x = _flat(x_seq)
        if self.subsample_first and self.kernel_size == (1, 1) and self.stride != (1, 1):
            # A strided 1x1 conv reads only every stride-th pixel: subsample first and
            # run it at stride 1 (the same products and sums), so autograd keeps the
            # subsampled input (1/4 of the block input for stride 2), not all of it.
            x = _Subsample.apply(x_seq, self.stride[0], self.stride[1])
            return _seq(F.conv2d(x, self.weight, self.bias), x_seq.shape[0])
        restore = None
        if self.kernel_size == (3, 3) and frames_channels_last(x) and x.shape[1] > 1:
            # oneDNN's channels-last 3x3 kernels lose to its NCHW ones once the output is
            # 4x4 or smaller (measured, one thread, batch 64: 512->512 at 4x4 forward +
            # weight gradient 118 -> 93 ms, backward peak 38 -> 22 MB; 256->512 stride 2
            # 65 -> 53 ms; equal at 8x8): run those in NCHW, weight included, and hand
            # the next layer channels-last frames again (copies of a few MB).
            h_out = (x.shape[2] + 2 * self.padding[0] - 3) // self.stride[0] + 1
            w_out = (x.shape[3] + 2 * self.padding[1] - 3) // self.stride[1] + 1
            fmt = torch.contiguous_format if h_out * w_out <= 16 else torch.channels_last
            if not self.weight.is_contiguous(memory_format=fmt):
                with torch.no_grad():
                    self.weight.data = self.weight.data.contiguous(memory_format=fmt)
            if fmt == torch.contiguous_format:
                x, restore = x.contiguous(), torch.channels_last
        if self.spike_input and torch.is_grad_enabled() and self.weight.requires_grad:
            words = None if packed is None else packed.flatten(0, 1)
            with torch.autograd.graph.saved_tensors_hooks(_SpikePacker(x, words), _unpack_saved):
                y = super().forward(x)
        else:
            y = super().forward(x)
        if restore is not None:
            y = y.contiguous(memory_format=restore)
        return _seq(y, x_seq.shape[0])


class _Subsample(torch.autograd.Function):
    """``[T, B, C, H, W]`` -> ``[T*B, C, H/sh, W/sw]``: every sh-th row and sw-th column,
    copied out in the frames' layout, with a gradient laid out like the input (not a
    view of one). Slicing's own backward writes a default-layout gradient (once per
    sliced dim) behind a view; summed with the block's channels-last LIF gradient that
    cost an out-of-place, mixed-layout add and a layout copy (21 ms a step at 64x32x32
    on one thread), where a same-layout gradient autograd owns alone is added in place."""

    @staticmethod
    def forward(ctx, x_seq, sh: int, sw: int):
        x = _flat(x_seq)
        ctx.steps = (sh, sw)
        ctx.like = torch.empty_like(x_seq, device="meta")  # the input's shape and strides
        fmt = torch.channels_last if frames_channels_last(x) else torch.contiguous_format
        return x[:, :, ::sh, ::sw].contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, grad):
        sh, sw = ctx.steps
        gx = torch.empty_like(ctx.like, dtype=grad.dtype, device=grad.device).zero_()
        _flat(gx)[:, :, ::sh, ::sw] = grad
        return gx, None, None


def repeat_steps(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``[1, B, C, H, W]`` -> ``[T, B, C, H, W]`` (a broadcast view), whose gradient (the
    sum over T) keeps channels-last frames channels-last."""
    return _RepeatSteps.apply(x, steps)


class _RepeatSteps(torch.autograd.Function):
    # expand's backward sums over T into a default-layout tensor, at 4.3 ms for
    # 4x16x64x32x32 on one thread, and BN's backward is ~10x slower when its gradient
    # and input layouts differ; summing the [T, B, H, W, C] view is 1.5 ms and
    # channels-last.

    @staticmethod
    def forward(ctx, x, steps: int):
        return x.expand(steps, *x.shape[1:])

    @staticmethod
    def backward(ctx, grad):
        if grad.dim() == 5 and frames_channels_last(grad):
            return grad.permute(0, 1, 3, 4, 2).sum(0, keepdim=True).permute(0, 1, 4, 2, 3), None
        return grad.sum(0, keepdim=True), None


class _SpikePacker:
    """Pack hook: the one tensor known to hold spikes (this call's input) is saved as
    bits (the LIF's channel-packed words when given, else packed here); everything
    else (the weight) is saved as is. Autograd keeps the hook object with the saved
    tensor, so it must not hold the float spikes (that would keep them alive until the
    backward): it remembers where they are."""

    def __init__(self, spikes: torch.Tensor, words: Optional[torch.Tensor] = None):
        self.key = (spikes.data_ptr(), tuple(spikes.shape), spikes.stride(), spikes.dtype)
        self.words = words

    def __call__(self, t: torch.Tensor):
        if (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) != self.key or t.dim() != 4 or not t.numel():
            return t
        channels_last = frames_channels_last(t) and not t.is_contiguous()
        words, self.words = self.words, None
        if words is None:
            if not (t.is_contiguous() or channels_last):
                return t
            words = _pack_spikes(t.permute(0, 2, 3, 1) if channels_last else t, 3 if channels_last else 1)
        return ("spikes", words, t.shape[1], channels_last, t.dtype)


def _unpack_saved(saved):
    if isinstance(saved, tuple) and saved and saved[0] == "spikes":
        _, words, channels, channels_last, dtype = saved      # words: [N, H, W, ceil(C/32)]
        if channels_last:
            return _unpack_spikes(words, channels, 3, dtype).permute(0, 3, 1, 2)
        return _unpack_spikes(words, channels, 1, dtype)
    return saved


def full_steps(schedule: Union[str, Sequence[bool]], timesteps: int) -> list:
    """Which timesteps of an HTT layer run the full (PTT) path.

    ``'first'`` (the paper's order): the first ceil(T/2) steps; ``'last'``: the last
    ceil(T/2); ``'alternate'``: even steps; or T flags: ``'FFHH'`` or booleans.
    """
    if isinstance(schedule, str) and schedule.lower() in SCHEDULES:
        schedule = schedule.lower()
        if schedule == "first":
            n = math.ceil(timesteps / 2)
            return [t < n for t in range(timesteps)]
        if schedule == "last":
            n = math.ceil(timesteps / 2)
            return [t >= timesteps - n for t in range(timesteps)]
        if schedule == "alternate":
            return [t % 2 == 0 for t in range(timesteps)]
    try:
        flags = parse_schedule(schedule, "HTT schedule")
    except (TypeError, ValueError):
        raise ValueError(f"HTT schedule must be one of {SCHEDULES}, a string of {timesteps} F/H letters or "
                         f"a list of {timesteps} booleans, got {schedule!r}") from None
    if len(flags) != timesteps:
        raise ValueError(f"HTT schedule must have one entry per timestep ({timesteps}), got {len(flags)}")
    return flags
