"""Modules built on snnops operators."""
from .lif import LIF
from .tt_conv import MergedTTConv2d, TTConv2d

__all__ = ["LIF"]
