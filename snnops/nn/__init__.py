"""Modules built on snnops operators."""
from .lif import LIF

__all__ = ["LIF"]
