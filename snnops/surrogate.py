"""Surrogate gradients for the spike nonlinearity.

The forward pass is always the Heaviside step ``s = (u >= 0)`` with
``u = h - v_threshold``; a surrogate only replaces its derivative in the backward
pass. Each class gives the formula the kernels compute (``grad``) and a smooth
``primitive`` whose exact derivative it is, so the formulas are checked against
autograd. The kernels compute algebraically equal forms (noted where they differ)
with float32 rounding.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "Surrogate", "Rectangular", "Triangle", "ATan", "Sigmoid", "SuperSpike", "Dspike",
    "get", "names",
]


class Surrogate:
    """Base class: ``kind`` is the id the kernels switch on; ``alpha`` its one parameter."""

    kind: int = -1
    name: str = ""
    param_name: str = "alpha"

    def __init__(self, alpha: float):
        alpha = float(alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(
                f"surrogate {self.name}: {self.param_name} must be a positive finite number, got {alpha}")
        self.alpha = alpha

    def grad(self, u: torch.Tensor, v_threshold: float = 1.0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def primitive(self, u: torch.Tensor, v_threshold: float = 1.0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and self.alpha == other.alpha

    def __hash__(self):
        return hash((type(self), self.alpha))

    def __repr__(self):
        return f"{type(self).__name__}({self.param_name}={self.alpha})"


class Rectangular(Surrogate):
    """Rectangular window of width ``width`` and area 1:
    ``grad(u) = 1/width * [|u| < width/2]``.
    ``Rectangular(1.0)`` is the window the TT-SNN, MS-ResNet and Joint A-SNN code uses."""

    kind, name, param_name = 0, "rectangular", "width"

    def __init__(self, width: float = 1.0):
        super().__init__(width)

    @property
    def width(self):
        return self.alpha

    def grad(self, u, v_threshold=1.0):
        return (u.abs() < self.alpha / 2).to(u.dtype) / self.alpha

    def primitive(self, u, v_threshold=1.0):
        return torch.clamp(u / self.alpha + 0.5, 0.0, 1.0)


class Triangle(Surrogate):
    """Triangle of height ``gamma`` and half-width ``v_threshold``:
    ``grad(u) = gamma * max(0, 1 - |u| / v_threshold)``."""

    kind, name, param_name = 1, "triangle", "gamma"

    def __init__(self, gamma: float = 1.0):
        super().__init__(gamma)

    def grad(self, u, v_threshold=1.0):
        return self.alpha * torch.clamp(1.0 - u.abs() / v_threshold, min=0.0)

    def primitive(self, u, v_threshold=1.0):
        r = torch.clamp(u / v_threshold, -1.0, 1.0)
        return self.alpha * v_threshold * (r - r * r.abs() / 2)


class ATan(Surrogate):
    """Arctangent (SpikingJelly's default shape):
    ``grad(u) = (alpha/2) / (1 + (pi/2 * alpha * u)^2)``."""

    kind, name = 2, "atan"

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def grad(self, u, v_threshold=1.0):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * u) ** 2)

    def primitive(self, u, v_threshold=1.0):
        return torch.atan(math.pi / 2 * self.alpha * u) / math.pi + 0.5


class Sigmoid(Surrogate):
    """Sigmoid: ``grad(u) = alpha * sig(alpha u) * (1 - sig(alpha u))``.
    Kernels use the equal form ``alpha * e / (1 + e)^2`` with ``e = exp(-alpha |u|)``."""

    kind, name = 3, "sigmoid"

    def __init__(self, alpha: float = 4.0):
        super().__init__(alpha)

    def grad(self, u, v_threshold=1.0):
        sg = torch.sigmoid(self.alpha * u)
        return self.alpha * sg * (1 - sg)

    def primitive(self, u, v_threshold=1.0):
        return torch.sigmoid(self.alpha * u)


class SuperSpike(Surrogate):
    """Fast sigmoid / SuperSpike (Zenke & Ganguli 2018): ``grad(u) = 1 / (alpha |u| + 1)^2``."""

    kind, name = 4, "fast_sigmoid"

    def __init__(self, alpha: float = 25.0):
        super().__init__(alpha)

    def grad(self, u, v_threshold=1.0):
        return 1.0 / (self.alpha * u.abs() + 1) ** 2

    def primitive(self, u, v_threshold=1.0):
        return u / (1 + self.alpha * u.abs())


class Dspike(Surrogate):
    """Dspike (Li et al. 2021, used by LitE-SNN with b = 3), on the window |u| < 1/2:
    ``grad(u) = b / (2 tanh(b/2)) * (1 - tanh(b u)^2)`` for |u| < 0.5, else 0.
    Kernels use ``1 - tanh(y)^2 = 4e / (1 + e)^2`` with ``e = exp(-2|y|)``."""

    kind, name, param_name = 5, "dspike", "b"

    def __init__(self, b: float = 3.0):
        super().__init__(b)

    @property
    def b(self):
        return self.alpha

    def grad(self, u, v_threshold=1.0):
        k = self.alpha / (2 * math.tanh(self.alpha / 2))
        return (u.abs() < 0.5).to(u.dtype) * k * (1 - torch.tanh(self.alpha * u) ** 2)

    def primitive(self, u, v_threshold=1.0):
        inner = torch.tanh(self.alpha * torch.clamp(u, -0.5, 0.5)) / (2 * math.tanh(self.alpha / 2))
        return inner + 0.5


_BY_NAME = {
    "rectangular": Rectangular, "rect": Rectangular,
    "triangle": Triangle,
    "atan": ATan,
    "sigmoid": Sigmoid,
    "fast_sigmoid": SuperSpike, "superspike": SuperSpike,
    "dspike": Dspike,
}


def names():
    """The accepted surrogate names."""
    return sorted(_BY_NAME)


def get(surrogate) -> Surrogate:
    """A ``Surrogate`` from a name (default parameter), an instance, or a SpikingJelly
    surrogate object of the same family (its ``alpha`` is kept)."""
    if isinstance(surrogate, Surrogate):
        return surrogate
    if isinstance(surrogate, str):
        cls = _BY_NAME.get(surrogate.lower())
        if cls is None:
            raise ValueError(f"surrogate: unknown name {surrogate!r}; expected one of {names()}")
        return cls()
    # SpikingJelly objects: spikingjelly.activation_based.surrogate.{Sigmoid, ATan, ...}
    cls = _BY_NAME.get(type(surrogate).__name__.lower())
    if cls is not None and hasattr(surrogate, "alpha"):
        return cls(float(surrogate.alpha))
    raise TypeError(
        f"surrogate: expected a name in {names()} or a snnops.surrogate.Surrogate, got {surrogate!r}")
