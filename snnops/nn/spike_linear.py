"""``snnops.nn.SpikeLinear`` / ``SpikeConv1x1``: drop-in ``nn.Linear`` / 1x1 ``nn.Conv2d``
for the layer after a spiking layer (inputs are 0/1 spikes, float or bit-packed)."""
from __future__ import annotations

from typing import Optional

import torch

from ..ops.spike_gemm import spike_conv1x1, spike_linear


class SpikeLinear(torch.nn.Linear):
    """``nn.Linear`` whose input is 0/1 spikes: same parameters, initialization and
    state dict, computed by :func:`snnops.spike_linear` (work proportional to the
    spikes, only the bit-packed spikes kept for backward).

    ``forward(spikes, spikes_float=None)``: ``spikes`` float/bool ``[..., in_features]``
    or int32 packed ``[..., ceil(in_features/32)]``; see :func:`snnops.spike_linear`.
    """

    def forward(self, spikes: torch.Tensor, spikes_float: Optional[torch.Tensor] = None) -> torch.Tensor:
        return spike_linear(spikes, self.weight, self.bias, spikes_float=spikes_float)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "SpikeLinear":
        """A SpikeLinear sharing ``linear``'s parameters."""
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype)
        m.weight = linear.weight
        m.bias = linear.bias
        return m


class SpikeConv1x1(torch.nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (stride allowed, no padding, groups 1) whose input is 0/1
    spikes ``[..., C, H, W]`` (NCHW, or multi-step ``[T, B, C, H, W]``) or int32 packed
    ``[..., H, W, ceil(C/32)]``; computed by :func:`snnops.spike_conv1x1`. Same
    parameters and state dict as ``nn.Conv2d(in_channels, out_channels, 1)``.
    The output is channels-last in memory.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, stride=1, device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias, device=device,
                         dtype=dtype)

    def forward(self, spikes: torch.Tensor, spikes_float: Optional[torch.Tensor] = None) -> torch.Tensor:
        return spike_conv1x1(spikes, self.weight, self.bias, stride=self.stride, spikes_float=spikes_float)

    @classmethod
    def from_conv(cls, conv: torch.nn.Conv2d) -> "SpikeConv1x1":
        """A SpikeConv1x1 sharing the parameters of a 1x1 ``conv`` (no padding, dilation 1, groups 1)."""
        if (tuple(conv.kernel_size) != (1, 1) or conv.groups != 1 or tuple(conv.dilation) != (1, 1)
                or (isinstance(conv.padding, str) and conv.padding not in ("valid",))
                or (not isinstance(conv.padding, str) and tuple(conv.padding) != (0, 0))):
            raise ValueError("snnops.nn.SpikeConv1x1.from_conv: needs a 1x1 convolution with no padding, "
                             f"dilation 1 and groups 1, got {conv}")
        m = cls(conv.in_channels, conv.out_channels, bias=conv.bias is not None, stride=conv.stride,
                device=conv.weight.device, dtype=conv.weight.dtype)
        m.weight = conv.weight
        m.bias = conv.bias
        return m
