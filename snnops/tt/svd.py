"""TT-SVD of a 3x3 convolution kernel into the four TT-SNN cores."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["tt_svd", "max_ranks"]


def max_ranks(in_channels: int, out_channels: int) -> tuple:
    """The ranks at which TT-SVD of a ``[Cout, Cin, 3, 3]`` kernel is exact:
    ``r1 = min(Cin, 9 Cout)``, ``r2 = min(3 r1, 3 Cout)``, ``r3 = min(3 r2, Cout)``."""
    r1 = min(in_channels, 9 * out_channels)
    r2 = min(3 * r1, 3 * out_channels)
    r3 = min(3 * r2, out_channels)
    return r1, r2, r3


def _truncated(m: torch.Tensor, rank: int):
    """``m ~ left @ right`` with ``left`` of ``rank`` orthonormal columns (zero columns
    beyond the matrix's own rank, so any requested rank has the requested shape)."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(rank, s.shape[0])
    left = m.new_zeros(m.shape[0], rank)
    right = m.new_zeros(rank, m.shape[1])
    left[:, :k] = u[:, :k]
    right[:k] = s[:k, None] * vh[:k]
    return left, right


def tt_svd(weight: torch.Tensor, ranks: Sequence[int]):
    """Cores ``(g1, g2, g3, g4)`` (conv-weight shapes, see ``snnops.reference.tt_conv``) of
    the TT-SVD of ``weight [Cout, Cin, 3, 3]`` permuted to ``(Cin, 3, 3, Cout)``, truncated
    to ``ranks = (r1, r2, r3)``. At :func:`max_ranks` (or above) the STT composition of the
    cores equals the kernel up to rounding; below, it is the sequential truncated SVD's
    approximation. Computed in float64, returned in the weight's dtype."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"snnops.tt.tt_svd: weight must be [Cout, Cin, 3, 3], got {tuple(weight.shape)}")
    r1, r2, r3 = (int(r) for r in ranks)
    if min(r1, r2, r3) < 1:
        raise ValueError(f"snnops.tt.tt_svd: ranks must be >= 1, got {tuple(ranks)}")
    cout, cin = weight.shape[:2]
    w = weight.detach().to(torch.float64).permute(1, 2, 3, 0)  # (Cin, 3, 3, Cout)
    c1, rest = _truncated(w.reshape(cin, 9 * cout), r1)                  # [Cin, r1], [r1, 9 Cout]
    c2, rest = _truncated(rest.reshape(r1 * 3, 3 * cout), r2)            # [r1*3, r2], [r2, 3 Cout]
    c3, c4 = _truncated(rest.reshape(r2 * 3, cout), r3)                  # [r2*3, r3], [r3, Cout]
    g1 = c1.t()[:, :, None, None]                                        # G1[a, i]
    g2 = c2.reshape(r1, 3, r2).permute(2, 0, 1)[:, :, :, None]           # G2[b, a, kh]
    g3 = c3.reshape(r2, 3, r3).permute(2, 0, 1)[:, :, None, :]           # G3[c, b, kw]
    g4 = c4.t()[:, :, None, None]                                        # G4[o, c]
    return tuple(g.contiguous().to(weight.dtype) for g in (g1, g2, g3, g4))
