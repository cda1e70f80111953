"""Registered operators (``torch.ops.snnops.*``) and their public Python forms."""
from ._registry import backends
from .lif import lif
from .tt_conv import ptt_conv, tt_conv

__all__ = ["backends", "lif"]
