"""tdBN + residual add fused: ``torch.ops.snnops.bn_add_fwd / bn_add_bwd`` and :func:`bn_add`.

BatchNorm with statistics over all rows (T and B and the pixels together: "tdBN") in
training, or the running statistics in eval, with an optional residual added to its
output, in one pass over channels-last data. Exact formulas: ``snnops/reference/bn_add.py``.

Ops (``z``: rows ``[M, C]`` or frames ``[..., C, H, W]``, channels-last frames read in
place, other layouts copied once; outputs shaped like ``z`` with channels-last frames):
  bn_add_fwd(z, residual?, weight, bias, running_mean?, running_var?, training, eps)
      -> (y, mean [C], invstd [C], var [C] (biased))
  bn_add_bwd(grad_y, z, weight, mean, invstd, training, output_mask[3])
      -> (grad_z, grad_weight, grad_bias)
Kept for backward: z (what BatchNorm keeps anyway), mean and invstd. The residual's
gradient is ``grad_y`` itself, returned as is: the same tensor, not a copy or a view,
so autograd can add the block input's other gradient into it in place.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ._batch_norm import check_batch_norm, shape_of, stat_dtype, update_running_stats
from ._registry import define

__all__ = ["bn_add"]


def _triton_fwd(*args):
    from ..kernels import bn_add as k
    return k.bn_add_fwd(*args)


def _triton_bwd(*args):
    from ..kernels import bn_add as k
    return k.bn_add_bwd(*args)


define("bn_add_fwd(Tensor z, Tensor? residual, Tensor weight, Tensor bias, Tensor? running_mean,"
       " Tensor? running_var, bool training, float eps) -> (Tensor y, Tensor mean, Tensor invstd, Tensor var)",
       cpu_reference=reference.bn_add_fwd, cuda_kernel=_triton_fwd)
define("bn_add_bwd(Tensor grad_y, Tensor z, Tensor weight, Tensor mean, Tensor invstd, bool training,"
       " bool[3] output_mask) -> (Tensor grad_z, Tensor grad_weight, Tensor grad_bias)",
       cpu_reference=reference.bn_add_bwd, cuda_kernel=_triton_bwd)


def _empty_like_rows(z):
    """An uninitialized tensor of z's shape: rows as they are, frames channels-last."""
    if z.dim() == 2:
        return z.new_empty(z.shape)
    d = z.dim()
    order = [*range(d - 3), d - 2, d - 1, d - 3]
    return z.new_empty([z.shape[i] for i in order]).permute(*range(d - 3), d - 1, d - 3, d - 2)


def _channels(z):
    return z.shape[1] if z.dim() == 2 else z.shape[-3]


@torch.library.register_fake("snnops::bn_add_fwd")
def _fwd_fake(z, residual, weight, bias, running_mean, running_var, training, eps):
    c = _channels(z)
    st = stat_dtype(z)
    return _empty_like_rows(z), z.new_empty((c,), dtype=st), z.new_empty((c,), dtype=st), z.new_empty((c,), dtype=st)


@torch.library.register_fake("snnops::bn_add_bwd")
def _bwd_fake(grad_y, z, weight, mean, invstd, training, output_mask):
    return (_empty_like_rows(z) if output_mask[0] else z.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[2] else weight.new_empty(0))


def _setup(ctx, inputs, output):
    z, residual, weight, bias, running_mean, running_var, training, eps = inputs
    _, mean, invstd, var = output
    ctx.save_for_backward(z, weight, mean, invstd)
    ctx.training = bool(training)
    ctx.mark_non_differentiable(mean, invstd, var)


def _backward(ctx, grad_y, grad_mean, grad_invstd, grad_var):
    z, weight, mean, invstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [bool(need[0]), bool(need[2]), bool(need[3])]
    if grad_y is None:
        grad_y = torch.zeros_like(z)
    gz = gw = gb = None
    if any(mask):
        gz, gw, gb = torch.ops.snnops.bn_add_bwd(grad_y, z, weight, mean, invstd, ctx.training, mask)
    return ((gz if mask[0] else None), (grad_y if need[1] else None), (gw if mask[1] else None),
            (gb if mask[2] else None), None, None, None, None)


torch.library.register_autograd("snnops::bn_add_fwd", _backward, setup_context=_setup)


# ---------------------------------------------------------------------------- public API

def _check(z_seq, residual, weight, bias, running_mean, running_var, training, momentum, eps):
    op = "snnops.bn_add"
    training, momentum, eps = check_batch_norm(op, z_seq, weight, bias, running_mean, running_var, training,
                                               momentum, eps)
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != z_seq.shape:
            raise ValueError(f"{op}: residual must have z's shape {tuple(z_seq.shape)}, got {shape_of(residual)}")
        if residual.dtype != z_seq.dtype or residual.device != z_seq.device:
            raise TypeError(f"{op}: residual must have z's dtype and device ({z_seq.dtype}, {z_seq.device}), got "
                            f"{residual.dtype}, {residual.device}")
    return training, momentum, eps


def bn_add(z_seq: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor,
           running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], training: bool,
           momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """tdBN of ``z_seq`` plus ``residual``, fused: ``BN(z_seq) + residual``.

    Args:
        z_seq: ``[T, B, C, H, W]`` (BatchNorm's input, e.g. a conv output); statistics
            over T, B, H and W together. Channels-last frames are read in place; any
            other layout is copied once.
        residual: None or a tensor of z's shape (e.g. the block's shortcut), added to
            BatchNorm's output; its gradient is the output's gradient itself.
        weight, bias, running_mean, running_var: the BatchNorm's (``[C]``); in training
            mode the running statistics (when given) are updated in place (momentum,
            unbiased variance), as ``nn.BatchNorm2d`` does.

    Returns ``[T, B, C, H, W]`` with channels-last frames.
    """
    training, momentum, eps = _check(z_seq, residual, weight, bias, running_mean, running_var, training, momentum,
                                     eps)
    y, mean, _, var = torch.ops.snnops.bn_add_fwd(z_seq, residual, weight, bias, running_mean, running_var,
                                                 bool(training), float(eps))
    if training:
        update_running_stats(running_mean, running_var, mean, var, z_seq, momentum)
    return y
