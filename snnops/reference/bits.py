"""Reference bit packing along the last dimension."""
from __future__ import annotations

import torch

__all__ = ["pack_bits_flat", "unpack_bits_flat"]

# Bit packing of a flat [..., N] boolean tensor into int32 words along the last
# dimension: bit i of word w holds element 32*w + i; the last word's unused high
# bits are 0. (On a little-endian machine this is also "byte j, bit i = 8*j + i".)


def _shifts(device):
    return torch.arange(32, device=device, dtype=torch.int64)


def pack_bits_flat(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean [..., N] tensor into int32 [..., ceil(N/32)]."""
    n = mask.shape[-1]
    words = (n + 31) // 32
    pad = words * 32 - n
    m = torch.nn.functional.pad(mask.to(torch.int64), (0, pad))
    m = m.reshape(*mask.shape[:-1], words, 32)
    packed = (m << _shifts(mask.device)).sum(-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_bits_flat(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits_flat`: a boolean [..., n] tensor."""
    bits = (words.to(torch.int64).unsqueeze(-1) >> _shifts(words.device)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :n].bool()


