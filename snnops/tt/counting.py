"""Parameter and multiply-accumulate counts of dense and TT models (the TT-SNN paper's
Table II "Params" and "FLOPs": MACs per image summed over the T timesteps)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["Count", "count_params", "count_macs"]


@dataclass
class Count:
    """A total and its split over layers (module name -> count)."""
    total: int
    per_layer: dict = field(default_factory=dict)

    def __int__(self):
        return int(self.total)

    def __repr__(self):
        return f"Count(total={self.total}, layers={len(self.per_layer)})"


def count_params(model: nn.Module) -> Count:
    """Trainable and frozen parameters of ``model``, per module that owns them."""
    per = {}
    for name, m in model.named_modules():
        n = sum(p.numel() for p in m.parameters(recurse=False))
        if n:
            per[name or type(m).__name__] = n
    return Count(sum(per.values()), per)


def _layer_macs(m: nn.Module, inputs, output) -> Optional[int]:
    if hasattr(m, "macs") and callable(m.macs):
        return int(m.macs(tuple(inputs[0].shape)))
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return int(output.numel() * (m.in_channels // m.groups) * kh * kw)
    if isinstance(m, nn.Linear):
        return int(output.numel() * m.in_features)
    return None


def count_macs(model: nn.Module, input_size: Sequence[int], timesteps: int = 1, *,
               example_input: Optional[torch.Tensor] = None) -> Count:
    """Multiply-accumulates of one image (batch 1) summed over ``timesteps``, per layer.

    ``input_size`` is one image, ``(C, H, W)``. The model runs once, without gradients,
    on ``[T, 1, C, H, W]`` zeros (or ``[T, C, H, W]`` if it does not take 5-D input, or
    on ``example_input`` with batch 1). Convolutions and linear layers count
    ``outputs x fan-in``; TT layers count themselves (``TTConv2d.macs``: the paper's
    ``H*W*(r*Cin + 6r^2 + r*Cout)`` per full step, ``H*W*r*(Cin + Cout)`` per HTT half
    step); and layers inside a counted layer are not counted again.
    """
    if timesteps < 1:
        raise ValueError(f"snnops.tt.count_macs: timesteps must be >= 1, got {timesteps}")
    per: dict = {}
    counted_roots = []
    hooks = []

    def hook(name):
        def fn(m, inputs, output):
            if any(name.startswith(root + ".") for root in counted_roots):
                return
            n = _layer_macs(m, inputs, output)
            if n is not None:
                per[name] = per.get(name, 0) + n
        return fn

    for name, m in model.named_modules():
        if hasattr(m, "macs") and callable(m.macs):
            counted_roots.append(name)
        hooks.append(m.register_forward_hook(hook(name or type(m).__name__)))
    param = next(model.parameters(), None)
    fk = dict(device=param.device, dtype=param.dtype) if param is not None else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if example_input is not None:
                model(example_input)
            else:
                x5 = torch.zeros(timesteps, 1, *input_size, **fk)
                try:
                    model(x5)
                except (RuntimeError, ValueError) as first:
                    # Plain layers (nn.Conv2d, a Sequential of them) take [T*B, C, H, W] only.
                    per.clear()
                    try:
                        model(x5.flatten(0, 1))
                    except (RuntimeError, ValueError):
                        raise first from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Count(sum(per.values()), per)
