"""``snnops train --method joint``: Joint A-SNN training, and the paper's ablation.

    snnops train --method joint [--backbone resnet18] [--loss paper|authors] [--ablation] ...

Trains the dual network (ANN and SNN paths sharing factorized weights) with the joint
loss, reports the ANN's and the SNN's test accuracy after every epoch (the SNN is the
model that is deployed) and the training time per epoch. ``--ablation`` trains the six
rows of the paper's Table 4 with the same settings and prints them beside the paper's
CIFAR-10 numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import data as _data
from ..cli import CLIError
from ..nn.wft import WEIGHT_MODES, wft_parameter_report
from .loss import LOSS_FORMS, JointLoss
from .networks import BACKBONES, build_network

# Defaults per data set: (epochs, batch size, lr, timesteps, width). The paper trains
# CIFAR for 300 epochs, Adam lr 1e-3 with cosine decay, weight decay 5e-4, T = 4, width 64.
# On digits a width-16 ResNet-18 trains jointly in about 10 CPU seconds per epoch (measured,
# one thread), 30 epochs in about five minutes.
DEFAULTS = {
    "digits": dict(epochs=30, batch_size=64, lr=1e-3, timesteps=4, width=16),
    "cifar10": dict(epochs=300, batch_size=128, lr=1e-3, timesteps=4, width=64),
    "cifar100": dict(epochs=300, batch_size=128, lr=1e-3, timesteps=4, width=64),
}

# Table 4 of the paper (ResNet-18, CIFAR-10, T = 4): SNN accuracy (%) and seconds per epoch.
PAPER_TABLE4 = {
    "snn_alone": (92.39, 26.7),
    "kd_trained_ann": (93.12, 31.6),
    "joint_ce_kld": (94.09, 34.8),
    "joint_ce_kld_l2": (94.52, 34.9),
    "wft_alone": (93.69, 32.2),
    "all": (95.45, 36.7),
}


@dataclass(frozen=True)
class Setting:
    """One way to train: which paths, which weight sharing, which loss terms."""

    name: str
    label: str
    mode: str            # "joint" | "snn" (SNN alone) | "kd" (SNN taught by a trained ANN)
    weights: str         # "wft" | "separate" | "shared"
    ce: bool = True
    kld: bool = True
    norm: bool = True
    branches: bool = True

    def columns(self):
        with_ann = self.mode != "snn"
        return {"w/ ANN": with_ann, "CE": self.ce and self.mode == "joint", "KLD": self.kld and with_ann,
                "Norm": self.norm and with_ann, "WFT": self.weights == "wft"}


ABLATION = [
    Setting("snn_alone", "SNN alone", "snn", "separate", ce=True, kld=False, norm=False, branches=False),
    Setting("kd_trained_ann", "+ KD from a trained ANN", "kd", "separate", ce=True, kld=True, norm=False,
            branches=False),
    Setting("joint_ce_kld", "joint CE + KLD", "joint", "separate", ce=True, kld=True, norm=False),
    Setting("joint_ce_kld_l2", "joint CE + KLD + L2", "joint", "separate", ce=True, kld=True, norm=True),
    Setting("wft_alone", "WFT alone", "joint", "wft", ce=True, kld=False, norm=False),
    Setting("all", "all (joint + WFT)", "joint", "wft", ce=True, kld=True, norm=True),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("joint (Joint A-SNN)")
    g.add_argument("--backbone", default="resnet18", help=f"one of {', '.join(BACKBONES)} (default resnet18)")
    g.add_argument("--width", type=int, default=None,
                   help="channels of the first stage (default 16 on digits, 64 on CIFAR as the paper)")
    g.add_argument("--weights", default="wft",
                   help="how the ANN and SNN weights relate: wft (factorized, default) | separate | shared")
    g.add_argument("--classifier-weights", default=None,
                   help="the same for the linear classifiers (default: as --weights; the authors' code: separate)")
    g.add_argument("--loss", default="paper", help="paper (CE + l1*KLD + l2*L2, default) | authors (their code)")
    g.add_argument("--lambda1", type=float, default=1.0, help="KLD weight (paper form, default 1)")
    g.add_argument("--lambda2", type=float, default=0.3, help="feature-hint weight (paper form, default 0.3)")
    g.add_argument("--temperature", type=float, default=3.0, help="distillation temperature (authors' form, default 3)")
    g.add_argument("--alpha", type=float, default=0.1, help="distillation share (authors' form, default 0.1)")
    g.add_argument("--beta", type=float, default=1e-6, help="feature-term weight (authors' form, default 1e-6)")
    g.add_argument("--no-ce", action="store_true", help="drop the cross-entropy term")
    g.add_argument("--no-kld", action="store_true", help="drop the KL-divergence (distillation) term")
    g.add_argument("--no-norm", action="store_true", help="drop the feature-hint term")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="Adam weight decay (default 5e-4)")
    g.add_argument("--image-size", type=int, default=16, help="digits resized to this size (default 16)")
    g.add_argument("--ablation", action="store_true",
                   help="train the six rows of the paper's Table 4 with these settings and print them")


# ----------------------------------------------------------------------------- checks

def _resolve(args) -> argparse.Namespace:
    """Validate the joint options and fill the per-dataset defaults (CLIError on bad input)."""
    if args.backbone not in BACKBONES:
        raise CLIError(f"--backbone: unknown backbone {args.backbone!r}; expected one of {', '.join(BACKBONES)}")
    if args.weights not in WEIGHT_MODES:
        raise CLIError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {args.weights!r}")
    if args.classifier_weights is not None and args.classifier_weights not in WEIGHT_MODES:
        raise CLIError(f"--classifier-weights must be one of {', '.join(WEIGHT_MODES)}, got {args.classifier_weights!r}")
    if args.loss not in LOSS_FORMS:
        raise CLIError(f"--loss must be one of {', '.join(LOSS_FORMS)}, got {args.loss!r}")
    for name in ("lambda1", "lambda2", "beta", "weight_decay"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise CLIError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if not 0.0 <= args.alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.no_ce and args.no_kld and args.no_norm:
        raise CLIError("--no-ce, --no-kld and --no-norm together leave no loss to train with")
    if args.width is not None and args.width < 1:
        raise CLIError(f"--width must be >= 1, got {args.width}")
    if args.image_size < 8 or args.image_size % 8:
        raise CLIError(f"--image-size must be a multiple of 8 (three 2x downsamplings), got {args.image_size}")
    if args.dataset not in DEFAULTS:
        raise CLIError(f"--dataset must be one of {', '.join(DEFAULTS)}, got {args.dataset!r}")
    resolved = argparse.Namespace(**vars(args))
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(resolved, key, None) is None:
            setattr(resolved, key, value)
    return resolved


# ----------------------------------------------------------------------------- training

def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (pad 4) and horizontal flip, per sample (the CIFAR augmentation)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    top = torch.randint(0, 9, (b,), generator=generator)
    left = torch.randint(0, 9, (b,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, :, None]        # [B, H, 1]
    cols = (left[:, None] + torch.arange(w))[:, None, :]       # [B, 1, W]
    out = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out).contiguous()


def _make_loss(setting: Setting, args) -> JointLoss:
    return JointLoss(args.loss, ce=setting.ce, kld=setting.kld, norm=setting.norm,
                     ann_ce=setting.mode == "joint", lambda1=args.lambda1, lambda2=args.lambda2,
                     temperature=args.temperature, alpha=args.alpha, beta=args.beta)


@torch.no_grad()
def evaluate(net, x, y, path: str, batch_size: int = 256) -> float:
    """Test accuracy (%) of ``path`` (only the output classifier is computed)."""
    was_training = net.training
    net.eval()
    correct = 0
    for xb, yb in _data.batches(x, y, batch_size, shuffle=False):
        correct += int((net(xb, path, branches=False).output.argmax(-1) == yb).sum())
    net.train(was_training)
    return 100.0 * correct / max(len(y), 1)


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr)


def train_setting(split, setting: Setting, args, teacher=None, log=print, tag: str = "") -> dict:
    """Train one setting from the seed; returns accuracies, timings and the network."""
    torch.manual_seed(args.seed)
    net = build_network(args.backbone, split.num_classes, split.input_size[0], width=args.width,
                        weights=setting.weights, timesteps=args.timesteps,
                        classifier_weights=args.classifier_weights)
    loss_fn = _make_loss(setting, args)
    path_train = "ann" if setting.mode == "ann" else "snn"
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    augment = split.name.startswith("cifar")
    n_batches = math.ceil(len(split.y_train) / args.batch_size)
    history = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        start, cpu_start = time.perf_counter(), time.process_time()
        total_loss, seen = 0.0, 0
        batches = _data.batches(split.x_train, split.y_train, args.batch_size, shuffle=True, generator=gen)
        for xb, yb in _progress(batches, n_batches, f"{tag}epoch {epoch}", not args.no_progress):
            if augment:
                xb = _augment(xb, gen)
            if setting.mode == "ann":
                out = net(xb, "ann", branches=False)
                loss = F.cross_entropy(out.output, yb)
            elif setting.mode == "snn":
                loss, _ = loss_fn(None, net(xb, "snn", branches=False), yb)
            elif setting.mode == "kd":
                with torch.no_grad():
                    teacher_out = teacher(xb, "ann", branches=False)
                loss, _ = loss_fn(teacher_out, net(xb, "snn", branches=False), yb)
            else:
                ann = net(xb, "ann", branches=setting.branches) if loss_fn.needs_ann else None
                snn = net(xb, "snn", branches=setting.branches)
                loss, _ = loss_fn(ann, snn, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(yb)
            seen += len(yb)
        sched.step()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        row = {"epoch": epoch, "loss": total_loss / max(seen, 1), "seconds": seconds, "cpu_seconds": cpu_seconds}
        if setting.mode == "joint" or setting.mode == "ann":
            row["ann_test_acc"] = evaluate(net, split.x_test, split.y_test, "ann")
        if setting.mode != "ann":
            row["snn_test_acc"] = evaluate(net, split.x_test, split.y_test, "snn")
        history.append(row)
        accs = "  ".join(f"{k[:3].upper()} {row[k]:6.2f}%" for k in ("ann_test_acc", "snn_test_acc") if k in row)
        log(f"{tag}epoch {epoch:3d}/{args.epochs}  loss {row['loss']:.4f}  {accs}  {seconds:6.2f} s "
            f"({cpu_seconds:.2f} s CPU)")
    last = history[-1]
    return {"setting": setting.name, "label": setting.label, "net": net,
            "ann_test_acc": last.get("ann_test_acc"), "snn_test_acc": last.get("snn_test_acc"),
            "seconds_per_epoch": sum(r["seconds"] for r in history) / len(history),
            "cpu_seconds_per_epoch": sum(r["cpu_seconds"] for r in history) / len(history), "history": history}


# ----------------------------------------------------------------------------- reports

def _setting_from_args(args) -> Setting:
    return Setting("custom", "joint", "joint", args.weights, ce=not args.no_ce, kld=not args.no_kld,
                   norm=not args.no_norm)


def _params(net) -> dict:
    report = wft_parameter_report(net)
    report.pop("layers")
    report["total"] = sum(p.numel() for p in net.parameters())
    return report


def run_ablation(split, args, log=print) -> list:
    rows = []
    for setting in ABLATION:
        log(f"--- {setting.label}")
        teacher_info = None
        teacher = None
        if setting.mode == "kd":
            ann_setting = Setting("ann_teacher", "ANN teacher", "ann", "separate", kld=False, norm=False,
                                  branches=False)
            res = train_setting(split, ann_setting, args, log=log, tag="[teacher] ")
            teacher = res["net"].eval()
            teacher_info = {k: res[k] for k in ("ann_test_acc", "seconds_per_epoch", "cpu_seconds_per_epoch")}
        res = train_setting(split, setting, args, teacher=teacher, log=log)
        row = {"setting": setting.name, "label": setting.label, **setting.columns(),
               "snn_test_acc": res["snn_test_acc"], "ann_test_acc": res["ann_test_acc"],
               "seconds_per_epoch": res["seconds_per_epoch"], "cpu_seconds_per_epoch": res["cpu_seconds_per_epoch"],
               "paper_snn_acc": PAPER_TABLE4[setting.name][0], "paper_seconds": PAPER_TABLE4[setting.name][1]}
        if teacher_info is not None:
            row["teacher"] = teacher_info
        rows.append(row)
    return rows


def format_ablation(rows, args) -> str:
    mark = {True: "x", False: "-"}
    cols = ["w/ ANN", "CE", "KLD", "Norm", "WFT"]
    head = (f"{'design':26s} " + " ".join(f"{c:>6s}" for c in cols)
            + f" {'SNN %':>7s} {'ANN %':>7s} {'s/epoch':>8s} {'CPU s':>7s} | {'paper %':>7s} {'paper s':>7s}")
    lines = [f"Table 4 ablation: {args.backbone} width {args.width}, {args.dataset}, T={args.timesteps}, "
             f"{args.epochs} epochs, loss form {args.loss!r}, {torch.get_num_threads()} thread(s) "
             f"(paper: ResNet-18 width 64, CIFAR-10, T=4, 300 epochs, 4 GPUs)",
             head, "-" * len(head)]
    for r in rows:
        ann = f"{r['ann_test_acc']:7.2f}" if r["ann_test_acc"] is not None else f"{'':>7s}"
        lines.append(f"{r['label']:26s} " + " ".join(f"{mark[r[c]]:>6s}" for c in cols)
                     + f" {r['snn_test_acc']:7.2f} {ann} {r['seconds_per_epoch']:8.2f}"
                     f" {r['cpu_seconds_per_epoch']:7.2f} | {r['paper_snn_acc']:7.2f} {r['paper_seconds']:7.1f}")
        if "teacher" in r:
            t = r["teacher"]
            lines.append(f"{'  (teacher ANN)':26s} {'':>34s} {'':>7s} {t['ann_test_acc']:7.2f} "
                         f"{t['seconds_per_epoch']:8.2f} {t['cpu_seconds_per_epoch']:7.2f}")
    lines.append("s/epoch: wall-clock training seconds per epoch; CPU s: this process's CPU seconds "
                 "(steadier than wall time on a shared machine)")
    return "\n".join(lines)


def run(args) -> dict:
    args = _resolve(args)
    try:
        kwargs = {"size": args.image_size} if args.dataset == "digits" else {}
        split = _data.load(args.dataset, args.data_dir, **kwargs)
    except _data.DatasetError as exc:
        raise CLIError(str(exc)) from exc
    print(f"joint: {args.backbone} width {args.width} on {split.name} {split.input_size}, T={args.timesteps}, "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, threads {torch.get_num_threads()}")
    summary = {"method": "joint", "dataset": split.name, "backbone": args.backbone, "width": args.width,
               "timesteps": args.timesteps, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
               "weight_decay": args.weight_decay, "loss_form": args.loss, "seed": args.seed,
               "threads": torch.get_num_threads()}
    if args.ablation:
        rows = run_ablation(split, args)
        print(format_ablation(rows, args))
        summary["ablation"] = rows
        net = None
    else:
        setting = _setting_from_args(args)
        loss_fn = _make_loss(setting, args)
        print(f"weights {setting.weights}, {loss_fn!r}")
        res = train_setting(split, setting, args)
        net = res["net"]
        params = _params(net)
        print(f"SNN test accuracy {res['snn_test_acc']:.2f}%  (ANN {res['ann_test_acc']:.2f}%), "
              f"{res['seconds_per_epoch']:.2f} s per training epoch ({res['cpu_seconds_per_epoch']:.2f} s CPU)")
        print(f"WFT weight parameters: stored {params['stored']:,} "
              f"({params['stored_over_separate']:.3f}x a separate ANN + SNN: {params['separate']:,}); "
              f"paper's accounting {params['paper']:,} ({params['paper_over_separate']:.3f}x)")
        summary.update({"weights": setting.weights, "loss": repr(loss_fn), "snn_test_acc": res["snn_test_acc"],
                        "ann_test_acc": res["ann_test_acc"], "seconds_per_epoch": res["seconds_per_epoch"],
                        "cpu_seconds_per_epoch": res["cpu_seconds_per_epoch"],
                        "history": res["history"], "parameters": params})
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        if net is not None:
            torch.save(net.state_dict(), os.path.join(args.out, f"joint_{args.backbone}.pt"))
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
