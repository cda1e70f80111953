"""MS-ResNet18/34 spiking networks (membrane shortcut), dense or in tensor-train form.

    model = snnops.models.ms_resnet18(conv="ptt", timesteps=4, num_classes=10)
    logits = model(images)            # [B, C, H, W] repeated over T, or [T, B, C, H, W]

The CIFAR layout the TT-SNN authors use: 3x3 stem (stride 1) + tdBN, four stages of
64/128/256/512 channels, blocks ``LIF -> conv -> BN -> LIF -> conv -> BN`` plus a
shortcut on the block's real-valued input (identity, or 1x1 strided conv + BN), no
LIF after the add; head LIF -> global average pool -> mean over T -> FC.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .. import tt
from ..nn.tt_conv import TTConv2d
from .blocks import (CONV_KINDS, NeuronConfig, SeqConv2d, SpikingNeuron, TemporalBatchNorm, check_backend,
                     frames_channels_last, full_steps, fusable, fused_bn_lif, repeat_steps, to_channels_last)

STAGE_CHANNELS = (64, 128, 256, 512)
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

# Default TT ranks, one per stage. The paper's VBMF ranks are not published; these
# give MS-ResNet18 on CIFAR-10 1.865 M parameters (paper: 1.83 M, +1.9%) and 0.374 G
# MACs over T = 4 (paper: 0.372 G; HTT 0.292 G, paper 0.282 G), the best fit of the
# three with ranks that are multiples of 16 (SIMD-friendly for the kernels).
DEFAULT_RANKS = {
    18: (16, 16, 64, 176),
    # MS-ResNet34 (2x48x48, 101 classes, T = 6): 2.63 M parameters, 1.66 G MACs,
    # HTT 1.32 G (paper, N-Caltech101: 2.67 M, 1.69 G, HTT 1.46 G), fitted the same way.
    34: (16, 16, 48, 160),
}

RankSpec = Union[int, Sequence[int], str, None]


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class MSBlock(nn.Module):
    """``LIF -> conv1 -> BN -> LIF -> conv2 -> BN`` + shortcut (membrane shortcut)."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module, in_channels: int, out_channels: int, stride: int,
                 neuron: NeuronConfig, backend: str):
        super().__init__()
        self.lif1 = SpikingNeuron(neuron, backend)
        self.conv1 = conv1
        self.bn1 = TemporalBatchNorm(out_channels, backend=backend)
        self.lif2 = SpikingNeuron(neuron, backend)
        self.conv2 = conv2
        self.bn2 = TemporalBatchNorm(out_channels, backend=backend)
        nn.init.constant_(self.bn2.weight, 0.1)  # TT-SNN code: the residual branch starts small
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                SeqConv2d(in_channels, out_channels, 1, stride=stride, bias=False,
                          subsample_first=backend == "snnops"),
                TemporalBatchNorm(out_channels, backend=backend))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        pack = _wants_packed(self.conv1) and self.lif1.backend == "snnops"
        spikes = self.lif1(x_seq, pack=pack)
        out = _conv_spikes(self.conv1, spikes)
        pack = _wants_packed(self.conv2) and self.lif2.backend == "snnops"
        if fusable(self.bn1, self.lif2, out):
            spikes = fused_bn_lif(self.bn1, self.lif2, out)   # (spikes, packed)
            if not pack:
                spikes = spikes[0]
        else:
            spikes = self.lif2(self.bn1(out), pack=pack)
        # BN and the membrane shortcut's add in one op on snnops (see TemporalBatchNorm)
        return self.bn2(_conv_spikes(self.conv2, spikes), residual=self.shortcut(x_seq))


def _wants_packed(conv) -> bool:
    """The conv can use the spikes bit-packed along the channels: the TT layer's first
    core reads them directly, the dense conv keeps them for backward instead of
    packing them again."""
    return ((isinstance(conv, TTConv2d) and conv.spiking and conv.backend == "snnops")
            or (isinstance(conv, SeqConv2d) and conv.spike_input and torch.is_grad_enabled()))


def _conv_spikes(conv, spikes):
    if isinstance(spikes, tuple):
        spikes, packed = spikes
        if packed is not None:
            return conv(spikes, packed=packed)
    return conv(spikes)


