"""LitE-SNN (Liu et al.): compressive search of small, low-bit spiking networks.

``quant`` (Gaussian-step quantizer, top-k mask), ``compconv`` (:class:`CompConv2d`),
``cost`` (model size, SynOps, Bit-SynOps, the search loss), ``search_space`` (the
supernet), ``search`` (joint optimization and presets), ``decode`` (the fixed network),
``retrain``, ``deploy`` (low-bit spike kernels) and ``train`` (``snnops train --method lite``).
"""
from .compconv import CompConv2d
from .quant import GAUSSIAN_STEPS, quantize, quantize_codes, topk_mask

__all__ = ["CompConv2d", "GAUSSIAN_STEPS", "quantize", "quantize_codes", "topk_mask"]
