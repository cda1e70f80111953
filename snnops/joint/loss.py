"""Joint A-SNN's loss: the ANN teaches the SNN at every branch.

Two forms (METHODS.md section 4), every term switchable for the ablation:

``"paper"`` (default, Eq. 7-10 of the paper)::

    L = L_CE + lambda1 * L_KLD + lambda2 * L_Norm
    L_CE   = sum_i CE(ann_i, y) + sum_i CE(snn_i, y)
    L_KLD  = sum_i KL(softmax(ann_i).detach() || softmax(snn_i))     (mean over the batch)
    L_Norm = sum_i || ann_feat_i.detach() - snn_feat_i ||_F^2 / (B * C)   (mean squared error)

with lambda1 = 1, lambda2 = 0.3. The paper writes the squared Frobenius norm; we divide
it by the number of elements, as the authors' joint code does (``nn.MSELoss``, mean
reduction, with lambda2 = 0.25). A plain sum grows with the batch and the feature width
(512 per sample at width 64) and swamped the cross-entropy. On digits it slowed the
SNN: 18.7% test accuracy after 3 small epochs, against 27.6% with the mean (measured;
see docs/joint.md).

``"authors"`` (the authors' public code, self-distillation in the style of "Be Your Own
Teacher")::

    L = (1 - alpha) * L_CE + alpha * tau^2 * L_KD + beta * L_Feat
    L_KD   = sum_i softCE(snn_i / tau, softmax(ann_i / tau).detach())
           + sum_{i < 4} softCE(ann_i / tau, softmax(ann_4 / tau).detach())
    L_Feat = sum_i F(snn_feat_i, ann_feat_i.detach()) + sum_{i < 4} F(ann_feat_i, ann_feat_4.detach())
    softCE(z, q) = -mean_b sum_c q_c log softmax(z)_c
    F(f, t) = sum over all elements of (f - t)^2 where f > 0 or t > 0

with alpha = 0.1, tau = 3, beta = 1e-6. The switches map ``kld`` to L_KD and ``norm`` to
L_Feat.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .networks import DualOutput

LOSS_FORMS = ("paper", "authors")

__all__ = ["LOSS_FORMS", "JointLoss", "kl_to_teacher", "feature_hint", "soft_cross_entropy", "masked_feature_loss"]


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher).detach() || softmax(student)), averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits, dim=-1), F.log_softmax(teacher_logits.detach(), dim=-1),
                    reduction="batchmean", log_target=True)


def feature_hint(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance to the detached teacher features, over the number of elements."""
    return F.mse_loss(student_features, teacher_features.detach(), reduction="mean")


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """-mean_b sum_c q_c log softmax(z)_c with ``q`` taken as a constant."""
    return -(teacher_probs.detach() * F.log_softmax(student_logits, dim=-1)).sum(dim=-1).mean()


def masked_feature_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences where either feature is positive (the authors' form)."""
    target = target.detach()
    mask = ((features > 0) | (target > 0)).to(features.dtype)
    return ((features - target).pow(2) * mask).sum()


def _check_nonneg(name, value):
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"JointLoss: {name} must be a finite number >= 0, got {value}")
    return value


