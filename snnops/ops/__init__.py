"""Registered operators (``torch.ops.snnops.*``) and their public Python forms."""
from ._registry import backends
from .lif import lif

__all__ = ["backends", "lif"]
