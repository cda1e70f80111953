"""Replace trained 3x3 convolutions by TT layers: rank choice (int, tuple, EVBMF) and
TT-SVD initialization; and the inverse, merging TT layers back into dense ones."""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

from .evbmf import evbmf
from .svd import tt_svd

__all__ = ["vbmf_rank", "cores_from_dense", "decompose", "decompose_model", "merge_model", "is_decomposable"]


def vbmf_rank(weight: torch.Tensor) -> int:
    """EVBMF rank of a trained 3x3 kernel ``[Cout, Cin, 3, 3]``: EVBMF of the unfolding
    ``Cout x 9Cin`` and, if it finds nothing, of ``Cin x 9Cout`` (the first non-zero
    estimate, as the TT-SNN authors' rank selection)."""
    w = weight.detach().to(torch.float64)
    cout, cin = w.shape[:2]
    for unfolding in (w.reshape(cout, 9 * cin), w.permute(1, 0, 2, 3).reshape(cin, 9 * cout)):
        r = evbmf(unfolding).rank
        if r > 0:
            return r
    raise ValueError("snnops.tt: EVBMF found no component above the noise level in either unfolding of the "
                     "kernel (this happens on untrained weights: run it on a trained model, or give ranks)")


def cores_from_dense(weight: torch.Tensor, ranks, mode: str):
    """TT-SVD cores of ``weight`` at ``ranks`` (an int, a 3-tuple, or 'vbmf')."""
    if isinstance(ranks, str):
        ranks = (vbmf_rank(weight),) * 3
    elif isinstance(ranks, int):
        ranks = (ranks,) * 3
    return tt_svd(weight, ranks)


def is_decomposable(conv: nn.Module) -> bool:
    """A 3x3 ``nn.Conv2d`` with padding 1, stride 1 or 2, no groups or dilation."""
    return (type(conv) is nn.Conv2d and tuple(conv.kernel_size) == (3, 3) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1) and tuple(conv.padding) in ((1, 1),)
            and tuple(conv.stride) in ((1, 1), (2, 2)) and conv.padding_mode == "zeros")


def decompose(conv: nn.Conv2d, ranks: Union[int, tuple, str] = "vbmf", mode: str = "ptt", **layer_kwargs):
    """A :class:`snnops.nn.TTConv2d` initialized by TT-SVD from a 3x3 ``nn.Conv2d``.

    ``ranks``: an int, ``(r1, r2, r3)`` (STT) or ``'vbmf'`` (EVBMF on the trained kernel).
    A stride-2 conv becomes a stride-1 TT layer followed by a 2x2 max-pool, as in the
    TT-SNN authors' code. ``layer_kwargs`` go to ``TTConv2d`` (``schedule``,
    ``timesteps``, ``backend``). Only STT reproduces the (truncated) kernel; for PTT and
    HTT the TT-SVD cores are the starting point of training.
    """
    from ..nn.tt_conv import TTConv2d
    if not is_decomposable(conv):
        raise ValueError(f"snnops.tt.decompose: expected a 3x3 nn.Conv2d with padding 1, stride 1 or 2, "
                         f"groups 1, dilation 1, got {conv!r}")
    w = conv.weight.detach()
    if ranks == "vbmf":
        ranks = vbmf_rank(w)
    layer = TTConv2d(conv.in_channels, conv.out_channels, ranks, mode, pool=tuple(conv.stride) == (2, 2),
                     bias=conv.bias is not None, weight=w, device=w.device, dtype=w.dtype, **layer_kwargs)
    if conv.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(conv.bias)
    return layer.train(conv.training)


def _set_child(model: nn.Module, name: str, new: nn.Module):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def decompose_model(model: nn.Module, ranks: Union[int, tuple, str, Mapping, Callable] = "vbmf",
                    mode: str = "ptt", *, skip_stem: bool = True, skip=(), inplace: bool = False,
                    **layer_kwargs) -> nn.Module:
    """Replace the 3x3 convolutions of a trained model by TT layers (TT-SVD initialized).

    As in the paper, only 3x3 convs are decomposed: 1x1 shortcut convs and linear
    classifiers are never touched, and the stem (the first 3x3 conv in module order) is
    kept dense unless ``skip_stem=False``. ``skip`` names further modules to keep.
    ``ranks``: one for all (int, tuple, 'vbmf'), a dict ``{module name: ranks}``, or a
    function ``(name, conv) -> ranks``. Returns the new model (a copy unless ``inplace``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if is_decomposable(m)]
    skip = set(skip)
    unknown = skip - {n for n, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"snnops.tt.decompose_model: skip names modules the model does not have: {sorted(unknown)}")
    if skip_stem and names:
        skip.add(names[0])
    for name in names:
        if name in skip:
            continue
        conv = model.get_submodule(name)
        if callable(ranks) and not isinstance(ranks, (str, Mapping)):
            r = ranks(name, conv)
        elif isinstance(ranks, Mapping):
            if name not in ranks:
                raise ValueError(f"snnops.tt.decompose_model: no rank given for {name!r} "
                                 f"(give every decomposed conv a rank, or list it in skip)")
            r = ranks[name]
        else:
            r = ranks
        _set_child(model, name, decompose(conv, r, mode, **layer_kwargs))
    return model


def merge_model(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every :class:`snnops.nn.TTConv2d` by its exactly equivalent merged layer
    (:meth:`TTConv2d.to_dense`). Returns the new model (a copy unless ``inplace``)."""
    from ..nn.tt_conv import TTConv2d
    if isinstance(model, TTConv2d):
        return model.to_dense()
    if not inplace:
        model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, TTConv2d):
            _set_child(model, name, m.to_dense())
    return model
