"""Dual networks for Joint A-SNN: one set of (factorized) weights, two paths.

Each layer runs in ANN mode (ReLU, input ``[B, C, H, W]``) or SNN mode (snnops LIF over
``T`` steps, input ``[T, B, C, H, W]``); convs, BN and pooling run once on ``[T*B, ...]``.
The SNN path repeats the static image over ``T`` steps; since its first conv and BN see
the same image at every step, they run once on ``[B, ...]`` and the result is expanded
over time (the first LIF turns it into spikes: the encoding layer).

Branch heads sit after stages 1, 2, 3 and at the output: 1x1 conv to ``C4/4`` (128 for
width 64), BN, act; ``k x k`` conv stride ``k`` that brings the map to the last stage's
size (k = 8, 4, 2 for ResNets); 1x1 conv to ``C4`` (512), BN, act; global pool; linear.
A forward returns the four branches' logits and pooled features (branch 4 = the output
classifier on the last stage's pooled features). The SNN's logits and features are
means over time (the linear classifier commutes with the mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.wft import WEIGHT_MODES, DualBatchNorm2d, WFTConv2d, WFTLinear, check_path
from ..ops.lif import lif as _lif, resolve_params

BACKBONES = ("resnet18", "resnet34", "vgg16")

# Joint A-SNN's neuron (METHODS.md section 1): decay 0.25, threshold 0.5, hard reset to 0
# with the reset NOT detached, rectangular surrogate of width 1.
JOINT_LIF = dict(decay=0.25, v_threshold=0.5, v_reset=0.0, surrogate="rect", detach_reset=False)
_LIF_KEYS = {"tau", "decay_input", "v_threshold", "v_reset", "detach_reset", "decay", "surrogate"}

__all__ = ["BACKBONES", "JOINT_LIF", "DualOutput", "DualNet", "build_network"]


@dataclass
class DualOutput:
    """Logits ``[B, classes]`` and pooled features ``[B, C]`` of every branch, in order
    (stage 1, 2, 3 branches, then the output classifier)."""

    logits: Tuple[torch.Tensor, ...]
    features: Tuple[torch.Tensor, ...]

    @property
    def output(self) -> torch.Tensor:
        """The network's prediction (the last branch)."""
        return self.logits[-1]


class DualAct(nn.Module):
    """ReLU on the ANN path, multi-step LIF on the SNN path (``[T, B, ...]``)."""

    def __init__(self, lif_kwargs: dict):
        super().__init__()
        self.lif_kwargs = dict(lif_kwargs)

    def forward(self, x, path):
        if path == "ann":
            return F.relu(x)
        spikes, _ = _lif(x, **self.lif_kwargs)
        return spikes


class DualSequential(nn.ModuleList):
    def forward(self, x, path):
        for m in self:
            x = m(x, path)
        return x


class DualAvgPool2d(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x, path):
        if x.dim() == 5:
            return F.avg_pool2d(x.flatten(0, 1), self.kernel_size).unflatten(0, x.shape[:2])
        return F.avg_pool2d(x, self.kernel_size)


def _global_pool(x):
    """[B, C, H, W] -> [B, C]; [T, B, C, H, W] -> [B, C] (mean over time and space)."""
    if x.dim() == 5:
        return x.mean(dim=(0, 3, 4))
    return x.mean(dim=(2, 3))


class ConvBNAct(DualSequential):
    def __init__(self, cin, cout, kernel_size, stride, padding, weights, lif_kwargs):
        super().__init__([WFTConv2d(cin, cout, kernel_size, stride, padding, weights=weights),
                          DualBatchNorm2d(cout), DualAct(lif_kwargs)])


class BasicBlock(nn.Module):
    """ResNet basic block; the activation follows the residual sum (as in the authors' code)."""

    def __init__(self, cin, cout, stride, weights, lif_kwargs):
        super().__init__()
        self.conv1 = WFTConv2d(cin, cout, 3, stride, 1, weights=weights)
        self.bn1 = DualBatchNorm2d(cout)
        self.act1 = DualAct(lif_kwargs)
        self.conv2 = WFTConv2d(cout, cout, 3, 1, 1, weights=weights)
        self.bn2 = DualBatchNorm2d(cout)
        self.act2 = DualAct(lif_kwargs)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = DualSequential([WFTConv2d(cin, cout, 1, stride, 0, weights=weights),
                                            DualBatchNorm2d(cout)])

    def forward(self, x, path):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x, path), path), path), path), path)
        residual = x if self.shortcut is None else self.shortcut(x, path)
        return self.act2(out + residual, path)


