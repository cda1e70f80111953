"""``snnops.nn.CompConv2d``: LitE-SNN's compressive convolution (defined in
:mod:`snnops.lite.compconv`, which depends on torch alone)."""
from ..lite.compconv import CompConv2d

__all__ = ["CompConv2d"]
