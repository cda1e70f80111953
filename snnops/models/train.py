"""``snnops train --method tt``: train an MS-ResNet in dense, STT, PTT or HTT form.

The papers' recipe: SGD (momentum 0.9), cosine learning rate (per iteration), weight
decay; cross-entropy on the mean of the per-step outputs. One checkpoint per epoch
(``--out DIR``; ``--resume`` continues from it). At the end a TT model is merged into
its dense form (:func:`snnops.models.merge`) and the merged model's test accuracy is
reported beside the TT model's.

Data parallel: started by ``torchrun --nproc_per_node N -m snnops train ...`` every
process takes its share of each global batch, BN statistics are reduced over all
processes, and the gradients are summed with one ``all_reduce`` per step, so N
processes compute what one process computes on the same global batch (gloo on CPU,
nccl on GPU).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from .. import data as datasets
from .blocks import BACKENDS, CONV_KINDS, TemporalBatchNorm
from .ms_resnet import MODELS, MSResNet, build, merge

DEFAULTS = dict(epochs=8, batch_size=32, lr=0.1, timesteps=4)
CHECKPOINT = "checkpoint.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tt (MS-ResNet dense / STT / PTT / HTT)")
    g.add_argument("--model", default="ms_resnet18", choices=sorted(MODELS), help="network (default ms_resnet18)")
    g.add_argument("--conv", default="dense", choices=CONV_KINDS, help="3x3 convs of the blocks (default dense)")
    g.add_argument("--ranks", default=None,
                   help="TT ranks: one int, 4 (per stage) or one per layer, comma separated, or 'vbmf' "
                        "(with --dense-from); default: the library's defaults (see snnops.models.DEFAULT_RANKS)")
    g.add_argument("--dense-from", default=None, metavar="CHECKPOINT",
                   help="a trained dense model's checkpoint to estimate --ranks vbmf from")
    g.add_argument("--schedule", default="first",
                   help="HTT full/half order: first (paper), last, alternate, or letters like FFHH")
    g.add_argument("--backend", default="snnops", choices=BACKENDS,
                   help="snnops (fused kernels, default) or reference (plain PyTorch ops)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay (default 1e-4, as the paper)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--image-size", type=int, default=8,
                   help="digits image size (default 8, the native size; 16 is 4x the work)")
    g.add_argument("--train-subset", type=int, default=None, help="use only the first N training images")
    g.add_argument("--test-subset", type=int, default=None, help="use only the first N test images")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: the one in --out)")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")


# ----------------------------------------------------------------------------- helpers

def _cli_error(msg):
    from ..cli import CLIError
    return CLIError(msg)


class _Dist:
    """The process group when started by torchrun (WORLD_SIZE > 1), else one process."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.dist = dist
        self.started_here = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return t

    def broadcast_params(self, model):
        if self.world > 1:
            for t in list(model.parameters()) + list(model.buffers()):
                self.dist.broadcast(t.data, src=0)

    def reduce_grads(self, model):
        """Sum the gradients of all processes (each scaled its loss by 1/global batch)."""
        if self.world == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self):
        if self.world > 1:
            self.dist.barrier()

    def close(self):
        if self.started_here:
            self.dist.destroy_process_group()


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise _cli_error(f"--device must be cpu, cuda or auto, got {name!r}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise _cli_error("--device cuda: no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def parse_ranks(text):
    if text is None:
        return None
    text = str(text).strip()
    if text == "vbmf":
        return "vbmf"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _cli_error(f"--ranks must be an int, a comma-separated list of ints or 'vbmf', got {text!r}") from None
    if not values:
        raise _cli_error(f"--ranks is empty: {text!r}")
    return values[0] if len(values) == 1 else values


def _load_data(args):
    try:
        kwargs = {"size": args.image_size} if args.dataset == "digits" else {}
        if args.dataset == "digits" and args.image_size < 8:
            raise _cli_error(f"--image-size {args.image_size} is too small for MS-ResNet (three stride-2 "
                             f"stages need at least 8)")
        split = datasets.load(args.dataset, args.data_dir, **kwargs)
    except datasets.DatasetError as exc:
        raise _cli_error(str(exc)) from None
    for name in ("train_subset", "test_subset"):
        n = getattr(args, name)
        if n is not None and n < 1:
            raise _cli_error(f"--{name.replace('_', '-')} must be >= 1, got {n}")
    if args.train_subset:
        split.x_train, split.y_train = split.x_train[:args.train_subset], split.y_train[:args.train_subset]
    if args.test_subset:
        split.x_test, split.y_test = split.x_test[:args.test_subset], split.y_test[:args.test_subset]
    return split


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR: random crop (4-pixel zero padding) and horizontal flip, drawn per image."""
    n, _, h, w = x.shape
    flips = torch.rand(n, generator=generator) < 0.5
    shifts = torch.randint(0, 9, (n, 2), generator=generator)
    padded = F.pad(x, (4, 4, 4, 4))
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        img = padded[i, :, dy:dy + h, dx:dx + w]
        out[i] = img.flip(-1) if flips[i] else img
    return out


@torch.no_grad()
def evaluate(model, x, y, batch_size, dist: _Dist, device):
    """(accuracy %, mean loss, predictions of this process's share) over a data set."""
    model.eval()
    idx = torch.arange(len(y))[dist.rank::dist.world]
    correct = torch.zeros((), dtype=torch.float64)
    loss = torch.zeros((), dtype=torch.float64)
    preds = []
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        logits = model(x[b].to(device))
        target = y[b].to(device)
        loss += F.cross_entropy(logits, target, reduction="sum").double().cpu()
        pred = logits.argmax(1)
        correct += (pred == target).sum().double().cpu()
        preds.append(pred.cpu())
    stats = dist.sum_(torch.stack([correct, loss]))
    n = len(y)
    preds = torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)
    return 100.0 * float(stats[0]) / n, float(stats[1]) / n, preds


def _config(args, split, ranks):
    return dict(model=args.model, conv=args.conv, timesteps=args.timesteps, num_classes=split.num_classes,
                in_channels=split.input_size[0], ranks=ranks, schedule=args.schedule, dataset=args.dataset,
                input_size=list(split.input_size))


def _save(path, payload):
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- run

def run(args) -> dict:
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.weight_decay < 0:
        raise _cli_error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.momentum < 1:
        raise _cli_error(f"--momentum must be in [0, 1), got {args.momentum}")
    device = _device(args.device)
    split = _load_data(args)
    ranks = parse_ranks(args.ranks)
    if args.conv == "dense" and ranks is not None:
        raise _cli_error("--ranks applies to --conv stt|ptt|htt, not dense")

    dense_model = None
    if ranks == "vbmf":
        if not args.dense_from:
            raise _cli_error("--ranks vbmf needs --dense-from CHECKPOINT (a trained dense model of the same "
                             "architecture, from snnops train --conv dense --out DIR)")
        dense_model = _load_dense(args.dense_from, args, split)
    try:
        model = build(args.model, conv=args.conv, timesteps=args.timesteps, num_classes=split.num_classes,
                      in_channels=split.input_size[0], ranks=ranks, backend=args.backend,
                      schedule=args.schedule, dense_model=dense_model)
        model.check_input(split.x_train[:1])
    except (ValueError, TypeError) as exc:
        raise _cli_error(str(exc)) from None
    model.to(device)

    dist = _Dist(device)
    if not dist.main:
        args.json = None  # the summary file is written once, by process 0
    try:
        return _train(args, split, model, device, dist)
    finally:
        dist.close()


def _load_dense(path, args, split) -> MSResNet:
    if not os.path.isfile(path):
        raise _cli_error(f"--dense-from: checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ckpt.get("config", {}) if isinstance(ckpt, dict) else {}
    if cfg.get("conv") != "dense" or cfg.get("model") != args.model:
        raise _cli_error(f"--dense-from {path}: expected a dense {args.model} checkpoint, got "
                         f"{cfg.get('model')} conv={cfg.get('conv')}")
    dense = build(args.model, conv="dense", timesteps=cfg["timesteps"], num_classes=cfg["num_classes"],
                  in_channels=cfg["in_channels"], backend="reference")
    dense.load_state_dict(ckpt["model"])
    return dense


def _train(args, split, model: MSResNet, device, dist: _Dist) -> dict:
    main = dist.main
    say = (lambda *a: print(*a, flush=True)) if main else (lambda *a: None)
    if dist.world > 1:
        for m in model.modules():
            if isinstance(m, TemporalBatchNorm):
                m.sync = True
        if args.batch_size < dist.world:
            raise _cli_error(f"--batch-size {args.batch_size} is smaller than the {dist.world} processes")
    dist.broadcast_params(model)

    n_train = len(split.y_train)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)

    out = args.out or os.path.join("runs", f"tt-{args.model}-{args.conv}-{args.dataset}")
    ckpt_path = os.path.join(out, CHECKPOINT)
    if main:
        os.makedirs(out, exist_ok=True)
    config = _config(args, split, model.ranks)
    history, start_epoch = [], 0
    if args.resume:
        path = ckpt_path if args.resume == "auto" else args.resume
        if not os.path.isfile(path):
            raise _cli_error(f"--resume: checkpoint not found: {path}")
        ckpt = torch.load(path, map_location=device, weights_only=False)
        saved = ckpt.get("config", {})
        diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if diff:
            raise _cli_error(f"--resume {path}: the checkpoint was made with different settings "
                             + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items()))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        if ckpt.get("total_epochs") != args.epochs:
            # A longer (or shorter) run: the cosine schedule spans the new total.
            scheduler.T_max = args.epochs * steps_per_epoch
        say(f"resumed from {path} at epoch {start_epoch}")

    params = model.count_params()
    macs = model.count_macs(split.input_size)
    say(f"{args.model} conv={args.conv} backend={args.backend} ranks={model.ranks} | {split.name} "
        f"{n_train} train / {len(split.y_test)} test, input {tuple(split.input_size)}, T={args.timesteps} | "
        f"{params / 1e6:.3f} M params, {macs / 1e9:.4f} G MACs | {dist.world} process(es), "
        f"{torch.get_num_threads()} threads")

    show_bar = main and not args.no_progress
    for epoch in range(start_epoch, args.epochs):
        model.train()
        generator = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        order = torch.randperm(n_train, generator=generator)
        stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{args.epochs}", show_bar)
        t0 = time.perf_counter()
        for i in range(0, n_train, args.batch_size):
            batch = order[i:i + args.batch_size]
            xb = split.x_train[batch]
            if split.name.startswith("cifar"):
                xb = _augment(xb, generator)
            share = torch.arange(len(batch))[dist.rank::dist.world]
            xb, yb = xb[share].to(device), split.y_train[batch][share].to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss_sum = F.cross_entropy(logits, yb, reduction="sum")
            (loss_sum / len(batch)).backward()
            dist.reduce_grads(model)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                step_stats = torch.tensor([float(loss_sum.detach()), float((logits.argmax(1) == yb).sum()),
                                           len(yb)], dtype=torch.float64)
            stats += step_stats
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(step_stats[0]) / max(len(yb), 1):.3f}")
        if bar is not None:
            bar.close()
        stats = dist.sum_(stats)
        train_time = time.perf_counter() - t0
        test_acc, test_loss, _ = evaluate(model, split.x_test, split.y_test, args.batch_size, dist, device)
        record = dict(epoch=epoch + 1, train_loss=float(stats[0] / stats[2]),
                      train_accuracy=100.0 * float(stats[1] / stats[2]), test_loss=test_loss,
                      test_accuracy=test_acc, lr=optimizer.param_groups[0]["lr"], time_s=train_time)
        history.append(record)
        say(f"epoch {epoch + 1}/{args.epochs}  train loss {record['train_loss']:.4f} acc "
            f"{record['train_accuracy']:.2f}%  test loss {test_loss:.4f} acc {test_acc:.2f}%  "
            f"time {train_time:.1f} s")
        if main:
            _save(ckpt_path, dict(epoch=epoch + 1, total_epochs=args.epochs, config=config,
                                  model=model.state_dict(), optimizer=optimizer.state_dict(),
                                  scheduler=scheduler.state_dict(), history=history))
        dist.barrier()

    test_acc, test_loss, preds = evaluate(model, split.x_test, split.y_test, args.batch_size, dist, device)
    summary = dict(
        method="tt", model=args.model, conv=args.conv, backend=args.backend, dataset=split.name,
        input_size=list(split.input_size), num_classes=split.num_classes, train_images=n_train,
        test_images=len(split.y_test), timesteps=args.timesteps, ranks=model.ranks,
        schedule=args.schedule if args.conv == "htt" else None, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
        params=params, params_m=params / 1e6, macs=macs, macs_g=macs / 1e9,
        test_accuracy=test_acc, test_loss=test_loss,
        best_test_accuracy=max((h["test_accuracy"] for h in history), default=test_acc),
        time_per_epoch_s=[h["time_s"] for h in history],
        mean_time_per_epoch_s=(sum(h["time_s"] for h in history) / len(history)) if history else None,
        history=history, world_size=dist.world, threads=torch.get_num_threads(), device=str(device),
        checkpoint=os.path.abspath(ckpt_path), out=os.path.abspath(out))
    if args.conv != "dense":
        merged = merge(model)
        m_acc, m_loss, m_preds = evaluate(merged, split.x_test, split.y_test, args.batch_size, dist, device)
        agree = dist.sum_(torch.tensor([float((m_preds == preds).sum())], dtype=torch.float64))
        summary.update(merged_test_accuracy=m_acc, merged_test_loss=m_loss,
                       merged_params=merged.count_params(), merged_macs=merged.count_macs(split.input_size),
                       merged_prediction_agreement=float(agree[0]) / len(split.y_test),
                       merged_matches=m_acc == test_acc)
        say(f"merged to dense: test accuracy {m_acc:.2f}% (TT model {test_acc:.2f}%), "
            f"{100 * summary['merged_prediction_agreement']:.2f}% identical predictions")
        if main:
            _save(os.path.join(out, "merged.pt"), dict(config=dict(config, merged=True),
                                                       model=merged.state_dict()))
    if main:
        import json
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    say(f"test accuracy {test_acc:.2f}%  ({params / 1e6:.3f} M params, {macs / 1e9:.4f} G MACs)")
    return summary


def _progress(total, desc, show):
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
