"""Weight-factorization training (WFT) layers: one layer, two paths (ANN and SNN).

Joint A-SNN trains an ANN and an SNN whose weights share singular vectors but keep
their own singular values. For a conv, at every kernel position ``(kh, kw)`` the
``Cout x Cin`` matrix is::

    W_path[:, :, kh, kw] = U[kh, kw] @ diag(sigma_path[kh, kw]) @ V[kh, kw]

with ``U[kh, kw]: [Cout, r]``, ``V[kh, kw]: [r, Cin]``, ``r = min(Cout, Cin)`` (the thin
SVD of the initial weight), ``path`` in ``("ann", "snn")``. ``U``, ``V`` and both sigmas
are trained; at initialization both sigmas equal the singular values, so both paths
start from the same weight.

Every layer's ``forward(x, path)`` composes its weight once and applies it to the whole
input. Time-major SNN inputs ``[T, B, ...]`` are flattened to ``[T*B, ...]`` for that one
call, so the composition happens once per forward per path, never per timestep.

``weights`` selects how the two paths relate (the ablation of the paper needs all three):
``"wft"`` (factorized, above), ``"separate"`` (two independent dense weights, both
initialized to the same initial weight), ``"shared"`` (one dense weight for both paths,
as in ANN-to-SNN conversion).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

PATHS = ("ann", "snn")
WEIGHT_MODES = ("wft", "separate", "shared")

__all__ = ["PATHS", "WEIGHT_MODES", "WFTConv2d", "WFTLinear", "DualBatchNorm2d", "check_path",
           "wft_parameter_report"]


def check_path(path, where: str) -> str:
    if path not in PATHS:
        raise ValueError(f"{where}: path must be 'ann' or 'snn', got {path!r}")
    return path


def _check_mode(weights, where: str) -> str:
    if weights not in WEIGHT_MODES:
        raise ValueError(f"{where}: weights must be one of {WEIGHT_MODES}, got {weights!r}")
    return weights


def _check_positive_int(value, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    return value


def _svd_factors(matrices: torch.Tensor):
    """Thin SVD of a batch of matrices ``[..., m, n]`` -> ``U [..., m, r]``, ``S [..., r]``,
    ``Vh [..., r, n]``. Computed in float64 so that the factors recompose the initial
    weight to float32 rounding."""
    u, s, vh = torch.linalg.svd(matrices.double(), full_matrices=False)
    dtype = matrices.dtype
    return u.to(dtype), s.to(dtype), vh.to(dtype)


class _DualWeight(nn.Module):
    """The weight of one WFT layer, stored as ``[*positions, Cout, Cin]`` matrices."""

    def __init__(self, initial: torch.Tensor, weights: str, where: str):
        super().__init__()
        self.mode = _check_mode(weights, where)
        if self.mode == "wft":
            u, s, vh = _svd_factors(initial)
            self.U = nn.Parameter(u.contiguous())
            self.V = nn.Parameter(vh.contiguous())
            self.sigma_ann = nn.Parameter(s.clone())
            self.sigma_snn = nn.Parameter(s.clone())
        elif self.mode == "separate":
            self.weight_ann = nn.Parameter(initial.clone())
            self.weight_snn = nn.Parameter(initial.clone())
        else:
            self.weight = nn.Parameter(initial.clone())

    def matrices(self, path: str) -> torch.Tensor:
        if self.mode == "wft":
            sigma = self.sigma_ann if path == "ann" else self.sigma_snn
            # (U * sigma) @ V: scaling U's columns is diag(sigma) without materializing it.
            return torch.matmul(self.U * sigma.unsqueeze(-2), self.V)
        if self.mode == "separate":
            return self.weight_ann if path == "ann" else self.weight_snn
        return self.weight


def _default_conv_weight(out_channels, in_channels, kh, kw):
    # Kaiming normal, fan_out, ReLU gain: the initialization the authors' ResNets use.
    w = torch.empty(out_channels, in_channels, kh, kw)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    return w


def _pair(value, name, where):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{where}: {name} must be an int or a pair of ints, got {value!r}")
    return tuple(value)


class _DualPathLayer(nn.Module):
    """The bias of a layer with a weight per path: one shared by both paths, or one per
    path with ``weights="separate"`` (``self.weights`` set before ``_init_bias``)."""

    def _init_bias(self, bias: bool, n: int, fan_in: int):
        self.bias_ann = self.bias_snn = self.bias = None
        if not bias:
            return
        bound = 1.0 / math.sqrt(fan_in)  # nn.Conv2d's and nn.Linear's default
        b = torch.empty(n).uniform_(-bound, bound)
        if self.weights == "separate":
            self.bias_ann = nn.Parameter(b.clone())
            self.bias_snn = nn.Parameter(b.clone())
        else:
            self.bias = nn.Parameter(b)

    def path_bias(self, path):
        if self.weights == "separate":
            return self.bias_ann if path == "ann" else self.bias_snn
        return self.bias


class WFTConv2d(_DualPathLayer):
    """2-D convolution with a weight per path (see the module docstring).

    Args:
        in_channels, out_channels, kernel_size, stride, padding: as ``nn.Conv2d``.
        bias: one bias shared by both paths (``weights="separate"``: one per path).
        weights: ``"wft"`` | ``"separate"`` | ``"shared"``.
        weight: the initial weight ``[Cout, Cin, kh, kw]`` (default: Kaiming normal, fan_out).

    ``forward(x, path)`` takes ``x`` as ``[N, Cin, H, W]`` or time-major ``[T, B, Cin, H, W]``
    (run once on ``[T*B, ...]``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 bias: bool = False, weights: str = "wft", weight: Optional[torch.Tensor] = None):
        super().__init__()
        where = "WFTConv2d"
        self.in_channels = _check_positive_int(in_channels, "in_channels", where)
        self.out_channels = _check_positive_int(out_channels, "out_channels", where)
        self.kernel_size = _pair(kernel_size, "kernel_size", where)
        self.stride = _pair(stride, "stride", where)
        self.padding = _pair(padding, "padding", where)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{where}: kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"{self.kernel_size}, {self.stride}, {self.padding}")
        shape = (out_channels, in_channels) + self.kernel_size
        if weight is None:
            weight = _default_conv_weight(*shape)
        elif not isinstance(weight, torch.Tensor) or tuple(weight.shape) != shape or not weight.is_floating_point():
            raise ValueError(f"{where}: weight must be a floating tensor of shape {shape}, got "
                             f"{getattr(weight, 'shape', type(weight).__name__)}")
        # [Cout, Cin, kh, kw] -> one [Cout, Cin] matrix per kernel position.
        self.factors = _DualWeight(weight.detach().permute(2, 3, 0, 1), weights, where)
        self.weights = self.factors.mode
        self._init_bias(bias, out_channels, in_channels * self.kernel_size[0] * self.kernel_size[1])

    def composed_weight(self, path: str) -> torch.Tensor:
        """The dense weight ``[Cout, Cin, kh, kw]`` of ``path``."""
        check_path(path, "WFTConv2d")
        return self.factors.matrices(path).permute(2, 3, 0, 1)

    def forward(self, x: torch.Tensor, path: str) -> torch.Tensor:
        check_path(path, "WFTConv2d")
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5) or x.shape[-3] != self.in_channels:
            raise ValueError(f"WFTConv2d: x must be [N, {self.in_channels}, H, W] or "
                             f"[T, B, {self.in_channels}, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        weight = self.composed_weight(path)
        if x.dim() == 5:
            y = F.conv2d(x.flatten(0, 1), weight, self.path_bias(path), self.stride, self.padding)
            return y.unflatten(0, x.shape[:2])
        return F.conv2d(x, weight, self.path_bias(path), self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None or self.bias_ann is not None}, "
                f"weights={self.weights!r}")


