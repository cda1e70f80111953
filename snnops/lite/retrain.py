"""Retraining and measuring a decoded LitE-SNN.

Retraining (paper section 4.1): SGD (lr 0.025, momentum 0.9, cosine) on the weights,
loss ``CE(mean_t logits) + 0.4 * CE(mean_t aux_logits)``; the masks are retrained
too (each layer's scores with Adam, as in the search); bit-widths and timesteps are
fixed. LIF: decay 0.2, threshold 0.5, Dspike b = 3.

Model size counts what inference stores: each CompConv's kept weights at its
bit-width, every other parameter (stem conv, batch-norm scale and shift, classifier)
as float32; the auxiliary head (training only) and the positions of the kept weights
are not counted, as in the paper. ``mask_bitmap_mb`` gives the extra cost of storing
each mask as a dense bitmap. 1 MB = 10^6 bytes.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import cost
from .compconv import CompConv2d
from .decode import FixedNetwork, Genotype

__all__ = ["retrain", "evaluate", "model_size", "augment_cifar"]


def augment_cifar(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def model_size(net: torch.nn.Module) -> dict:
    """Stored size of a decoded network (see the module docstring)."""
    compressed_bits = 0
    mask_bits = 0
    counted = set()
    for name, m in net.named_modules():
        if isinstance(m, CompConv2d):
            compressed_bits += m.kept_weights * m.chosen_bits()
            mask_bits += m.num_weights
            counted.update({id(m.weight), id(m.scores), id(m.beta)})
            if m.bias is not None:
                compressed_bits += 32 * m.bias.numel()
                counted.add(id(m.bias))
    aux = getattr(net, "aux_classifier", None)
    if aux is not None:
        counted.update(id(p) for p in aux.parameters())
    float_bits = 32 * sum(p.numel() for p in net.parameters() if id(p) not in counted)
    total_bits = compressed_bits + float_bits
    return {"model_size_mb": total_bits / 8e6, "compressed_bits": compressed_bits, "float_bits": float_bits,
            "total_bits": total_bits, "mask_bitmap_mb": mask_bits / 8e6}


@torch.no_grad()
def evaluate(net: FixedNetwork, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             forward: Optional[Callable] = None) -> dict:
    """Accuracy of ``mean_t logits``, and SynOps / Bit-SynOps per sample summed over the
    timesteps (measured firing rates, CompConv layers). ``forward`` replaces ``net`` for
    the logits (e.g. a deployed copy); the costs are still read from ``net``."""
    was_training = net.training
    net.eval()
    correct, n = 0, 0
    syn, bsyn = 0.0, 0.0
    predictions = []
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = net(xb)
        terms = net.cost_terms()
        b = len(yb)
        syn += float(cost.synops(terms).sum()) * b
        bsyn += float(cost.bit_synops(terms).sum()) * b
        if forward is not None:
            logits = forward(xb)
        pred = logits.mean(0).argmax(-1)
        predictions.append(pred)
        correct += int((pred == yb).sum())
        n += b
    net.train(was_training)
    return {"accuracy": correct / max(n, 1), "synops": syn / max(n, 1), "bit_synops": bsyn / max(n, 1),
            "predictions": torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)}


def retrain(genotype: Genotype, x_train: torch.Tensor, y_train: torch.Tensor, *, num_classes: int,
            channels: int = 16, epochs: int = 30, batch_size: int = 64, lr: float = 0.025,
            score_lr: float = 3e-4, weight_decay: float = 3e-4, aux_weight: float = 0.4,
            augment: Optional[Callable] = None, seed: int = 0, progress: Optional[Callable] = None):
    """Train a fresh :class:`FixedNetwork` for ``genotype``. Returns ``(net, history, seconds)``."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    net = FixedNetwork(genotype, channels, num_classes=num_classes, in_channels=x_train.shape[1],
                       auxiliary=aux_weight > 0)
    groups = net.parameter_groups()
    n = len(y_train)
    per_epoch = (n + batch_size - 1) // batch_size
    sgd = torch.optim.SGD(groups["weights"], lr=lr, momentum=0.9, weight_decay=weight_decay)
    adam = torch.optim.Adam(groups["scores"], lr=score_lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        batches = (order[i:i + batch_size] for i in range(0, n, batch_size))
        bar = progress(batches, per_epoch, f"retrain {epoch + 1}/{epochs}") if progress else batches
        total, correct = 0.0, 0
        for idx in bar:
            xb, yb = x_train[idx], y_train[idx]
            if augment is not None:
                xb = augment(xb, gen)
            out = net(xb)
            logits, aux = out if isinstance(out, tuple) else (out, None)
            loss = F.cross_entropy(logits.mean(0), yb)
            if aux is not None:
                loss = loss + aux_weight * F.cross_entropy(aux.mean(0), yb)
            sgd.zero_grad(set_to_none=True)
            adam.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(groups["weights"], 5.0)
            sgd.step()
            adam.step()
            sched.step()
            total += float(loss.detach())
            correct += int((logits.detach().mean(0).argmax(-1) == yb).sum())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        history.append({"epoch": epoch + 1, "loss": total / per_epoch, "train_accuracy": correct / n})
    return net, history, time.perf_counter() - start
