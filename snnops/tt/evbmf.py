"""Empirical variational Bayesian matrix factorization (EVBMF), for TT rank selection.

Implemented from the global analytic solution of Nakajima, Sugiyama, Babacan and
Tomioka (JMLR 2013, "Global analytic solution of fully-observed variational Bayesian
matrix factorization") and the noise-variance objective of Nakajima et al. ("Condition
for perfect dimensionality recovery by VBMF"). For ``Y`` of shape ``L x M`` (``L <= M``,
else transpose), ``alpha = L/M`` and singular values ``gamma_h``:

* with noise variance ``sigma2``, component h survives iff
  ``gamma_h > sqrt(M * sigma2 * x_bar)``, ``x_bar = (1 + tau_bar)(1 + alpha/tau_bar)``, where
  ``tau_bar`` is the positive zero of ``log(tau+1) + alpha*log(tau/alpha+1) - tau``
  (about ``2.5129*sqrt(alpha)``; solved exactly here). Its estimate is
  ``gamma_h/2 * (1 - (L+M) s/g^2 + sqrt((1 - (L+M) s/g^2)^2 - 4 L M s^2/g^4))``;
* the noise variance (unknown) minimizes, up to constants,
  ``sum_h [x_h + log sigma2] + sum_{x_h > x_bar} [log(tau_h+1) + alpha*log(tau_h/alpha+1) - tau_h]``
  with ``x_h = gamma_h^2 / (M sigma2)`` and ``tau_h = tau(x_h)``, the larger root of
  ``x = (1+tau)(1+alpha/tau)``, over ``[sigma2_lower, sigma2_upper]``:
  ``upper = sum gamma^2 / (L M)`` (everything noise), ``lower = max(gamma_{H+1}^2 / (M x_bar),
  mean_{h>H} gamma_h^2 / M)`` with ``H = ceil(L/(1+alpha)) - 1`` the largest rank EVB can find.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["evbmf", "EVBMFResult", "tau_bar"]


def tau_bar(alpha: float) -> float:
    """The positive zero of ``log(tau+1) + alpha*log(tau/alpha+1) - tau`` (bisection)."""
    def f(t):
        return math.log1p(t) + alpha * math.log1p(t / alpha) - t
    lo, hi = math.sqrt(alpha) * 0.5, math.sqrt(alpha) * 4 + 4
    while f(hi) > 0:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _tau(x: torch.Tensor, alpha: float) -> torch.Tensor:
    b = x - (1 + alpha)
    return 0.5 * (b + torch.sqrt(torch.clamp(b * b - 4 * alpha, min=0)))


def _objective(sigma2: torch.Tensor, s2: torch.Tensor, L: int, M: int, alpha: float, x_bar: float) -> torch.Tensor:
    """The objective at each noise variance in ``sigma2`` (1-D), at once."""
    x = s2[None, :] / (M * sigma2[:, None])
    obj = x.sum(1) + L * torch.log(sigma2)
    t = _tau(x, alpha)
    psi1 = torch.log1p(t) + alpha * torch.log1p(t / alpha) - t
    return obj + torch.where(x > x_bar, psi1, torch.zeros_like(psi1)).sum(1)


@dataclass
class EVBMFResult:
    rank: int                 # number of components EVB keeps
    sigma2: float             # noise variance (estimated unless given)
    threshold: float          # singular values above this survive
    singular_values: torch.Tensor  # EVB estimates of the kept components (descending)
    U: torch.Tensor           # [rows, rank]
    V: torch.Tensor           # [cols, rank]


def evbmf(Y: torch.Tensor, sigma2: float = None, *, grid: int = 400) -> EVBMFResult:
    """EVBMF of a matrix ``Y``: the rank of its signal, the noise variance, and the
    shrunk factorization ``Y ~ U diag(singular_values) V^T``.

    ``sigma2``: the noise variance if known, else estimated (the 1-D objective is
    minimized on a log grid of ``grid`` points and refined by golden-section search).
    """
    if not isinstance(Y, torch.Tensor) or Y.dim() != 2:
        raise ValueError(f"snnops.tt.evbmf: Y must be a 2-D tensor, got "
                         f"{tuple(Y.shape) if isinstance(Y, torch.Tensor) else type(Y).__name__}")
    if min(Y.shape) < 1:
        raise ValueError(f"snnops.tt.evbmf: Y must not be empty, got shape {tuple(Y.shape)}")
    transposed = Y.shape[0] > Y.shape[1]
    Yd = (Y.t() if transposed else Y).detach().to(torch.float64)
    L, M = Yd.shape
    alpha = L / M
    U, s, Vh = torch.linalg.svd(Yd, full_matrices=False)
    s2 = s * s
    tb = tau_bar(alpha)
    x_bar = (1 + tb) * (1 + alpha / tb)
    h_max = max(0, min(math.ceil(L / (1 + alpha)) - 1, L))
    if sigma2 is None:
        total = float(s2.sum())
        if total == 0.0:
            return EVBMFResult(0, 0.0, 0.0, s[:0], U[:, :0], Vh[:0].t())
        upper = total / (L * M)
        tail = s2[h_max:]
        lower = max(float(s2[h_max]) / (M * x_bar) if h_max < L else 0.0,
                    float(tail.mean()) / M if tail.numel() else 0.0)
        lower = min(max(lower, upper * 1e-12), upper)
        sigma2 = _minimize_log(lambda v: _objective(v, s2, L, M, alpha, x_bar), lower, upper, grid)
    sigma2 = float(sigma2)
    if not sigma2 > 0:
        raise ValueError(f"snnops.tt.evbmf: sigma2 must be > 0, got {sigma2}")
    threshold = math.sqrt(M * sigma2 * x_bar)
    rank = min(int((s > threshold).sum()), h_max)
    g = s[:rank]
    a = 1 - (L + M) * sigma2 / (g * g)
    est = g / 2 * (a + torch.sqrt(torch.clamp(a * a - 4 * L * M * sigma2 ** 2 / g ** 4, min=0)))
    Uk, Vk = U[:, :rank], Vh[:rank].t()
    if transposed:
        Uk, Vk = Vk, Uk
    return EVBMFResult(rank, sigma2, threshold, est.to(Y.dtype), Uk.to(Y.dtype), Vk.to(Y.dtype))


def _minimize_log(f, lo: float, hi: float, grid: int) -> float:
    """Minimize f (vectorized over a 1-D float64 tensor) on [lo, hi]: a log-spaced grid,
    then golden-section search in the bracket around the best grid point (the
    objective is continuous but its slope jumps where a component crosses the
    threshold, so no derivatives are used)."""
    if hi <= lo:
        return hi
    pts = torch.linspace(math.log(lo), math.log(hi), grid, dtype=torch.float64)
    vals = f(torch.exp(pts))
    k = int(torch.argmin(vals))
    a, b = float(pts[max(k - 1, 0)]), float(pts[min(k + 1, grid - 1)])

    def f1(p):
        return float(f(torch.tensor([math.exp(p)], dtype=torch.float64))[0])

    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f1(c), f1(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f1(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f1(d)
    best = min([(float(vals[k]), float(pts[k])), (fc, c), (fd, d)])
    return math.exp(best[1])