class MSResNet(nn.Module):
    """MS-ResNet for CIFAR-style inputs. Build it with :func:`ms_resnet18` /
    :func:`ms_resnet34`; arguments are documented there."""

    def __init__(self, depth: int = 18, conv: str = "dense", timesteps: int = 4, num_classes: int = 10,
                 in_channels: int = 3, ranks: RankSpec = None, backend: str = "snnops",
                 schedule="first", neuron: Optional[NeuronConfig] = None, dense_model: Optional[nn.Module] = None,
                 decay: float = 0.25, v_threshold: float = 0.5, v_reset: Optional[float] = 0.0,
                 surrogate: str = "rect", detach_reset: bool = True):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        if conv not in CONV_KINDS:
            raise ValueError(f"conv must be one of {CONV_KINDS}, got {conv!r}")
        _check_positive_int("timesteps", timesteps)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        check_backend(backend)
        if neuron is None:
            neuron = NeuronConfig(decay=decay, v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                                  detach_reset=detach_reset)
        self.depth, self.conv, self.timesteps, self.num_classes = depth, conv, timesteps, num_classes
        self.in_channels, self.backend, self.neuron = in_channels, backend, neuron
        self.schedule = schedule
        if conv == "htt":
            full_steps(schedule, timesteps)  # validate early, with a clear message
        n_tt = 2 * sum(DEPTHS[depth])
        self.ranks: Optional[List[int]] = None if conv == "dense" else resolve_ranks(
            ranks, depth, n_tt, dense_model)

        self.stem_conv = SeqConv2d(in_channels, STAGE_CHANNELS[0], 3, padding=1, bias=False)
        self.stem_bn = TemporalBatchNorm(STAGE_CHANNELS[0], backend=backend)
        blocks, cin, layer = [], STAGE_CHANNELS[0], 0
        for stage, (cout, n_blocks) in enumerate(zip(STAGE_CHANNELS, DEPTHS[depth])):
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                conv1 = self._conv(cin, cout, stride, layer)
                conv2 = self._conv(cout, cout, 1, layer + 1)
                blocks.append(MSBlock(conv1, conv2, cin, cout, stride, neuron, backend))
                cin, layer = cout, layer + 2
        self.blocks = nn.Sequential(*blocks)
        self.head_lif = SpikingNeuron(neuron, backend)
        self.fc = nn.Linear(STAGE_CHANNELS[-1], num_classes)
        _set_conv_layout(self, backend)

    def _conv(self, cin: int, cout: int, stride: int, layer: int) -> nn.Module:
        if self.conv == "dense":
            return SeqConv2d(cin, cout, 3, stride=stride, padding=1, bias=False,
                             spike_input=self.backend == "snnops")
        return make_tt_conv(cin, cout, self.ranks[layer], self.conv, stride, self.timesteps, self.schedule,
                            self.backend)

    # ------------------------------------------------------------------ forward

    @property
    def min_input_size(self) -> int:
        return 2 ** (len(STAGE_CHANNELS) - 1)

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MS-ResNet input must be a tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5):
            raise ValueError(f"MS-ResNet input must be [B, C, H, W] (static, repeated over T) or "
                             f"[T, B, C, H, W] (event frames), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"MS-ResNet input must be floating point, got {x.dtype}")
        c, h, w = x.shape[-3:]
        if c != self.in_channels:
            raise ValueError(f"MS-ResNet input has {c} channels, the model expects in_channels={self.in_channels}")
        if h < self.min_input_size or w < self.min_input_size:
            raise ValueError(f"MS-ResNet input size {h}x{w} is too small: three stride-2 stages need at least "
                             f"{self.min_input_size}x{self.min_input_size}")
        if x.dim() == 5 and x.shape[0] != self.timesteps:
            raise ValueError(f"MS-ResNet event input has {x.shape[0]} timesteps, the model was built "
                             f"with timesteps={self.timesteps}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, H, W]`` (repeated over T) or ``[T, B, C, H, W]``; returns
        logits ``[B, num_classes]`` (the mean over T of the per-step outputs)."""
        self.check_input(x)
        if self.backend == "snnops":
            # Channels-last frames throughout: oneDNN's convolutions are faster on them,
            # the TT kernels write them, and BN and the LIF then never change layout.
            x = to_channels_last(x)
        if x.dim() == 4:
            # A static image is the same at every step: run the stem once and repeat
            # its output (a broadcast view). BN statistics over T copies of a batch
            # equal those over the batch; only the unbiased running variance uses
            # B*H*W instead of T*B*H*W samples.
            out = self.stem_bn(self.stem_conv(x.unsqueeze(0)))
            out = repeat_steps(out, self.timesteps) if self.backend == "snnops" else \
                out.expand(self.timesteps, *out.shape[1:])
        else:
            out = self.stem_bn(self.stem_conv(x))
        out = self.blocks(out)
        spikes = self.head_lif(out)
        pooled = spikes.mean(dim=(3, 4)).mean(dim=0)     # pool, then mean over T: [B, C]
        return self.fc(pooled)

    # ------------------------------------------------------------------ counts

    def count_params(self) -> int:
        return int(tt.count_params(self).total)

    def count_macs(self, input_size) -> int:
        """Multiply-accumulates per image summed over the T timesteps (the papers'
        "FLOPs"): convolutions (TT layers by the paper's formula) and the classifier;
        BN, LIF and pooling are not counted. Runs one batch-1 forward in eval mode."""
        _check_input_size(input_size, self)
        return int(tt.count_macs(self, tuple(input_size), self.timesteps).total)

    def tt_layers(self):
        """(block index, 'conv1' | 'conv2', module) for every decomposable 3x3 conv."""
        for i, block in enumerate(self.blocks):
            yield i, "conv1", block.conv1
            yield i, "conv2", block.conv2

    def extra_repr(self):
        s = f"depth={self.depth}, conv={self.conv}, timesteps={self.timesteps}, backend={self.backend}"
        if self.ranks is not None:
            s += f", ranks={self.ranks}"
        return s


def _set_conv_layout(model: nn.Module, backend: str) -> None:
    """snnops runs on channels-last frames: its 3x3 / 1x1 conv weights are stored
    channels-last too, so oneDNN never reorders a weight or its gradient (copies the
    size of the largest weights, measured as the peak of the backward otherwise).
    SeqConv2d switches a 3x3 conv with a 4x4-or-smaller output to NCHW on its first
    call, where oneDNN's NCHW kernels are faster."""
    fmt = torch.channels_last if backend == "snnops" else torch.contiguous_format
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SeqConv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)


def _check_input_size(input_size, model):
    try:
        c, h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (C, H, W), got {input_size!r}") from None
    if c != model.in_channels:
        raise ValueError(f"input_size has {c} channels, the model expects in_channels={model.in_channels}")
    if h < model.min_input_size or w < model.min_input_size:
        raise ValueError(f"input size {h}x{w} is too small for MS-ResNet: three stride-2 stages need at least "
                         f"{model.min_input_size}x{model.min_input_size}")
    return c, h, w


# ----------------------------------------------------------------------------- ranks

def resolve_ranks(ranks: RankSpec, depth: int, n_layers: int, dense_model: Optional[nn.Module] = None) -> List[int]:
    """One rank per decomposed layer, from ``None`` (the defaults), one int, a list of
    ``n_layers`` ints, a list of 4 ints (one per stage), or ``'vbmf'`` (estimated by
    EVBMF from the 3x3 kernels of a trained ``dense_model``)."""
    per_stage_layers = [2 * n for n in DEPTHS[depth]]
    if ranks is None:
        ranks = DEFAULT_RANKS[depth]
    if isinstance(ranks, str):
        if ranks != "vbmf":
            raise ValueError(f"ranks must be an int, a list of ints or 'vbmf', got {ranks!r}")
        if dense_model is None:
            raise ValueError("ranks='vbmf' needs dense_model=<a trained dense MS-ResNet> to estimate them from")
        return vbmf_ranks(dense_model)
    if isinstance(ranks, int) and not isinstance(ranks, bool):
        ranks = [ranks] * n_layers
    try:
        ranks = [int(r) for r in ranks]
    except (TypeError, ValueError):
        raise ValueError(f"ranks must be an int, a list of ints or 'vbmf', got {ranks!r}") from None
    if len(ranks) == len(STAGE_CHANNELS) and n_layers != len(STAGE_CHANNELS):
        ranks = [r for r, n in zip(ranks, per_stage_layers) for _ in range(n)]
    if len(ranks) != n_layers:
        raise ValueError(f"ranks: MS-ResNet{depth} has {n_layers} decomposed layers; give one int, "
                         f"{len(STAGE_CHANNELS)} (one per stage) or {n_layers} ranks, got {len(ranks)}")
    bad = [r for r in ranks if r < 1]
    if bad:
        raise ValueError(f"ranks must be >= 1, got {bad[0]}")
    return ranks


def vbmf_ranks(dense_model: nn.Module) -> List[int]:
    """EVBMF rank of every 3x3 block conv of a trained dense MS-ResNet."""
    if not isinstance(dense_model, MSResNet) or dense_model.conv != "dense":
        raise ValueError("ranks='vbmf' needs a dense MS-ResNet (conv='dense') as dense_model")
    ranks = []
    for i, name, m in dense_model.tt_layers():
        try:
            ranks.append(int(tt.vbmf_rank(m.weight.detach())))
        except ValueError as exc:
            raise ValueError(f"ranks='vbmf': blocks.{i}.{name}: {exc}") from None
    return ranks


# ----------------------------------------------------------------------------- TT layers

def make_tt_conv(cin, cout, rank, mode, stride, timesteps, schedule, backend) -> nn.Module:
    """A block's 3x3 conv in TT form; stride 2 becomes a 2x2 max-pool after G4."""
    return TTConv2d(cin, cout, rank, mode, schedule=full_steps(schedule, timesteps) if mode == "htt" else None,
                    timesteps=timesteps, pool=stride == 2, backend=backend)


# ----------------------------------------------------------------------------- builders

def ms_resnet18(conv: str = "dense", *, timesteps: int = 4, num_classes: int = 10, in_channels: int = 3,
                ranks: RankSpec = None, backend: str = "snnops", schedule="first",
                dense_model: Optional[nn.Module] = None, **neuron) -> MSResNet:
    """MS-ResNet18 ([2, 2, 2, 2] blocks) for CIFAR-style inputs.

    Args:
        conv: ``'dense'`` | ``'stt'`` | ``'ptt'`` | ``'htt'`` for the block 3x3 convs.
        timesteps: T (static input is repeated T times).
        num_classes, in_channels: classifier outputs, input channels.
        ranks: TT ranks: None (defaults, ``DEFAULT_RANKS``), one int, 4 ints (per
            stage), 16 ints (per layer) or ``'vbmf'`` (with ``dense_model``).
        backend: ``'snnops'`` (fused operators) or ``'reference'`` (plain PyTorch ops,
            the same parameters and math).
        schedule: HTT full-step order: ``'first'`` (paper), ``'last'``, ``'alternate'``
            or a list of T booleans.
        **neuron: ``decay`` (0.25), ``v_threshold`` (0.5), ``v_reset`` (0.0),
            ``surrogate`` ('rect'), ``detach_reset`` (True).
    """
    return MSResNet(18, conv, timesteps, num_classes, in_channels, ranks, backend, schedule,
                    dense_model=dense_model, **neuron)


def ms_resnet34(conv: str = "dense", *, timesteps: int = 4, num_classes: int = 10, in_channels: int = 3,
                ranks: RankSpec = None, backend: str = "snnops", schedule="first",
                dense_model: Optional[nn.Module] = None, **neuron) -> MSResNet:
    """MS-ResNet34 ([3, 4, 6, 3] blocks); arguments as :func:`ms_resnet18`."""
    return MSResNet(34, conv, timesteps, num_classes, in_channels, ranks, backend, schedule,
                    dense_model=dense_model, **neuron)


MODELS = {"ms_resnet18": ms_resnet18, "ms_resnet34": ms_resnet34}


def build(name: str, **kwargs) -> MSResNet:
    """A model by name (``ms_resnet18`` | ``ms_resnet34``; ``resnet18`` etc. accepted)."""
    key = name.lower().replace("-", "_")
    if not key.startswith("ms_"):
        key = "ms_" + key
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[key](**kwargs)


# ----------------------------------------------------------------------------- merge / backend

def merge(model: MSResNet) -> MSResNet:
    """The dense equivalent of a (trained) TT model, for deployment: every TT layer
    becomes one 3x3 convolution (plus its max-pool; plus the 1x1 half-step kernel for
    HTT), :meth:`snnops.nn.TTConv2d.to_dense`. Same predictions; BN statistics and all
    other weights are copied."""
    if not isinstance(model, MSResNet):
        raise TypeError(f"merge expects an MS-ResNet, got {type(model).__name__}")
    merged = tt.merge_model(model)
    if model.conv != "dense":
        merged.conv = "merged-" + model.conv
    return merged


def convert_backend(model: MSResNet, backend: str) -> MSResNet:
    """A copy of ``model`` (same parameters and buffers) whose neurons and TT layers
    run on ``backend``."""
    check_backend(backend)
    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, (SpikingNeuron, TTConv2d, TemporalBatchNorm)):
            m.backend = backend
        elif isinstance(m, SeqConv2d) and m.kernel_size == (3, 3) and m is not other.stem_conv:
            m.spike_input = backend == "snnops"
        elif isinstance(m, SeqConv2d) and m.kernel_size == (1, 1):
            m.subsample_first = backend == "snnops"
    other.backend = backend
    _set_conv_layout(other, backend)
    return other
