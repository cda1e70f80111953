"""Decoding a searched LitE-SNN supernet into a fixed network, and that network.

Rules (METHODS.md section 3): per node keep the two strongest incoming edges and on
each the strongest operation, by ``softmax(alpha)`` (an edge's strength is its
largest operation weight); each kept CompConv keeps the bit-width ``argmax(beta)`` of
the supernet layer it comes from; timesteps = ``argmax(psi) + 1``. Ties go to the
lower index, so decoding is a pure function of the parameters.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .compconv import CompConv2d
from .cost import check_t_max
from .quant import check_bits, check_keep_ratio
from .search_space import PRIMITIVES, Classifier, Preprocess, SearchNetwork, Spike, Stem, cell_stack, make_op

__all__ = ["Genotype", "decode", "decode_cell", "FixedCell", "FixedNetwork"]

# One node: two (operation, input state) pairs; states 0 and 1 are the cell inputs.
Node = List[Tuple[str, int]]


@dataclass
class Genotype:
    """A decoded architecture: cell structures, per-layer bit-widths and timesteps.

    ``bits`` maps every CompConv of the fixed network (by the supernet layer it comes
    from: ``cells.{l}.pre0``, ``cells.{l}.pre1``, ``cells.{l}.edges.{e}``) to its bit-width.
    """

    normal: List[Node]
    reduce: List[Node]
    bits: Dict[str, int]
    timesteps: int
    layers: int
    steps: int
    keep_ratio: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Genotype":
        d = dict(d)
        d["normal"] = [[(str(op), int(i)) for op, i in node] for node in d["normal"]]
        d["reduce"] = [[(str(op), int(i)) for op, i in node] for node in d["reduce"]]
        d["bits"] = {str(k): int(v) for k, v in d["bits"].items()}
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def bit_histogram(self) -> Dict[int, int]:
        hist: Dict[int, int] = {}
        for b in self.bits.values():
            hist[b] = hist.get(b, 0) + 1
        return dict(sorted(hist.items()))


def edge_index(node: int, state: int) -> int:
    """Index of the edge from ``state`` into ``node`` in a cell's edge list."""
    return sum(2 + i for i in range(node)) + state


def decode_cell(alpha: torch.Tensor, steps: int) -> List[Node]:
    """Two strongest incoming edges per node (strength = largest op weight), each with
    its strongest op; ties to the lower index. Edges of a node are listed by input."""
    weights = torch.softmax(alpha.detach().double(), dim=-1)
    nodes = []
    for i in range(steps):
        rows = [weights[edge_index(i, j)] for j in range(2 + i)]
        strength = [float(r.max()) for r in rows]
        # Stable sort on -strength keeps the lower input index first among equals.
        keep = sorted(sorted(range(2 + i), key=lambda j: -strength[j])[:2])
        nodes.append([(PRIMITIVES[int(torch.argmax(rows[j]))], j) for j in keep])
    return nodes


def decode(net: SearchNetwork) -> Genotype:
    """The fixed architecture a searched supernet describes (deterministic)."""
    normal = decode_cell(net.alpha_normal, net.steps)
    reduce = decode_cell(net.alpha_reduce, net.steps)
    bits: Dict[str, int] = {}
    for l, cell in enumerate(net.cells):
        bits[f"cells.{l}.pre0"] = cell.pre0.conv.chosen_bits()
        bits[f"cells.{l}.pre1"] = cell.pre1.conv.chosen_bits()
        for i, node in enumerate(reduce if cell.reduction else normal):
            for op, j in node:
                if op == "conv_3x3":
                    e = edge_index(i, j)
                    bits[f"cells.{l}.edges.{e}"] = cell.edges[e].conv.chosen_bits()
    timesteps = int(torch.argmax(net.psi.detach())) + 1
    return Genotype(normal=normal, reduce=reduce, bits=bits, timesteps=timesteps, layers=net.layers,
                    steps=net.steps, keep_ratio=net.keep_ratio,
                    extra={"psi_weights": torch.softmax(net.psi.detach(), 0).tolist()})


