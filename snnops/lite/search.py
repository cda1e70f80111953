"""LitE-SNN joint optimization: presets, the two-step iteration, and the search loop.

Each iteration (METHODS.md section 3):

1. forward on the batch, search loss, step the weights ``W`` (and BN, stem, classifier)
   with SGD (lr 0.025, momentum 0.9, cosine schedule, weight decay 3e-4, gradient norm
   clipped to 5 as in DARTS);
2. a second forward on the same batch with the updated weights, the same loss, and a
   step on ``beta``, the mask scores, ``psi`` and ``alpha``, each with its own Adam
   (lr 3e-4 in the paper).

During the warm-up epochs the timestep weights are held uniform and ``psi`` is not
stepped; the other architecture parameters are.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .cost import lite_loss, timestep_weights
from .decode import Genotype, decode
from .search_space import SearchNetwork

__all__ = ["Preset", "PRESETS", "get_preset", "JointOptimizer", "SearchResult", "search"]

ARCH_GROUPS = ("beta", "scores", "psi", "alpha")


@dataclass(frozen=True)
class Preset:
    """The paper's scales: cost coefficients and pruning rate ``p`` (keep ratio ``1 - p``)."""

    name: str
    lam1: float
    lam2: float
    prune: float

    @property
    def keep_ratio(self) -> float:
        return round(1.0 - self.prune, 10)


PRESETS = {
    "large": Preset("large", 0.0, 0.0, 0.5),
    "medium": Preset("medium", 5e-10, 5e-14, 0.8),
    "small": Preset("small", 1e-9, 1e-13, 0.9),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"preset: unknown scale {name!r}; expected one of {sorted(PRESETS)}") from None


class JointOptimizer:
    """The two-step LitE-SNN iteration on a :class:`SearchNetwork`.

    ``optimizers`` holds ``weights`` (SGD) and one Adam per architecture group
    (``beta``, ``scores``, ``psi``, ``alpha``)."""

    def __init__(self, net: SearchNetwork, *, lam1: float, lam2: float, lr: float = 0.025,
                 momentum: float = 0.9, weight_decay: float = 3e-4, arch_lr: float = 3e-4,
                 total_steps: int = 1, grad_clip: float = 5.0):
        for name, v in (("lr", lr), ("arch_lr", arch_lr)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if lam1 < 0 or lam2 < 0:
            raise ValueError(f"lam1 and lam2 must be >= 0, got {lam1}, {lam2}")
        self.net, self.lam1, self.lam2, self.grad_clip = net, float(lam1), float(lam2), grad_clip
        self.groups = net.parameter_groups()
        self.optimizers = {"weights": torch.optim.SGD(self.groups["weights"], lr=lr, momentum=momentum,
                                                      weight_decay=weight_decay)}
        for name in ARCH_GROUPS:
            self.optimizers[name] = torch.optim.Adam(self.groups[name], lr=arch_lr, betas=(0.5, 0.999))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizers["weights"],
                                                                    T_max=max(1, total_steps))

    def loss(self, x, y, warmup: bool):
        out = self.net(x)
        logits = out[0] if isinstance(out, tuple) else out
        weights = timestep_weights(self.net.psi, uniform=warmup)
        return lite_loss(logits, y, weights, self.net.cost_terms(), self.lam1, self.lam2)

    def weight_step(self, x, y, warmup: bool = False) -> dict:
        self.net.zero_grad(set_to_none=True)
        loss, parts = self.loss(x, y, warmup)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.groups["weights"], self.grad_clip)
        self.optimizers["weights"].step()
        self.net.zero_grad(set_to_none=True)
        parts["loss"] = float(loss.detach())
        return parts

    def arch_step(self, x, y, warmup: bool = False) -> dict:
        self.net.zero_grad(set_to_none=True)
        loss, parts = self.loss(x, y, warmup)
        loss.backward()
        for name in ARCH_GROUPS:
            if name == "psi" and warmup:
                continue
            self.optimizers[name].step()
        self.net.zero_grad(set_to_none=True)
        parts["loss"] = float(loss.detach())
        return parts

    def step(self, x, y, warmup: bool = False) -> dict:
        """One joint iteration; returns the loss parts of the weight step and
        ``arch_loss`` of the second forward."""
        parts = self.weight_step(x, y, warmup)
        parts["arch_loss"] = self.arch_step(x, y, warmup)["loss"]
        self.scheduler.step()
        return parts


@dataclass
class SearchResult:
    net: SearchNetwork
    genotype: Genotype
    seconds: float
    history: list = field(default_factory=list)


def search(x_train: torch.Tensor, y_train: torch.Tensor, *, num_classes: int, preset: str = "small",
           channels: int = 8, layers: int = 5, steps: int = 3, bits=(1, 2, 4), t_max: int = 4,
           epochs: int = 10, warmup_epochs: int = 2, batch_size: int = 64, lr: float = 0.025,
           arch_lr: float = 3e-4, lam1: Optional[float] = None, lam2: Optional[float] = None,
           keep_ratio: Optional[float] = None, seed: int = 0,
           progress: Optional[Callable] = None) -> SearchResult:
    """Build the supernet, run ``epochs`` epochs of joint optimization, decode.

    ``lam1``, ``lam2``, ``keep_ratio`` default to the preset's. ``progress(iterable,
    total)`` wraps the batch loop (e.g. a tqdm factory); it may return an object with
    ``set_postfix``."""
    p = get_preset(preset)
    lam1 = p.lam1 if lam1 is None else lam1
    lam2 = p.lam2 if lam2 is None else lam2
    keep_ratio = p.keep_ratio if keep_ratio is None else keep_ratio
    if epochs < 1 or batch_size < 1 or warmup_epochs < 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and warmup_epochs >= 0, got {epochs}, "
                         f"{batch_size}, {warmup_epochs}")
    torch.manual_seed(seed)
    net = SearchNetwork(channels=channels, num_classes=num_classes, in_channels=x_train.shape[1],
                        layers=layers, steps=steps, bits=bits, keep_ratio=keep_ratio, t_max=t_max)
    n = len(y_train)
    per_epoch = (n + batch_size - 1) // batch_size
    opt = JointOptimizer(net, lam1=lam1, lam2=lam2, lr=lr, arch_lr=arch_lr, total_steps=epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        warmup = epoch < warmup_epochs
        order = torch.randperm(n, generator=gen)
        batches = (order[i:i + batch_size] for i in range(0, n, batch_size))
        bar = progress(batches, per_epoch, f"search {epoch + 1}/{epochs}") if progress else batches
        totals = {}
        for idx in bar:
            parts = opt.step(x_train[idx], y_train[idx], warmup)
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{parts['loss']:.3f}", ce=f"{parts['ce']:.3f}")
        row = {k: v / per_epoch for k, v in totals.items()}
        row["epoch"] = epoch + 1
        row["psi_weights"] = torch.softmax(net.psi.detach(), 0).tolist()
        history.append(row)
    seconds = time.perf_counter() - start
    genotype = decode(net)
    genotype.extra.update({"preset": p.name, "lam1": lam1, "lam2": lam2, "search_channels": channels})
    return SearchResult(net=net, genotype=genotype, seconds=seconds, history=history)