class JointLoss:
    """``loss(ann, snn, target) -> (total, parts)``.

    Args:
        form: ``"paper"`` | ``"authors"`` (see the module docstring).
        ce, kld, norm: switch the cross-entropy, distillation and feature terms.
        ann_ce: include the ANN's branches in the cross-entropy (off when the ANN is a
            frozen, already trained teacher).
        lambda1, lambda2: weights of L_KLD and L_Norm (paper form).
        temperature, alpha, beta: tau, alpha and the feature weight (authors' form).

    ``ann`` and ``snn`` are :class:`~snnops.joint.networks.DualOutput` with the same
    number of branches; ``ann`` may be None when only the CE term is on (SNN alone).
    ``parts`` holds the unweighted terms (``ce``, ``kld``, ``norm``) that are on.
    """

    def __init__(self, form: str = "paper", *, ce: bool = True, kld: bool = True, norm: bool = True,
                 ann_ce: bool = True, lambda1: float = 1.0, lambda2: float = 0.3, temperature: float = 3.0,
                 alpha: float = 0.1, beta: float = 1e-6):
        if form not in LOSS_FORMS:
            raise ValueError(f"JointLoss: form must be one of {LOSS_FORMS}, got {form!r}")
        self.form = form
        self.ce, self.kld, self.norm, self.ann_ce = bool(ce), bool(kld), bool(norm), bool(ann_ce)
        if not (self.ce or self.kld or self.norm):
            raise ValueError("JointLoss: every term is switched off (ce, kld, norm); at least one must be on")
        self.lambda1 = _check_nonneg("lambda1", lambda1)
        self.lambda2 = _check_nonneg("lambda2", lambda2)
        self.beta = _check_nonneg("beta", beta)
        self.temperature = float(temperature)
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"JointLoss: temperature must be a finite number > 0, got {temperature}")
        self.alpha = float(alpha)
        if not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"JointLoss: alpha must be in [0, 1], got {alpha}")

    @property
    def needs_ann(self) -> bool:
        return self.kld or self.norm or self.ann_ce

    def __repr__(self):
        on = [n for n in ("ce", "kld", "norm") if getattr(self, n)]
        extra = (f"lambda1={self.lambda1}, lambda2={self.lambda2}" if self.form == "paper" else
                 f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}")
        return f"JointLoss({self.form!r}, terms={'+'.join(on)}, {extra})"

    def _check(self, ann, snn, target):
        if not isinstance(snn, DualOutput):
            raise TypeError(f"JointLoss: snn must be a DualOutput, got {type(snn).__name__}")
        if ann is None:
            if self.needs_ann:
                raise ValueError("JointLoss: ann outputs are None but a term that needs them is on "
                                 f"(kld={self.kld}, norm={self.norm}, ann_ce={self.ann_ce})")
        else:
            if not isinstance(ann, DualOutput):
                raise TypeError(f"JointLoss: ann must be a DualOutput or None, got {type(ann).__name__}")
            if len(ann.logits) != len(snn.logits):
                raise ValueError(f"JointLoss: ann has {len(ann.logits)} branches but snn has {len(snn.logits)}")
        if not isinstance(target, torch.Tensor) or target.dim() != 1 or target.shape[0] != snn.output.shape[0]:
            raise ValueError(f"JointLoss: target must be [B] class indices with B = {snn.output.shape[0]}, got "
                             f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")

    def __call__(self, ann: Optional[DualOutput], snn: DualOutput,
                 target: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        self._check(ann, snn, target)
        parts: Dict[str, torch.Tensor] = {}
        if self.ce:
            terms = [F.cross_entropy(z, target) for z in snn.logits]
            if self.ann_ce:
                terms += [F.cross_entropy(z, target) for z in ann.logits]
            parts["ce"] = torch.stack(terms).sum()
        if self.form == "paper":
            if self.kld:
                parts["kld"] = torch.stack([kl_to_teacher(s, a) for s, a in zip(snn.logits, ann.logits)]).sum()
            if self.norm:
                parts["norm"] = torch.stack([feature_hint(s, a) for s, a in zip(snn.features, ann.features)]).sum()
            weights = {"ce": 1.0, "kld": self.lambda1, "norm": self.lambda2}
        else:
            tau = self.temperature
            if self.kld:
                terms = [soft_cross_entropy(s / tau, F.softmax(a / tau, dim=-1))
                         for s, a in zip(snn.logits, ann.logits)]
                final = F.softmax(ann.logits[-1] / tau, dim=-1)
                terms += [soft_cross_entropy(a / tau, final) for a in ann.logits[:-1]]
                parts["kld"] = torch.stack(terms).sum()
            if self.norm:
                terms = [masked_feature_loss(s, a) for s, a in zip(snn.features, ann.features)]
                terms += [masked_feature_loss(a, ann.features[-1]) for a in ann.features[:-1]]
                parts["norm"] = torch.stack(terms).sum()
            weights = {"ce": 1.0 - self.alpha, "kld": self.alpha * tau * tau, "norm": self.beta}
        total = sum(weights[k] * v for k, v in parts.items())
        return total, parts