class BranchHead(nn.Module):
    """1x1 conv to ``mid``, BN, act; k x k conv stride k, BN, act; 1x1 conv to ``cout``,
    BN, act; global pool. Returns the pooled feature ``[B, cout]``."""

    def __init__(self, cin, mid, cout, k, weights, lif_kwargs):
        super().__init__()
        self.body = DualSequential([
            ConvBNAct(cin, mid, 1, 1, 0, weights, lif_kwargs),
            ConvBNAct(mid, mid, k, k, 0, weights, lif_kwargs),
            ConvBNAct(mid, cout, 1, 1, 0, weights, lif_kwargs),
        ])

    def forward(self, x, path):
        return _global_pool(self.body(x, path))


class DualNet(nn.Module):
    """A stem, four stages, three branch heads and a classifier, each layer dual.

    ``forward(x, path, timesteps=None, branches=True) -> DualOutput``:
    ``x`` is ``[B, C, H, W]`` (the SNN path repeats it ``timesteps`` times, default
    ``self.timesteps``) or, on the SNN path only, a time-major sequence ``[T, B, C, H, W]``.
    With ``branches=False`` only the output classifier is computed.
    """

    def __init__(self, stem: DualSequential, stages: List[nn.Module], stage_strides: List[int],
                 stage_channels: List[int], num_classes: int, in_channels: int, weights: str,
                 classifier_weights: str, timesteps: int, lif_kwargs: dict, backbone: str):
        super().__init__()
        self.backbone = backbone
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.timesteps = timesteps
        self.weights = weights
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        c4 = stage_channels[-1]
        heads, classifiers = [], []
        for i in range(3):
            k = 1
            for s in stage_strides[i + 1:]:
                k *= s
            heads.append(BranchHead(stage_channels[i], max(c4 // 4, 1), c4, k, weights, lif_kwargs))
            classifiers.append(WFTLinear(c4, num_classes, weights=classifier_weights))
        self.heads = nn.ModuleList(heads)
        self.branch_fc = nn.ModuleList(classifiers)
        self.fc = WFTLinear(c4, num_classes, weights=classifier_weights)

    def _check_input(self, x, path):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"DualNet: x must be a floating tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() == 5 and path == "ann":
            raise ValueError("DualNet: the ANN path takes [B, C, H, W], got a 5-d (time-major) input")
        if x.dim() not in (4, 5) or x.shape[-3] != self.in_channels:
            raise ValueError(f"DualNet: x must be [B, {self.in_channels}, H, W] (or [T, B, {self.in_channels}, H, W] "
                             f"on the SNN path), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, path: str, timesteps: Optional[int] = None,
                branches: bool = True) -> DualOutput:
        check_path(path, "DualNet")
        self._check_input(x, path)
        if path == "snn" and x.dim() == 4:
            T = self.timesteps if timesteps is None else timesteps
            if isinstance(T, bool) or not isinstance(T, int) or T < 1:
                raise ValueError(f"DualNet: timesteps must be a positive int, got {T!r}")
            conv, bn, act = self.stem
            h = bn(conv(x, path), path)  # the same at every step: computed once
            h = act(h.unsqueeze(0).expand(T, *h.shape), path)
        else:
            h = self.stem(x, path)
        logits, features = [], []
        for i, stage in enumerate(self.stages):
            h = stage(h, path)
            if branches and i < 3:
                f = self.heads[i](h, path)
                features.append(f)
                logits.append(self.branch_fc[i](f, path))
        f = _global_pool(h)
        features.append(f)
        logits.append(self.fc(f, path))
        return DualOutput(tuple(logits), tuple(features))


def _resnet(blocks, num_classes, in_channels, width, weights, lif_kwargs):
    stem = ConvBNAct(in_channels, width, 3, 1, 1, weights, lif_kwargs)
    channels = [width, 2 * width, 4 * width, 8 * width]
    strides = [1, 2, 2, 2]
    stages, cin = [], width
    for n, cout, stride in zip(blocks, channels, strides):
        layers = [BasicBlock(cin, cout, stride, weights, lif_kwargs)]
        layers += [BasicBlock(cout, cout, 1, weights, lif_kwargs) for _ in range(n - 1)]
        stages.append(DualSequential(layers))
        cin = cout
    return stem, stages, strides, channels


def _vgg16(num_classes, in_channels, width, weights, lif_kwargs):
    # The 13 convs of VGG-16 (64-64 | 128-128 | 256x3 | 512x3 512x3 for width 64) with
    # the last two groups forming stage 4, so there are three 2x2 average-pool
    # downsamplings as in the ResNets (branch kernels 8, 4, 2); one linear classifier on
    # the pooled features, as every branch has (ours: the paper does not give its VGG head).
    groups = [[width] * 2, [2 * width] * 2, [4 * width] * 3, [8 * width] * 6]
    stem = ConvBNAct(in_channels, width, 3, 1, 1, weights, lif_kwargs)
    stages, cin = [], width
    for i, group in enumerate(groups):
        layers = [] if i == 0 else [DualAvgPool2d(2)]
        convs = group[1:] if i == 0 else group  # the stem is the first conv of group 1
        for cout in convs:
            layers.append(ConvBNAct(cin, cout, 3, 1, 1, weights, lif_kwargs))
            cin = cout
        stages.append(DualSequential(layers))
    return stem, stages, [1, 2, 2, 2], [g[-1] for g in groups]


def build_network(backbone: str = "resnet18", num_classes: int = 10, in_channels: int = 3, width: int = 64,
                  weights: str = "wft", timesteps: int = 4, lif: Optional[dict] = None,
                  classifier_weights: Optional[str] = None) -> DualNet:
    """A dual ``resnet18`` | ``resnet34`` | ``vgg16`` (CIFAR form: 3x3 stem, stride 1).

    ``width`` is the first stage's channel count (64 in the paper; smaller for quick
    runs). ``weights``: ``"wft"`` | ``"separate"`` | ``"shared"`` for every conv and
    linear layer (``classifier_weights`` overrides it for the linear classifiers; the
    authors' code keeps them ``"separate"``). ``lif``: keyword arguments of
    :func:`snnops.lif` (default :data:`JOINT_LIF`).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"build_network: unknown backbone {backbone!r}; expected one of {BACKBONES}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width),
                        ("timesteps", timesteps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"build_network: {name} must be a positive int, got {value!r}")
    if num_classes < 2:
        raise ValueError(f"build_network: num_classes must be >= 2, got {num_classes}")
    if weights not in WEIGHT_MODES or (classifier_weights is not None and classifier_weights not in WEIGHT_MODES):
        raise ValueError(f"build_network: weights and classifier_weights must be one of {WEIGHT_MODES}, "
                         f"got {weights!r} and {classifier_weights!r}")
    lif_kwargs = dict(JOINT_LIF if lif is None else lif)
    unknown = set(lif_kwargs) - _LIF_KEYS
    if unknown:
        raise ValueError(f"build_network: unknown lif arguments {sorted(unknown)}; expected some of {sorted(_LIF_KEYS)}")
    resolve_params(tau=lif_kwargs.get("tau"), decay_input=lif_kwargs.get("decay_input", True),
                   v_threshold=lif_kwargs.get("v_threshold", 1.0), v_reset=lif_kwargs.get("v_reset", 0.0),
                   detach_reset=lif_kwargs.get("detach_reset", False), decay=lif_kwargs.get("decay"),
                   surrogate=lif_kwargs.get("surrogate", "sigmoid"))
    classifier_weights = weights if classifier_weights is None else classifier_weights
    if backbone == "vgg16":
        parts = _vgg16(num_classes, in_channels, width, weights, lif_kwargs)
    else:
        blocks = [2, 2, 2, 2] if backbone == "resnet18" else [3, 4, 6, 3]
        parts = _resnet(blocks, num_classes, in_channels, width, weights, lif_kwargs)
    stem, stages, strides, channels = parts
    return DualNet(stem, stages, strides, channels, num_classes, in_channels, weights, classifier_weights,
                   timesteps, lif_kwargs, backbone)
