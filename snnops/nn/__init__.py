"""Modules built on snnops operators."""
from .compconv import CompConv2d
from .lif import LIF
from .spike_linear import SpikeConv1x1, SpikeLinear
from .tt_conv import MergedTTConv2d, TTConv2d
from .wft import DualBatchNorm2d, WFTConv2d, WFTLinear

__all__ = ["LIF"]
