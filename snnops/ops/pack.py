"""Bit-packed spikes: ``torch.ops.snnops.pack_spikes / unpack_spikes`` and their public forms.

Layout: packing along the feature dim ``dim`` (size K) moves that dim LAST and replaces
it by ``ceil(K/32)`` int32 words; feature k is bit ``k % 32`` of word ``k // 32``, least
significant bit first; the unused high bits of the last word are 0. So ``[M, K] ->
[M, ceil(K/32)]``; NCHW ``[N, C, H, W]`` packed along dim 1 -> ``[N, H, W, ceil(C/32)]``
(one packed row per position, what a 1x1 convolution reads); a LIF output
``[T, B, C, H, W]`` along dim 2 -> ``[T, B, H, W, ceil(C/32)]``. Consumers take K from
the weight's shape.
"""
from __future__ import annotations

import torch

from ..reference.spike_gemm import pack_spikes as _ref_pack, packed_words, unpack_spikes as _ref_unpack
from ._params import integer
from ._registry import define

__all__ = ["pack_spikes", "unpack_spikes", "packed_words"]


def _triton_pack(*args):
    from ..kernels import spike_gemm as k
    return k.pack_spikes(*args)


def _triton_unpack(*args):
    from ..kernels import spike_gemm as k
    return k.unpack_spikes(*args)


define("pack_spikes(Tensor spikes, int dim) -> Tensor",
       cpu_reference=_ref_pack, cuda_kernel=_triton_pack)
define("unpack_spikes(Tensor packed, int features, int dim, ScalarType dtype) -> Tensor",
       cpu_reference=_ref_unpack, cuda_kernel=_triton_unpack)


def _wrap(dim: int, ndim: int, what: str) -> int:
    if not -ndim <= dim < ndim:
        raise IndexError(f"{what}: dim {dim} is out of range for a tensor with {ndim} dimensions")
    return dim % ndim


@torch.library.register_fake("snnops::pack_spikes")
def _pack_fake(spikes, dim):
    d = _wrap(dim, spikes.dim(), "snnops.pack_spikes")
    shape = [s for i, s in enumerate(spikes.shape) if i != d]
    return spikes.new_empty((*shape, packed_words(spikes.shape[d])), dtype=torch.int32)


@torch.library.register_fake("snnops::unpack_spikes")
def _unpack_fake(packed, features, dim, dtype):
    d = _wrap(dim, packed.dim(), "snnops.unpack_spikes")
    shape = list(packed.shape[:-1])
    shape.insert(d, features)
    return packed.new_empty(shape, dtype=dtype)


def pack_spikes(spikes: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pack 0/1 spikes into int32 words along the feature dim ``dim`` (moved last).

    Args:
        spikes: any shape, real or bool dtype, every value exactly 0 or 1.
        dim: the feature (channel) dim: -1 for ``[..., K]``, 1 for NCHW, 2 for ``[T, B, C, H, W]``.

    Returns int32 ``spikes.shape`` without ``dim``, plus ``ceil(K/32)`` words last.
    A value other than 0 or 1 raises an error giving its index.
    """
    if not isinstance(spikes, torch.Tensor):
        raise TypeError(f"snnops.pack_spikes: spikes must be a tensor, got {type(spikes).__name__}")
    if spikes.dim() == 0:
        raise ValueError("snnops.pack_spikes: spikes must have at least one dimension (the features)")
    if spikes.is_complex():
        raise TypeError(f"snnops.pack_spikes: spikes must be real or bool, got {spikes.dtype}")
    _wrap(dim, spikes.dim(), "snnops.pack_spikes")
    return torch.ops.snnops.pack_spikes(spikes, dim)


def unpack_spikes(packed: torch.Tensor, features: int, dim: int = -1,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_spikes`: ``features`` = K, ``dim`` = where K goes in the result."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32:
        raise TypeError("snnops.unpack_spikes: packed must be an int32 tensor of words, got "
                        f"{packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__}")
    if packed.dim() == 0:
        raise ValueError("snnops.unpack_spikes: packed must have at least one dimension (the words)")
    features = integer("snnops.unpack_spikes", "features", features)
    if features < 0 or packed.shape[-1] != packed_words(features):
        raise ValueError(f"snnops.unpack_spikes: packed has {packed.shape[-1]} words in its last dim, but "
                         f"features={features} needs ceil({features}/32) = {packed_words(max(features, 0))}")
    _wrap(dim, packed.dim(), "snnops.unpack_spikes")
    return torch.ops.snnops.unpack_spikes(packed, features, dim, dtype)