class WFTLinear(_DualPathLayer):
    """Linear layer with a weight per path: ``W_path = U diag(sigma_path) V`` with
    ``U: [out, r]``, ``V: [r, in]`` (``weights="wft"``), or as ``WFTConv2d`` for the others.

    ``forward(x, path)`` takes ``[..., in_features]``. The bias is shared by both paths
    (as in the authors' code) unless ``weights="separate"``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weights: str = "wft",
                 weight: Optional[torch.Tensor] = None):
        super().__init__()
        where = "WFTLinear"
        self.in_features = _check_positive_int(in_features, "in_features", where)
        self.out_features = _check_positive_int(out_features, "out_features", where)
        shape = (out_features, in_features)
        if weight is None:
            weight = torch.empty(shape)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's default
        elif not isinstance(weight, torch.Tensor) or tuple(weight.shape) != shape or not weight.is_floating_point():
            raise ValueError(f"{where}: weight must be a floating tensor of shape {shape}, got "
                             f"{getattr(weight, 'shape', type(weight).__name__)}")
        self.factors = _DualWeight(weight.detach(), weights, where)
        self.weights = self.factors.mode
        self._init_bias(bias, out_features, in_features)

    def composed_weight(self, path: str) -> torch.Tensor:
        """The dense weight ``[out_features, in_features]`` of ``path``."""
        check_path(path, "WFTLinear")
        return self.factors.matrices(path)

    def forward(self, x: torch.Tensor, path: str) -> torch.Tensor:
        check_path(path, "WFTLinear")
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"WFTLinear: x must be [..., {self.in_features}], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return F.linear(x, self.composed_weight(path), self.path_bias(path))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None or self.bias_ann is not None}, weights={self.weights!r}")


class DualBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per path (the ANN's ReLU inputs and the SNN's membrane inputs
    have different statistics). ``forward(x, path)`` takes ``[N, C, H, W]`` or ``[T, B, C, H, W]``
    (normalized over ``T*B``, as tdBN-free SNN code does)."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__()
        _check_positive_int(num_features, "num_features", "DualBatchNorm2d")
        self.num_features = num_features
        self.bn = nn.ModuleDict({p: nn.BatchNorm2d(num_features, **kwargs) for p in PATHS})

    def forward(self, x: torch.Tensor, path: str) -> torch.Tensor:
        check_path(path, "DualBatchNorm2d")
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5) or x.shape[-3] != self.num_features:
            raise ValueError(f"DualBatchNorm2d: x must be [N, {self.num_features}, H, W] or "
                             f"[T, B, {self.num_features}, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() == 5:
            return self.bn[path](x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.bn[path](x)


def _layer_counts(layer):
    """(stored weight elements, paper's count, separate-weights baseline) of one layer's
    weight (biases excluded: they are the same in every scheme)."""
    if isinstance(layer, WFTConv2d):
        positions = layer.kernel_size[0] * layer.kernel_size[1]
        cout, cin = layer.out_channels, layer.in_channels
    else:
        positions, cout, cin = 1, layer.out_features, layer.in_features
    r = min(cin, cout)
    stored = sum(p.numel() for p in layer.factors.parameters())
    # Section 4.3.1: full (square) U and V plus two singular-value vectors per matrix.
    paper = positions * (cin * cin + cout * cout + 2 * r)
    baseline = positions * 2 * cin * cout
    return stored, paper, baseline


def wft_parameter_report(module: nn.Module) -> dict:
    """Weight-parameter accounting of every WFT layer in ``module``.

    Returns a dict with ``stored`` (elements this implementation trains: the thin SVD,
    ``r*(Cin+Cout) + 2r`` per kernel position for ``weights="wft"``), ``paper`` (the
    paper's Section 4.3.1 count ``Cin^2 + Cout^2 + 2r`` per position, i.e. full square
    U and V), ``separate`` (``2*Cin*Cout`` per position: an ANN and an SNN trained with
    their own weights), the ratios to ``separate``, and ``layers`` (per-layer rows).
    For square layers the thin and the paper's counts agree; where ``Cout != Cin`` the
    thin SVD drops the singular vectors that only ever multiply zero singular values.
    """
    rows = []
    for name, m in module.named_modules():
        if isinstance(m, (WFTConv2d, WFTLinear)):
            stored, paper, baseline = _layer_counts(m)
            rows.append({"layer": name, "weights": m.weights, "stored": stored, "paper": paper,
                         "separate": baseline})
    stored = sum(r["stored"] for r in rows)
    paper = sum(r["paper"] for r in rows)
    baseline = sum(r["separate"] for r in rows)
    return {"stored": stored, "paper": paper, "separate": baseline,
            "stored_over_separate": stored / baseline if baseline else float("nan"),
            "paper_over_separate": paper / baseline if baseline else float("nan"),
            "layers": rows}
