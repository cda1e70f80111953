"""Registered operators (``torch.ops.snnops.*``) and their public Python forms."""
from ._registry import backends
from .bn_add import bn_add
from .bn_lif import bn_lif
from .lif import lif
from .spike_gemm import QuantizedWeight, lowbit_weight, pack_spikes, quantize_weight, spike_conv1x1, spike_linear, spike_linear_lowbit, unpack_spikes
from .tt_conv import ptt_conv, tt_conv

__all__ = ["backends", "lif"]
