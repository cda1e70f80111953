"""``snnops train``: train with one of the three methods.

    snnops train [--method tt|lite|joint] [--dataset digits|cifar10|cifar100] ...

The common options are parsed here; each method module (``METHODS``) adds its own
with ``add_arguments(parser)`` and trains with ``run(args) -> dict`` (the summary
that ``--json`` writes).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os

import torch

from . import CLIError, summary

METHODS = {
    "tt": "snnops.models.train",     # MS-ResNet dense / STT / PTT / HTT (TT-SNN)
    "lite": "snnops.lite.train",     # LitE-SNN search + retrain
    "joint": "snnops.joint.train",   # Joint A-SNN
}


def build_parser(method: str, module) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snnops train", description=summary(__doc__))
    p.add_argument("--method", choices=sorted(METHODS), default="tt", help="training method (default tt)")
    p.add_argument("--dataset", default="digits", help="digits (default, bundled) | cifar10 | cifar100")
    p.add_argument("--data-dir", default=None, help="directory holding the CIFAR python-pickle files")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--timesteps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="directory for checkpoints and the summary")
    p.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    module.add_arguments(p)
    return p


def main(argv) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", choices=sorted(METHODS), default="tt")
    known, _ = pre.parse_known_args(argv)
    module = importlib.import_module(METHODS[known.method])
    args = build_parser(known.method, module).parse_args(argv)
    for name in ("epochs", "batch_size", "timesteps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    summary = module.run(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0
