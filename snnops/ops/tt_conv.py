"""Tensor-train convolutions: ``torch.ops.snnops.ptt_conv`` / ``tt_block`` and the public
functional forms :func:`ptt_conv` and :func:`tt_conv`."""
from __future__ import annotations

from typing import Sequence

import torch

from .. import reference

__all__ = ["ptt_conv", "tt_conv"]


def ptt_conv(o: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """``(conv3x1(o, w2) + conv1x3(o, w3)) / 2`` with same-size padding."""
    return reference.ptt_conv(o, w2, w3)


def tt_conv(x, g1, g2, g3, g4, *, parallel: bool = True, schedule: Sequence[bool] = (), pool: bool = False):
    """The TT layer on images ``x [T*B, Cin, H, W]``; see :class:`snnops.nn.TTConv2d`."""
    return reference.tt_conv(x, g1, g2, g3, g4, parallel=parallel, schedule=schedule, pool=pool)
