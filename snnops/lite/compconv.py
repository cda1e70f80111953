"""``CompConv2d``: LitE-SNN's compressive convolution.

One shared weight ``W`` and one shared learned pruning mask ``m`` serve every
candidate bit-width (METHODS.md section 3)::

    W_out = m * sum_j softmax(beta)_j * Q_{b_j}(W)

With a single candidate bit-width (a decoded network) this is ``m * Q_b(W)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .quant import (check_bits, check_keep_ratio, gaussian_step, mixed_bits, num_kept, quantize,
                    quantize_ste, topk_mask, topk_mask_ste)

__all__ = ["CompConv2d"]


def _pair(v, name):
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(e) for e in v)
    if len(v) != 2:
        raise ValueError(f"CompConv2d: {name} must be an int or a pair, got {v}")
    return v


class CompConv2d(torch.nn.Module):
    """Convolution with a learned top-k pruning mask and softmax(beta)-mixed b-bit weights.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as ``nn.Conv2d``
            (``groups = dilation = 1``).
        bits: candidate bit-widths (each in 1, 2, 3, 4); one bit-width for a fixed layer.
        keep_ratio: fraction ``k`` of weights the mask keeps, in (0, 1] (``k = 1 - p``).
        beta_std: std of the Gaussian noise ``beta`` starts from.

    Parameters: ``weight`` (the shared ``W``), ``scores`` (the mask scores, initialized
    to ``W``), ``beta`` (one logit per candidate bit-width), ``bias`` (optional).

    Input ``[N, C, H, W]`` or a time-major sequence ``[T, B, C, H, W]`` (run as one
    ``[T*B, ...]`` convolution). Each call records, without gradient, the mean firing
    rate of its input per timestep (``input_rate``, shape ``[T]``; ``[1]`` for 4-D
    input) and the output size (``output_hw``): the costs read them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False, *, bits: Sequence[int] = (1, 2, 4), keep_ratio: float = 0.2,
                 beta_std: float = 1e-3):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"CompConv2d: in_channels and out_channels must be >= 1, got "
                             f"{in_channels} and {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"CompConv2d: kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"{self.kernel_size}, {self.stride}, {self.padding}")
        self.bits = check_bits(bits)
        self.keep_ratio = check_keep_ratio(keep_ratio)
        w = torch.empty(self.out_channels, self.in_channels, *self.kernel_size)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.weight = torch.nn.Parameter(w)
        self.scores = torch.nn.Parameter(w.clone())
        self.beta = torch.nn.Parameter(torch.randn(len(self.bits)) * beta_std)
        if bias:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
            self.bias = torch.nn.Parameter(torch.empty(self.out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.input_rate = None
        self.output_hw = None

    # --- the weight ---------------------------------------------------------------------
    def branch_weights(self) -> torch.Tensor:
        """``softmax(beta)``."""
        return torch.softmax(self.beta, 0)

    def expected_bits(self) -> torch.Tensor:
        """``b_bar = sum_j softmax(beta)_j b_j`` (differentiable in beta)."""
        return mixed_bits(self.beta, self.bits)

    def chosen_bits(self) -> int:
        """The decoded bit-width, ``bits[argmax(beta)]`` (first on ties)."""
        return self.bits[int(torch.argmax(self.beta.detach()))]

    def mask(self) -> torch.Tensor:
        """The 0/1 pruning mask (no gradient path)."""
        return topk_mask(self.scores, self.keep_ratio)

    def effective_weight(self) -> torch.Tensor:
        """``m * sum_j softmax(beta)_j Q_{b_j}(W)``, with straight-through gradients to
        ``W`` and to the scores and exact gradients to ``beta``."""
        w = self.weight
        if len(self.bits) == 1:
            mixed = quantize_ste(w, self.bits[0])
        else:
            probs = self.branch_weights()
            mixed = sum(probs[j] * quantize_ste(w, b) for j, b in enumerate(self.bits))
        return topk_mask_ste(self.scores, self.keep_ratio) * mixed

    def quantized_weight(self, bits: int = None) -> torch.Tensor:
        """``m * Q_b(W)`` for one bit-width (default the chosen one), without gradient:
        the weight a decoded / deployed layer uses."""
        b = self.chosen_bits() if bits is None else bits
        with torch.no_grad():
            return self.mask() * quantize(self.weight, b, gaussian_step(self.weight, b))

    # --- costs ----------------------------------------------------------------------------
    @property
    def num_weights(self) -> int:
        return self.weight.numel()

    @property
    def kept_weights(self) -> int:
        """How many weights the mask keeps: ``round(k * Cin*Cout*kh*kw)``."""
        return num_kept(self.num_weights, self.keep_ratio)

    def model_size_bits(self) -> torch.Tensor:
        """Stored bits of the kept weights, ``kept_weights * b_bar`` (differentiable in beta).
        A bias (float32) is not included."""
        return self.kept_weights * self.expected_bits()

    def synops(self) -> torch.Tensor:
        """SynOps per sample and timestep, ``[T]``, of the last call:
        ``kept_weights * H_out * W_out * input_rate[t]`` (a constant)."""
        if self.input_rate is None:
            raise RuntimeError("CompConv2d.synops: run a forward pass first (the costs use the "
                               "firing rates it measures)")
        h, w = self.output_hw
        return self.input_rate * float(self.kept_weights * h * w)

    def bit_synops(self) -> torch.Tensor:
        """``b_bar * SynOps``, ``[T]`` (differentiable in beta)."""
        return self.expected_bits() * self.synops()

    # --- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (4, 5):
            raise ValueError(f"CompConv2d: expected input [N, C, H, W] or [T, B, C, H, W], got shape "
                             f"{tuple(x.shape)}")
        if x.shape[-3] != self.in_channels:
            raise ValueError(f"CompConv2d: input has {x.shape[-3]} channels, expected {self.in_channels}")
        seq = x.dim() == 5
        with torch.no_grad():
            v = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
            per_step = v.flatten(1) if seq else v.reshape(1, -1)
            self.input_rate = per_step.sum(1) / max(per_step.shape[1], 1)
        flat = x.flatten(0, 1) if seq else x
        out = F.conv2d(flat, self.effective_weight().to(flat.dtype), self.bias, self.stride, self.padding)
        self.output_hw = (int(out.shape[-2]), int(out.shape[-1]))
        return out.unflatten(0, x.shape[:2]) if seq else out

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bits={self.bits}, "
                f"keep_ratio={self.keep_ratio}, bias={self.bias is not None}")
