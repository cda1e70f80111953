"""``snnops.nn.LIF``: the multi-step LIF neuron as a stateful module (SpikingJelly style)."""
from __future__ import annotations

from typing import Optional

import torch

from ..ops._params import flag, integer
from ..ops.lif import check_lif_input, lif, resolve_params


class LIF(torch.nn.Module):
    """Multi-step LIF neuron over ``[T, B, ...]`` inputs.

    Keeps its membrane ``v`` across calls (gradients flow through it, as in
    SpikingJelly) until :meth:`reset`; :meth:`detach` cuts the graph but keeps the value.
    Arguments are those of :func:`snnops.lif`. With ``store_v_seq`` the membrane
    sequence of the last call is kept in ``v_seq``. With ``pack_dim`` the forward
    returns ``(spikes, packed)``: the spikes also bit-packed along that dimension, for
    a following :class:`snnops.nn.SpikeConv1x1` / :class:`snnops.nn.SpikeLinear`.
    """

    def __init__(self, tau: Optional[float] = None, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, surrogate="sigmoid", detach_reset: bool = False,
                 decay: Optional[float] = None, store_v_seq: bool = False, pack_dim: Optional[int] = None):
        super().__init__()
        # Validate once, at construction, with the argument names the user gave.
        resolve_params(tau=tau, decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset,
                       detach_reset=detach_reset, decay=decay, surrogate=surrogate)
        self.kwargs = dict(tau=tau, decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset,
                           detach_reset=detach_reset, decay=decay, surrogate=surrogate)
        self.store_v_seq = flag("snnops.nn.LIF", "store_v_seq", store_v_seq)
        self.pack_dim = None if pack_dim is None else integer("snnops.nn.LIF", "pack_dim", pack_dim)
        self.v: Optional[torch.Tensor] = None
        self.v_seq: Optional[torch.Tensor] = None

    def reset(self):
        self.v = None
        self.v_seq = None

    def detach(self):
        if self.v is not None:
            self.v = self.v.detach()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = self.v
        if v is not None and tuple(v.shape) != tuple(x_seq.shape[1:]):
            check_lif_input(x_seq, None)
            raise ValueError(f"snnops.nn.LIF: the stored state has shape {tuple(v.shape)} but x_seq has "
                             f"timesteps of shape {tuple(x_seq.shape[1:])}; call reset() between batches")
        out = lif(x_seq, v, return_membrane=self.store_v_seq, pack_dim=self.pack_dim, **self.kwargs)
        spikes, self.v = out[0], out[1]
        if self.store_v_seq:
            self.v_seq = out[2]
        if self.pack_dim is not None:
            return spikes, out[-1]
        return spikes

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if v is not None)
