"""tdBN + LIF fused: ``torch.ops.snnops.bn_lif_fwd / bn_lif_bwd`` and :func:`bn_lif`.

BatchNorm with statistics over T and B together (training) or the running statistics
(eval), feeding the TT-SNN / MS-ResNet neuron (factor-form decay, hard reset, reset
detached from the graph, rectangular surrogate), in one pass over channels-last data.
Exact formulas: ``snnops/reference/bn_lif.py``.

Ops (``z [T, M, C]``, channels last; ``W = ceil(C/32)``):
  bn_lif_fwd(z, weight, bias, running_mean?, running_var?, training, eps, decay,
             v_threshold, v_reset, width)
      -> (spikes [T, M, C], packed [T, M, W] int32, window [T, M, W] int32,
          mean [C], invstd [C], var [C] (biased))
  bn_lif_bwd(grad_spikes, z, weight, mean, invstd, packed, window, training, decay,
             width, output_mask[3]) -> (grad_z, grad_weight, grad_bias)
Kept for backward: z (what BatchNorm keeps anyway), the spike bits and the window
bits (2 bits per neuron-step, as the LIF alone).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ._batch_norm import check_batch_norm, stat_dtype, update_running_stats
from ._params import number
from ._registry import define

__all__ = ["bn_lif"]


def _triton_fwd(*args):
    from ..kernels import bn_lif as k
    return k.bn_lif_fwd(*args)


def _triton_bwd(*args):
    from ..kernels import bn_lif as k
    return k.bn_lif_bwd(*args)


define("bn_lif_fwd(Tensor z, Tensor weight, Tensor bias, Tensor? running_mean, Tensor? running_var, bool training,"
       " float eps, float decay, float v_threshold, float v_reset, float width)"
       " -> (Tensor spikes, Tensor packed, Tensor window, Tensor mean, Tensor invstd, Tensor var)",
       cpu_reference=reference.bn_lif_fwd, cuda_kernel=_triton_fwd)
define("bn_lif_bwd(Tensor grad_spikes, Tensor z, Tensor weight, Tensor mean, Tensor invstd, Tensor packed,"
       " Tensor window, bool training, float decay, float width, bool[3] output_mask)"
       " -> (Tensor grad_z, Tensor grad_weight, Tensor grad_bias)",
       cpu_reference=reference.bn_lif_bwd, cuda_kernel=_triton_bwd)


@torch.library.register_fake("snnops::bn_lif_fwd")
def _fwd_fake(z, weight, bias, running_mean, running_var, training, eps, decay, v_threshold, v_reset, width):
    steps, rows, c = z.shape
    words = (c + 31) // 32
    st = stat_dtype(z)
    return (z.new_empty((steps, rows, c)), z.new_empty((steps, rows, words), dtype=torch.int32),
            z.new_empty((steps, rows, words), dtype=torch.int32), z.new_empty((c,), dtype=st),
            z.new_empty((c,), dtype=st), z.new_empty((c,), dtype=st))


@torch.library.register_fake("snnops::bn_lif_bwd")
def _bwd_fake(grad_spikes, z, weight, mean, invstd, packed, window, training, decay, width, output_mask):
    return (z.new_empty(z.shape) if output_mask[0] else z.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[2] else weight.new_empty(0))


def _setup(ctx, inputs, output):
    z, weight, bias, running_mean, running_var, training, eps, decay, v_threshold, v_reset, width = inputs
    _, packed, window, mean, invstd, _ = output
    ctx.save_for_backward(z, weight, mean, invstd, packed, window)
    ctx.params = (bool(training), float(decay), float(width))


def _backward(ctx, grad_spikes, grad_packed, grad_window, grad_mean, grad_invstd, grad_var):
    z, weight, mean, invstd, packed, window = ctx.saved_tensors
    training, decay, width = ctx.params
    mask = [bool(m) for m in ctx.needs_input_grad[:3]]
    if grad_spikes is None:
        grad_spikes = torch.zeros_like(z)
    gz, gw, gb = torch.ops.snnops.bn_lif_bwd(grad_spikes, z, weight, mean, invstd, packed, window, training,
                                             decay, width, mask)
    return ((gz if mask[0] else None), (gw if mask[1] else None), (gb if mask[2] else None),
            None, None, None, None, None, None, None, None)


torch.library.register_autograd("snnops::bn_lif_fwd", _backward, setup_context=_setup)


# ---------------------------------------------------------------------------- public API

def _check(z_seq, weight, bias, running_mean, running_var, training, momentum, eps, decay, v_threshold, v_reset,
           width):
    op = "snnops.bn_lif"
    training, momentum, eps = check_batch_norm(op, z_seq, weight, bias, running_mean, running_var, training,
                                               momentum, eps)
    decay, width = number(op, "decay", decay), number(op, "width", width)
    v_threshold = number(op, "v_threshold", v_threshold, finite=True)
    v_reset = number(op, "v_reset", v_reset, finite=True)
    if not 0.0 <= decay <= 1.0:  # NaN fails too
        raise ValueError(f"{op}: decay must be in [0, 1], got {decay}")
    if not width > 0:
        raise ValueError(f"{op}: width must be > 0, got {width}")
    return training, momentum, eps, decay, v_threshold, v_reset, width


def bn_lif(z_seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: Optional[torch.Tensor],
           running_var: Optional[torch.Tensor], training: bool, momentum: float = 0.1, eps: float = 1e-5, *,
           decay: float = 0.25, v_threshold: float = 0.5, v_reset: float = 0.0, width: float = 1.0):
    """tdBN then the multi-step LIF, fused.

    Args:
        z_seq: ``[T, B, C, H, W]`` (BatchNorm's input, e.g. a conv output). Channels-last
            frames are read in place; any other layout is copied once.
        weight, bias, running_mean, running_var: the BatchNorm's (``[C]``); in training
            mode the running statistics are updated in place (momentum, unbiased
            variance), as ``nn.BatchNorm2d`` does.
        decay, v_threshold, v_reset, width: the neuron: ``h = decay * v + y`` (leaking
            towards ``v_reset``), spike when ``h >= v_threshold``, hard reset to
            ``v_reset`` detached from the graph, rectangular surrogate of ``width``.

    Returns ``(spikes, packed)``: spikes ``[T, B, C, H, W]`` (channels-last frames) and
    the same spikes bit-packed along C, int32 ``[T, B, H, W, ceil(C/32)]``.
    """
    training, momentum, eps, decay, v_threshold, v_reset, width = _check(
        z_seq, weight, bias, running_mean, running_var, training, momentum, eps, decay, v_threshold, v_reset, width)
    steps, batch, c, h, w = z_seq.shape
    rows = batch * h * w
    z = z_seq.permute(0, 1, 3, 4, 2).reshape(steps, rows, c)   # a view for channels-last frames
    spikes, packed, _, mean, _, var = torch.ops.snnops.bn_lif_fwd(
        z, weight, bias, running_mean, running_var, bool(training), float(eps), float(decay), float(v_threshold),
        float(v_reset), float(width))
    if training:
        update_running_stats(running_mean, running_var, mean, var, z_seq, momentum)
    spikes = spikes.view(steps, batch, h, w, c).permute(0, 1, 4, 2, 3)
    return spikes, packed.view(steps, batch, h, w, -1)
