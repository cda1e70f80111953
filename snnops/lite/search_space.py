"""The LitE-SNN search space: SpikeDHS-style cells of spiking nodes over CompConv edges.

Tensors flow time-major, ``[T, B, C, H, W]``; convolutions and batch norms run on the
flattened ``[T*B, ...]`` batch, the LIF neuron (``snnops.lif``: decay 0.2, threshold
0.5, hard reset to 0, Dspike b = 3) over time.

Network (the paper's Table 1 backbone, channel counts and depth as arguments):

- stem: 3x3 conv -> BN -> LIF on the image, repeated over T timesteps (direct
  encoding). The paper writes Conv-Spike-BN; we put BN before the LIF so that every
  tensor after the stem is made of spikes, which the low-bit spike kernels need (ours).
- ``layers`` cells; cells ``layers//3`` and ``2*layers//3`` are reduction cells
  (stride 2, channels doubled) -- cells 3 and 6 of 8 as in the paper.
- each cell reads the outputs of the two previous cells, brings each to ``C`` channels
  with a 1x1 CompConv -> BN -> LIF (stride 2 when that input is at twice the
  resolution; ours, in place of DARTS' factorized reduce), then ``steps`` nodes:
  node ``j`` = LIF(sum over earlier states ``i`` of the mixed edge ``o(i,j)``), each
  edge a ``softmax(alpha)``-weighted sum of the candidate operations, and the cell
  output is the concatenation of its nodes (``steps * C`` channels). Edges leaving
  the two cell inputs have stride 2 in a reduction cell.
- candidate operations (``PRIMITIVES``): ``conv_3x3`` (3x3 CompConv -> BN; the node's
  LIF follows) and ``skip`` (identity; a 2x2 max-pool when strided, which keeps spikes
  binary -- ours).
- global average pool and a linear classifier applied at every timestep (logits
  ``[T, B, classes]``); an optional auxiliary classifier of the same form after cell
  ``2*layers//3``.

``alpha`` is shared by all normal cells and by all reduction cells (DARTS); ``beta``
and the mask scores belong to each CompConv; ``psi`` scores the timestep counts
1..T_max.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import surrogate as _surrogate
from ..ops.lif import lif
from .compconv import CompConv2d
from .cost import check_t_max
from .quant import check_bits, check_keep_ratio

__all__ = ["PRIMITIVES", "Spike", "SeqBN", "ConvBN", "Skip", "Stem", "Preprocess", "Classifier",
           "MixedEdge", "SearchCell", "SearchNetwork", "reduction_layers", "cell_stack", "num_edges"]

PRIMITIVES = ("conv_3x3", "skip")

DECAY = 0.2
V_THRESHOLD = 0.5
DSPIKE_B = 3.0


def reduction_layers(layers: int):
    """Indices of the reduction cells: ``layers // 3`` and ``2 * layers // 3`` (distinct, > 0)."""
    return sorted({i for i in (layers // 3, 2 * layers // 3) if 0 < i < layers})


def cell_stack(layers: int, steps: int, channels: int, aux_index, make_cell):
    """The cells of a network: channels double at the reduction layers, and each cell
    reads the outputs of the two before it (``steps * c`` channels each).
    ``make_cell(index, c_pp, c_p, c, reduction, reduction_prev)`` builds one. Returns
    ``(cells, channels out, channels at the auxiliary head or None)``."""
    reductions = reduction_layers(layers)
    c_pp = c_p = c = channels
    cells = torch.nn.ModuleList()
    reduction_prev, c_aux = False, None
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c *= 2
        cells.append(make_cell(i, c_pp, c_p, c, reduction, reduction_prev))
        reduction_prev = reduction
        c_pp, c_p = c_p, steps * c
        if i == aux_index:
            c_aux = c_p
    return cells, c_p, c_aux


def num_edges(steps: int) -> int:
    return sum(2 + i for i in range(steps))


class Spike(torch.nn.Module):
    """LIF over ``[T, B, ...]`` with LitE-SNN's constants; state is not kept across calls."""

    def __init__(self, decay: float = DECAY, v_threshold: float = V_THRESHOLD, surrogate=None):
        super().__init__()
        self.decay, self.v_threshold = decay, v_threshold
        self.surrogate = _surrogate.Dspike(DSPIKE_B) if surrogate is None else _surrogate.get(surrogate)

    def forward(self, x):
        return lif(x, decay=self.decay, v_threshold=self.v_threshold, v_reset=0.0,
                   surrogate=self.surrogate)[0]


class SeqBN(torch.nn.BatchNorm2d):
    """BatchNorm2d over ``[T, B, C, H, W]`` (statistics over time and batch)."""

    def forward(self, x):
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class ConvBN(torch.nn.Module):
    """CompConv -> BN; input and output ``[T, B, C, H, W]``."""

    def __init__(self, c_in, c_out, kernel_size, stride, bits, keep_ratio):
        super().__init__()
        self.conv = CompConv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2,
                               bits=bits, keep_ratio=keep_ratio)
        self.bn = SeqBN(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class Skip(torch.nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x
        y = F.max_pool2d(x.flatten(0, 1), kernel_size=2, stride=2, ceil_mode=True)
        return y.unflatten(0, x.shape[:2])


def make_op(name: str, channels: int, stride: int, bits, keep_ratio) -> torch.nn.Module:
    if name == "conv_3x3":
        return ConvBN(channels, channels, 3, stride, bits, keep_ratio)
    if name == "skip":
        return Skip(stride)
    raise ValueError(f"unknown operation {name!r}; expected one of {PRIMITIVES}")


class Stem(torch.nn.Module):
    """Float 3x3 conv -> BN on the image once, repeated over T, then LIF."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(c_out)
        self.spike = Spike()

    def forward(self, x, timesteps: int):
        # Direct encoding repeats the image, so the conv and BN of every timestep are equal:
        # computed once (BN batch statistics of T equal copies equal those of one copy).
        y = self.bn(self.conv(x))
        return self.spike(y.unsqueeze(0).expand(timesteps, *y.shape).contiguous())


class Preprocess(torch.nn.Module):
    """1x1 CompConv -> BN -> LIF bringing a cell input to ``C`` channels."""

    def __init__(self, c_in, c_out, stride, bits, keep_ratio):
        super().__init__()
        self.op = ConvBN(c_in, c_out, 1, stride, bits, keep_ratio)
        self.spike = Spike()

    @property
    def conv(self):
        return self.op.conv

    def forward(self, x):
        return self.spike(self.op(x))


class Classifier(torch.nn.Module):
    """Global average pool and a float linear layer at every timestep: ``[T, B, classes]``."""

    def __init__(self, c_in, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(3, 4)))


class MixedEdge(torch.nn.Module):
    """``sum_o softmax(alpha)_o * o(x)`` over ``PRIMITIVES``."""

    def __init__(self, channels, stride, bits, keep_ratio):
        super().__init__()
        self.ops = torch.nn.ModuleList(make_op(p, channels, stride, bits, keep_ratio) for p in PRIMITIVES)

    @property
    def conv(self) -> CompConv2d:
        return self.ops[PRIMITIVES.index("conv_3x3")].conv

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(torch.nn.Module):
    def __init__(self, steps, c_prev_prev, c_prev, channels, reduction, reduction_prev, bits, keep_ratio):
        super().__init__()
        self.steps, self.reduction, self.channels = steps, reduction, channels
        self.pre0 = Preprocess(c_prev_prev, channels, 2 if reduction_prev else 1, bits, keep_ratio)
        self.pre1 = Preprocess(c_prev, channels, 1, bits, keep_ratio)
        self.edges = torch.nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self.edges.append(MixedEdge(channels, 2 if reduction and j < 2 else 1, bits, keep_ratio))
        self.spikes = torch.nn.ModuleList(Spike() for _ in range(steps))

    def forward(self, s0, s1, weights):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for i in range(self.steps):
            current = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(self.spikes[i](current))
        return torch.cat(states[2:], dim=2)

    def cost_terms(self, weights):
        terms = [(self.pre0.conv, 1.0), (self.pre1.conv, 1.0)]
        k = PRIMITIVES.index("conv_3x3")
        terms += [(edge.conv, weights[e, k]) for e, edge in enumerate(self.edges)]
        return terms


class SearchNetwork(torch.nn.Module):
    """The LitE-SNN supernet.

    Args:
        channels: ``C``, the node width of the first cells (doubled at each reduction).
        num_classes, in_channels: data set shape.
        layers: number of cells; steps: nodes per cell.
        bits: candidate bit-widths of every CompConv; keep_ratio: ``k = 1 - p``.
        t_max: largest candidate number of timesteps; the network runs ``t_max`` steps.
        auxiliary: also return auxiliary logits (after cell ``2*layers//3``).
    """

    def __init__(self, channels: int = 8, num_classes: int = 10, in_channels: int = 1, layers: int = 5,
                 steps: int = 3, bits: Sequence[int] = (1, 2, 4), keep_ratio: float = 0.2, t_max: int = 4,
                 auxiliary: bool = False):
        super().__init__()
        self.bits = check_bits(bits)
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self.t_max = check_t_max(t_max)
        for name, v in (("channels", channels), ("layers", layers), ("steps", steps),
                        ("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SearchNetwork: {name} must be an int >= 1, got {v!r}")
        self.channels, self.layers, self.steps = channels, layers, steps
        self.num_classes, self.in_channels = num_classes, in_channels
        self.reductions = reduction_layers(layers)
        self.aux_index = 2 * layers // 3 if auxiliary and layers >= 3 else None
        self.stem = Stem(in_channels, channels)
        self.cells, c_p, c_aux = cell_stack(
            layers, steps, channels, self.aux_index,
            lambda i, c_pp, c_p, c, red, red_prev: SearchCell(steps, c_pp, c_p, c, red, red_prev, self.bits,
                                                              self.keep_ratio))
        self.classifier = Classifier(c_p, num_classes)
        self.aux_classifier = Classifier(c_aux, num_classes) if c_aux is not None else None
        n = num_edges(steps)
        self.alpha_normal = torch.nn.Parameter(1e-3 * torch.randn(n, len(PRIMITIVES)))
        self.alpha_reduce = torch.nn.Parameter(1e-3 * torch.randn(n, len(PRIMITIVES)))
        self.psi = torch.nn.Parameter(torch.zeros(self.t_max))

    # --- parameter groups --------------------------------------------------------------------
    def compconvs(self):
        return [(name, m) for name, m in self.named_modules() if isinstance(m, CompConv2d)]

    def parameter_groups(self) -> dict:
        """``weights`` (conv weights, BN, classifiers), ``beta``, ``scores``, ``psi``, ``alpha``:
        the groups of the joint optimization, disjoint and covering every parameter."""
        beta = [m.beta for _, m in self.compconvs()]
        scores = [m.scores for _, m in self.compconvs()]
        special = {id(p) for p in beta + scores + [self.psi, self.alpha_normal, self.alpha_reduce]}
        weights = [p for p in self.parameters() if id(p) not in special]
        return {"weights": weights, "beta": beta, "scores": scores, "psi": [self.psi],
                "alpha": [self.alpha_normal, self.alpha_reduce]}

    def edge_weights(self, reduction: bool) -> torch.Tensor:
        return torch.softmax(self.alpha_reduce if reduction else self.alpha_normal, dim=-1)

    def cost_terms(self):
        terms = []
        for cell in self.cells:
            terms += cell.cost_terms(self.edge_weights(cell.reduction))
        return terms

    # --- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: Optional[int] = None):
        """``x``: images ``[B, C, H, W]``. Returns logits ``[T, B, classes]`` (and auxiliary
        logits when built with ``auxiliary``), ``T = timesteps or t_max``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SearchNetwork: expected images [B, {self.in_channels}, H, W], got shape "
                             f"{tuple(x.shape)}")
        T = self.t_max if timesteps is None else int(timesteps)
        if T < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        w_normal, w_reduce = self.edge_weights(False), self.edge_weights(True)
        s0 = s1 = self.stem(x, T)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
            if i == self.aux_index:
                aux = self.aux_classifier(s1)
        logits = self.classifier(s1)
        return (logits, aux) if self.aux_classifier is not None else logits
