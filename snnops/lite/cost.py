"""LitE-SNN costs and the search loss (METHODS.md section 3).

A network exposes its compressive layers as *cost terms*: pairs ``(conv, weight)``
where ``conv`` is a :class:`~snnops.lite.compconv.CompConv2d` and ``weight`` the
probability that the layer is used (``softmax(alpha)`` of its operation on a searched
edge, 1 elsewhere). Weighting by it makes the expected cost differentiable in ``alpha``
(ours; the paper states only that the costs guide the architecture too).

    ModelSize     = sum_l weight_l * kept_l * b_bar_l                         (bits)
    SynOps[t]     = sum_l weight_l * kept_l * H_l * W_l * rate_l[t]           (per sample)
    BitSynOps[t]  = sum_l weight_l * b_bar_l * kept_l * H_l * W_l * rate_l[t]
    L = sum_t w_t CE(mean_{tau<=t} logits[tau], y) / sum_t w_t
        + lam1 * ModelSize + lam2 * sum_t w_t * sum_{tau<=t} BitSynOps[tau]

``kept_l = round(k * Cin*Cout*kh*kw)`` (``(1 - p) * kh*kw*Cin*Cout`` rounded to the
weights the mask really keeps); ``rate_l[t]`` is the measured firing rate of the
layer's input at timestep ``t``, a constant, so the cost gradients reach ``beta``,
``alpha`` and ``psi`` only.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "timestep_weights", "cumulative_logits", "timestep_ce", "model_size_bits", "synops",
    "bit_synops", "compression_cost", "lite_loss",
]


def check_t_max(t_max) -> int:
    if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1:
        raise ValueError(f"t_max: the largest candidate number of timesteps must be an int >= 1, got {t_max!r}")
    return t_max


def timestep_weights(psi: torch.Tensor, uniform: bool = False) -> torch.Tensor:
    """``softmax(psi)`` over the candidate counts 1..T_max, or uniform weights (warm-up)."""
    if psi.dim() != 1 or psi.numel() < 1:
        raise ValueError(f"psi: expected a 1-D tensor with one entry per candidate timestep count, got "
                         f"shape {tuple(psi.shape)}")
    if uniform:
        return torch.full_like(psi, 1.0 / psi.numel()).detach()
    return torch.softmax(psi, 0)


def cumulative_logits(logits_seq: torch.Tensor) -> torch.Tensor:
    """``[T, B, K]`` -> ``[T, B, K]``: entry ``t`` is the mean of the first ``t+1`` outputs."""
    steps = torch.arange(1, logits_seq.shape[0] + 1, device=logits_seq.device, dtype=logits_seq.dtype)
    return logits_seq.cumsum(0) / steps.view(-1, *([1] * (logits_seq.dim() - 1)))


def timestep_ce(logits_seq: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_t w_t CE(mean_{tau<=t} logits[tau], y) / sum_t w_t`` over ``t = 1..T``."""
    if logits_seq.dim() != 3:
        raise ValueError(f"logits_seq: expected [T, B, classes], got shape {tuple(logits_seq.shape)}")
    if weights.shape != (logits_seq.shape[0],):
        raise ValueError(f"weights: expected one weight per timestep ({logits_seq.shape[0]}), got shape "
                         f"{tuple(weights.shape)}")
    cum = cumulative_logits(logits_seq)
    T, B, K = cum.shape
    ce = F.cross_entropy(cum.reshape(T * B, K), target.repeat(T), reduction="none").view(T, B).mean(1)
    return (weights * ce).sum() / weights.sum()


def _prob(weight, like: torch.Tensor):
    return weight if torch.is_tensor(weight) else like.new_tensor(float(weight))


def model_size_bits(terms: Iterable[Tuple[object, object]]) -> torch.Tensor:
    """``sum weight * kept * b_bar`` in bits (0-dim tensor, differentiable in beta/alpha)."""
    total = None
    for conv, weight in terms:
        size = conv.model_size_bits()
        size = _prob(weight, size) * size
        total = size if total is None else total + size
    return total if total is not None else torch.zeros(())


def _per_step(terms, fn):
    total = None
    for conv, weight in terms:
        cost = fn(conv)
        cost = _prob(weight, cost) * cost
        if total is not None and total.shape != cost.shape:
            raise ValueError(f"cost terms disagree on the number of timesteps: {tuple(total.shape)} vs "
                             f"{tuple(cost.shape)}")
        total = cost if total is None else total + cost
    return total


def synops(terms) -> torch.Tensor:
    """SynOps per sample and timestep, ``[T]``, of the last forward pass."""
    out = _per_step(terms, lambda c: c.synops())
    return out if out is not None else torch.zeros(1)


def bit_synops(terms) -> torch.Tensor:
    """Bit-SynOps per sample and timestep, ``[T]``, of the last forward pass."""
    out = _per_step(terms, lambda c: c.bit_synops())
    return out if out is not None else torch.zeros(1)


def compression_cost(terms, weights: torch.Tensor, lam1: float, lam2: float):
    """``lam1 * ModelSize + lam2 * sum_t w_t * cumsum(BitSynOps)[t]`` and its two parts."""
    size = model_size_bits(terms)
    per_step = bit_synops(terms)
    if per_step.shape != weights.shape:
        raise ValueError(f"the network ran {per_step.shape[0]} timesteps but there are {weights.shape[0]} "
                         f"timestep weights")
    comp = (weights * per_step.cumsum(0)).sum()
    return lam1 * size + lam2 * comp, size, comp


def lite_loss(logits_seq, target, weights, terms, lam1: float, lam2: float):
    """The LitE-SNN search loss. Returns ``(loss, parts)`` with ``parts`` holding the
    detached ``ce``, ``model_size_bits`` and ``bit_synops`` (psi-weighted cumulative)."""
    ce = timestep_ce(logits_seq, target, weights)
    cost, size, comp = compression_cost(terms, weights, lam1, lam2)
    parts = {"ce": float(ce.detach()), "model_size_bits": float(size.detach()),
             "bit_synops": float(comp.detach())}
    return ce + cost, parts
