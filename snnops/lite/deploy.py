"""Deploying a decoded LitE-SNN on the bit-serial spike x low-bit weight kernel.

Every CompConv of a retrained :class:`~snnops.lite.decode.FixedNetwork` reads spikes
(the stem's LIF comes first), so each becomes a :class:`LowBitSpikeConv2d`: its
weight is stored as b-bit codes, a per-layer scale and the pruning mask
(:func:`snnops.ops.spike_gemm.lowbit_weight`), and the convolution runs as
``im2col(spikes) @ codes`` through :func:`snnops.ops.spike_gemm.spike_linear_lowbit`
(AND of spike words with weight bit-planes, popcount, shift-add).

The codes are those of the training quantizer, ``Q_b(W) = (c - 0.5) * step`` with
``c`` in ``[1 - 2^(b-1), 2^(b-1)]``; the kernel's unsigned code is ``u = c + 2^(b-1) - 1``
and its scale ``step / 2``, so ``(2u - (2^b - 1)) * step/2 = Q_b(W)``.

Exactness: every partial sum is an integer multiple of the scale, so a float64
convolution on the dequantized weights is exact; the kernel's result (exact, rounded
once to float32) therefore equals it bit for bit, and the deployed network's
outputs equal those of :meth:`DeployedNetwork.exact_reference`, the same network doing
float64 math on the quantized weights. The float32 training-mode convolution rounds
its partial sums, so it agrees with both to float32 tolerance (a neuron sitting on
its threshold may differ).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .compconv import CompConv2d
from .decode import FixedNetwork
from .quant import gaussian_step, quantize_codes

__all__ = ["deployment_available", "LowBitSpikeConv2d", "QuantizedFloatConv2d", "DeployedNetwork"]


def _kernel():
    from ..ops import spike_gemm
    return spike_gemm.lowbit_weight, spike_gemm.spike_linear_lowbit


def deployment_available() -> bool:
    """True when the low-bit spike kernel is part of this build."""
    try:
        _kernel()
    except (ImportError, AttributeError):
        return False
    return True


def _codes(conv: CompConv2d, bits: int):
    """Unsigned kernel codes ``[Cout, Cin*kh*kw]``, scale and mask of ``conv`` at ``bits``."""
    step = gaussian_step(conv.weight, bits)
    signed, _ = quantize_codes(conv.weight, bits, step)
    unsigned = signed.to(torch.int64) + (2 ** (bits - 1) - 1)
    mask = conv.mask().bool()
    return (unsigned.reshape(conv.out_channels, -1), (step / 2).to(torch.float32),
            mask.reshape(conv.out_channels, -1))


def _check_spikes(x: torch.Tensor, name: str):
    if x.dim() not in (4, 5):
        raise ValueError(f"{name}: expected [N, C, H, W] or [T, B, C, H, W] spikes, got shape {tuple(x.shape)}")


class _DeployedConv(torch.nn.Module):
    def __init__(self, conv: CompConv2d, bits=None):
        super().__init__()
        if not isinstance(conv, CompConv2d):
            raise TypeError(f"expected a CompConv2d, got {type(conv).__name__}")
        self.bits = conv.chosen_bits() if bits is None else int(bits)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        codes, scale, mask = _codes(conv, self.bits)
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("scale", scale)
        self.register_buffer("weight_mask", mask)

    def dequantized_weight(self, dtype=torch.float64) -> torch.Tensor:
        """``mask * (2u - (2^b - 1)) * scale`` as ``[Cout, Cin, kh, kw]`` (exact in float64)."""
        levels = (2 * self.codes.to(torch.int64) - (2 ** self.bits - 1)) * self.weight_mask
        w = levels.to(torch.float64) * self.scale.to(torch.float64)
        return w.reshape(self.out_channels, self.in_channels, *self.kernel_size).to(dtype)

    def _run(self, x4: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        _check_spikes(x, type(self).__name__)
        if x.shape[-3] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-3]} channels, expected "
                             f"{self.in_channels}")
        seq = x.dim() == 5
        out = self._run(x.flatten(0, 1) if seq else x)
        return out.unflatten(0, x.shape[:2]) if seq else out


class LowBitSpikeConv2d(_DeployedConv):
    """A decoded CompConv run by the bit-serial spike x low-bit weight kernel (inference)."""

    def __init__(self, conv: CompConv2d, bits=None):
        super().__init__(conv, bits)
        lowbit_weight, _ = _kernel()
        self.qweight = lowbit_weight(self.codes, self.scale, self.bits, self.weight_mask)

    def _run(self, x):
        _, spike_linear_lowbit = _kernel()
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        if (kh, kw) == (1, 1) and self.padding == (0, 0):
            sx = x[:, :, ::self.stride[0], ::self.stride[1]]
            ho, wo = sx.shape[-2:]
            rows = sx.permute(0, 2, 3, 1).reshape(-1, self.in_channels)
        else:
            cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # [N, K, L]
            ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
            wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        bias = None if self.bias is None else self.bias.to(torch.float32)
        out = spike_linear_lowbit(rows.contiguous(), self.qweight, bias)  # [N*L, Cout]
        return out.reshape(n, ho, wo, self.out_channels).permute(0, 3, 1, 2).to(x.dtype).contiguous()


class QuantizedFloatConv2d(_DeployedConv):
    """The same layer as float64 math on the dequantized weight, rounded once to the
    input dtype: the exact reference the kernel must match."""

    def _run(self, x):
        bias = None if self.bias is None else self.bias.to(torch.float64)
        out = F.conv2d(x.to(torch.float64), self.dequantized_weight(torch.float64), bias, self.stride,
                       self.padding)
        return out.to(x.dtype)


def _replace_convs(net: torch.nn.Module, factory) -> int:
    count = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CompConv2d):
                setattr(parent, name, factory(child))
                count += 1
    return count


class DeployedNetwork(torch.nn.Module):
    """An inference copy of a decoded network whose CompConvs run on the low-bit spike
    kernel (``kernel=True``) or as float64 math on the quantized weights (``False``).
    Calling it returns logits ``[T, B, classes]`` in eval mode."""

    def __init__(self, net: torch.nn.Module, kernel: bool = True):
        super().__init__()
        if kernel and not deployment_available():
            raise RuntimeError("DeployedNetwork: the low-bit spike kernel (snnops.ops.spike_gemm."
                               "spike_linear_lowbit) is not available in this build")
        self._source = [net]  # not a submodule: the copy below is what runs
        self.net = copy.deepcopy(net).eval()
        self.kernel = kernel
        self.num_lowbit_layers = _replace_convs(self.net, LowBitSpikeConv2d if kernel else QuantizedFloatConv2d)

    def exact_reference(self) -> "DeployedNetwork":
        """The float64-on-quantized-weights twin of this network (same source)."""
        return DeployedNetwork(self._source[0], kernel=False)

    @torch.no_grad()
    def forward(self, x):
        self.net.eval()
        out = self.net(x, with_aux=False) if isinstance(self.net, FixedNetwork) else self.net(x)
        return out[0] if isinstance(out, tuple) else out