class FixedCell(torch.nn.Module):
    """A decoded cell: each node = LIF(sum of its two chosen operations)."""

    def __init__(self, nodes: List[Node], steps, c_prev_prev, c_prev, channels, reduction,
                 reduction_prev, bits: Dict[str, int], prefix: str, keep_ratio: float):
        super().__init__()
        self.steps, self.reduction, self.nodes = steps, reduction, nodes
        self.pre0 = Preprocess(c_prev_prev, channels, 2 if reduction_prev else 1,
                               (bits[f"{prefix}.pre0"],), keep_ratio)
        self.pre1 = Preprocess(c_prev, channels, 1, (bits[f"{prefix}.pre1"],), keep_ratio)
        self.ops = torch.nn.ModuleDict()
        for i, node in enumerate(nodes):
            for op, j in node:
                e = edge_index(i, j)
                stride = 2 if reduction and j < 2 else 1
                b = (bits[f"{prefix}.edges.{e}"],) if op == "conv_3x3" else (1,)
                self.ops[str(e)] = make_op(op, channels, stride, b, keep_ratio)
        self.spikes = torch.nn.ModuleList(Spike() for _ in range(steps))

    def forward(self, s0, s1):
        states = [self.pre0(s0), self.pre1(s1)]
        for i, node in enumerate(self.nodes):
            current = sum(self.ops[str(edge_index(i, j))](states[j]) for _, j in node)
            states.append(self.spikes[i](current))
        return torch.cat(states[2:], dim=2)


class FixedNetwork(torch.nn.Module):
    """The decoded network for retraining and evaluation (same backbone as the supernet,
    ``channels`` may differ). ``forward(x)`` runs ``genotype.timesteps`` steps and returns
    logits ``[T, B, classes]`` (and auxiliary logits when ``auxiliary``)."""

    def __init__(self, genotype: Genotype, channels: int, num_classes: int = 10, in_channels: int = 1,
                 auxiliary: bool = True):
        super().__init__()
        self.genotype = genotype
        self.timesteps = check_t_max(genotype.timesteps)
        keep_ratio = check_keep_ratio(genotype.keep_ratio)
        check_bits(tuple(sorted(set(genotype.bits.values()))) or (1,))
        layers, steps = genotype.layers, genotype.steps
        self.in_channels, self.num_classes = in_channels, num_classes
        self.aux_index = 2 * layers // 3 if auxiliary and layers >= 3 else None
        self.stem = Stem(in_channels, channels)
        self.cells, c_p, c_aux = cell_stack(
            layers, steps, channels, self.aux_index,
            lambda i, c_pp, c_p, c, red, red_prev: FixedCell(genotype.reduce if red else genotype.normal, steps, c_pp,
                                                             c_p, c, red, red_prev, genotype.bits, f"cells.{i}",
                                                             keep_ratio))
        self.classifier = Classifier(c_p, num_classes)
        self.aux_classifier = Classifier(c_aux, num_classes) if c_aux is not None else None
        for _, m in self.compconvs():
            m.beta.requires_grad_(False)  # one bit-width left: softmax(beta) = 1

    def compconvs(self):
        return [(name, m) for name, m in self.named_modules() if isinstance(m, CompConv2d)]

    def cost_terms(self):
        return [(m, 1.0) for _, m in self.compconvs()]

    def parameter_groups(self) -> dict:
        """``weights`` (everything trained by SGD) and ``scores`` (mask scores); the
        single-entry ``beta`` of each layer is frozen (one bit-width left)."""
        scores = [m.scores for _, m in self.compconvs()]
        frozen = {id(m.beta) for _, m in self.compconvs()}
        special = frozen | {id(p) for p in scores}
        return {"weights": [p for p in self.parameters() if id(p) not in special], "scores": scores}

    def forward(self, x: torch.Tensor, timesteps: Optional[int] = None, with_aux: Optional[bool] = None):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"FixedNetwork: expected images [B, {self.in_channels}, H, W], got shape "
                             f"{tuple(x.shape)}")
        T = self.timesteps if timesteps is None else int(timesteps)
        s0 = s1 = self.stem(x, T)
        aux = None
        want_aux = self.aux_classifier is not None and (self.training if with_aux is None else with_aux)
        for l, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if want_aux and l == self.aux_index:
                aux = self.aux_classifier(s1)
        logits = self.classifier(s1)
        return (logits, aux) if want_aux else logits
