"""``snnops train --method lite``: LitE-SNN search, then retraining of the decoded network.

    snnops train --method lite [--preset small|medium|large] [--dataset digits|cifar10|cifar100] ...

Search: the supernet (``--channels``, ``--layers`` cells of ``--steps`` nodes, candidate
bit-widths ``--bits``, timesteps 1..``--timesteps``) is trained by the joint
optimization for ``--search-epochs``. Decode: bit-width per layer, cell structure,
timesteps. Retrain: the decoded network with ``--retrain-channels`` for ``--epochs``.
The report follows the paper's Table 2: accuracy, model size (MB), Bit-SynOps (M) per
image, chosen bit-widths and timesteps, and the search time. When the low-bit spike
kernel is available the retrained network is also run through it (``deployment``).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from .. import data as _data
from ..cli import CLIError
from .cost import check_t_max
from .quant import check_bits, check_keep_ratio
from .retrain import augment_cifar, evaluate, model_size, retrain
from .search import PRESETS, get_preset, search

# Per data set: search (channels, layers, nodes, T_max, epochs, warm-up), retrain
# (channels, epochs), batch size. CIFAR follows the paper (48 -> 144 channels, 8 cells
# of 4 nodes, T_max 6, 50 search / 200 retrain epochs, 5 warm-up epochs); on digits a
# few-thousand-weight supernet on the native 8x8 images keeps the run to minutes on
# two cores.
DEFAULTS = {
    "digits": dict(channels=8, layers=5, steps=3, timesteps=4, search_epochs=8, warmup_epochs=2,
                   retrain_channels=16, epochs=30, batch_size=64, lr=0.025),
    "cifar10": dict(channels=48, layers=8, steps=4, timesteps=6, search_epochs=50, warmup_epochs=5,
                    retrain_channels=144, epochs=200, batch_size=50, lr=0.025),
    "cifar100": dict(channels=48, layers=8, steps=4, timesteps=6, search_epochs=50, warmup_epochs=5,
                     retrain_channels=144, epochs=200, batch_size=50, lr=0.025),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("lite (LitE-SNN)")
    g.add_argument("--preset", default="small",
                   help=f"the paper's scale: {' | '.join(PRESETS)} (lam1, lam2, pruning rate); default small")
    g.add_argument("--lam1", type=float, default=None, help="model-size coefficient (default: the preset's)")
    g.add_argument("--lam2", type=float, default=None, help="Bit-SynOps coefficient (default: the preset's)")
    g.add_argument("--keep-ratio", type=float, default=None,
                   help="fraction of weights kept, in (0, 1] (default: 1 - the preset's pruning rate)")
    g.add_argument("--bits", default="1,2,4", help="candidate bit-widths, comma separated (default 1,2,4)")
    g.add_argument("--channels", type=int, default=None, help="supernet channels C (digits 8, CIFAR 48)")
    g.add_argument("--retrain-channels", type=int, default=None, help="retrained channels (digits 16, CIFAR 144)")
    g.add_argument("--layers", type=int, default=None, help="number of cells (digits 5, CIFAR 8)")
    g.add_argument("--steps", type=int, default=None, help="nodes per cell (digits 3, CIFAR 4)")
    g.add_argument("--search-epochs", type=int, default=None, help="search epochs (digits 8, CIFAR 50); "
                   "--epochs sets the retraining epochs (digits 30, CIFAR 200), --timesteps the largest "
                   "candidate number of timesteps T_max (digits 4, CIFAR 6)")
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help="search epochs with uniform timestep weights (digits 2, CIFAR 5)")
    g.add_argument("--arch-lr", type=float, default=3e-4, help="Adam lr of beta, masks, psi, alpha (3e-4)")
    g.add_argument("--aux-weight", type=float, default=0.4, help="auxiliary-head loss weight at retrain (0.4)")
    g.add_argument("--image-size", type=int, default=8, help="digits image size (default 8, the native size)")
    g.add_argument("--train-subset", type=int, default=None, help="use only the first N training images")
    g.add_argument("--test-subset", type=int, default=None, help="use only the first N test images")
    g.add_argument("--no-deploy", action="store_true", help="skip the low-bit kernel deployment check")


def _positive(args, name):
    value = getattr(args, name)
    if value is not None and (isinstance(value, bool) or value < 1):
        raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def resolve(args) -> argparse.Namespace:
    """Validate the options and fill the per-dataset defaults (CLIError on bad input)."""
    if args.dataset not in DEFAULTS:
        raise CLIError(f"--dataset must be one of {', '.join(DEFAULTS)}, got {args.dataset!r}")
    try:
        preset = get_preset(args.preset)
    except ValueError as exc:
        raise CLIError(f"--preset: {exc}") from None
    r = argparse.Namespace(**vars(args))
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(r, key, None) is None:
            setattr(r, key, value)
    for name in ("channels", "retrain_channels", "layers", "steps", "search_epochs", "train_subset",
                 "test_subset", "image_size"):
        _positive(r, name)
    if r.warmup_epochs < 0:
        raise CLIError(f"--warmup-epochs must be >= 0, got {r.warmup_epochs}")
    try:
        r.bits = check_bits(tuple(int(b) for b in str(args.bits).split(",") if b.strip()))
    except ValueError as exc:
        raise CLIError(f"--bits {args.bits!r}: {str(exc).replace('bits: ', '', 1)}") from None
    try:
        r.t_max = check_t_max(r.timesteps)
    except ValueError as exc:
        raise CLIError(f"--timesteps (t_max): {str(exc).replace('t_max: ', '', 1)}") from None
    try:
        r.keep_ratio = check_keep_ratio(preset.keep_ratio if args.keep_ratio is None else args.keep_ratio)
    except ValueError as exc:
        raise CLIError(f"--keep-ratio (keep_ratio): {str(exc).replace('keep_ratio: ', '', 1)}") from None
    r.lam1 = preset.lam1 if args.lam1 is None else args.lam1
    r.lam2 = preset.lam2 if args.lam2 is None else args.lam2
    for name in ("lam1", "lam2", "aux_weight"):
        v = getattr(r, name)
        if not (v >= 0 and math.isfinite(v)):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    if not (r.arch_lr > 0 and math.isfinite(r.arch_lr)):
        raise CLIError(f"--arch-lr must be > 0, got {r.arch_lr}")
    return r


def _progress_factory(enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None

    def wrap(iterable, total, desc):
        return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
    return wrap


def _load(args):
    try:
        if args.dataset == "digits":
            split = _data.digits(size=args.image_size, seed=args.seed)
        else:
            split = _data.load(args.dataset, args.data_dir)
    except _data.DatasetError as exc:
        raise CLIError(str(exc)) from None
    x_tr, y_tr, x_te, y_te = split.x_train, split.y_train, split.x_test, split.y_test
    if args.train_subset:
        x_tr, y_tr = x_tr[:args.train_subset], y_tr[:args.train_subset]
    if args.test_subset:
        x_te, y_te = x_te[:args.test_subset], y_te[:args.test_subset]
    return split, x_tr, y_tr, x_te, y_te


def _deploy(net, x_test, y_test, batch_size, reference_predictions) -> dict:
    try:
        from .deploy import DeployedNetwork, deployment_available
    except ImportError:
        return {"status": "unavailable", "reason": "snnops.lite.deploy is missing"}
    if not deployment_available():
        return {"status": "unavailable", "reason": "the low-bit spike kernel (snnops.spike_linear_lowbit) "
                                                   "is not in this build"}
    deployed = DeployedNetwork(net)
    start = time.perf_counter()
    ev = evaluate(net, x_test, y_test, batch_size, forward=deployed)
    seconds = time.perf_counter() - start
    exact = deployed.exact_reference()
    ex = evaluate(net, x_test, y_test, batch_size, forward=exact)
    same_exact = bool(torch.equal(ev["predictions"], ex["predictions"]))
    same_float32 = float((ev["predictions"] == reference_predictions).float().mean()) if len(y_test) else 1.0
    return {"status": "ok", "accuracy": ev["accuracy"], "seconds": seconds,
            "predictions_equal_float64_on_quantized_weights": same_exact,
            "prediction_agreement_with_float32_model": same_float32,
            "lowbit_layers": deployed.num_lowbit_layers}


def run(args) -> dict:
    r = resolve(args)
    split, x_tr, y_tr, x_te, y_te = _load(r)
    progress = _progress_factory(not r.no_progress)
    log = print
    log(f"LitE-SNN {r.preset} on {split.name}: {len(y_tr)} train / {len(y_te)} test images, "
        f"lam1={r.lam1:g} lam2={r.lam2:g} keep={r.keep_ratio:g} bits={r.bits} T_max={r.t_max}, "
        f"{torch.get_num_threads()} threads", file=sys.stderr)
    res = search(x_tr, y_tr, num_classes=split.num_classes, preset=r.preset, channels=r.channels,
                 layers=r.layers, steps=r.steps, bits=r.bits, t_max=r.t_max, epochs=r.search_epochs,
                 warmup_epochs=r.warmup_epochs, batch_size=r.batch_size, lr=r.lr, arch_lr=r.arch_lr,
                 lam1=r.lam1, lam2=r.lam2, keep_ratio=r.keep_ratio, seed=r.seed, progress=progress)
    g = res.genotype
    log(f"search: {res.seconds:.1f} s, timesteps {g.timesteps}, bit-widths {g.bit_histogram()}",
        file=sys.stderr)
    augment = augment_cifar if split.name.startswith("cifar") else None
    net, history, retrain_seconds = retrain(g, x_tr, y_tr, num_classes=split.num_classes,
                                            channels=r.retrain_channels, epochs=r.epochs,
                                            batch_size=r.batch_size, lr=r.lr, score_lr=r.arch_lr,
                                            aux_weight=r.aux_weight, augment=augment, seed=r.seed,
                                            progress=progress)
    ev = evaluate(net, x_te, y_te)
    size = model_size(net)
    deployment = {"status": "skipped"} if r.no_deploy else _deploy(net, x_te, y_te, 256, ev["predictions"])
    summary = {
        "method": "lite", "dataset": split.name, "preset": r.preset,
        "lam1": r.lam1, "lam2": r.lam2, "pruning_rate": 1.0 - r.keep_ratio, "candidate_bits": list(r.bits),
        "accuracy": 100.0 * ev["accuracy"],
        "model_size_mb": size["model_size_mb"],
        "model_size": size,
        "bit_synops_m": ev["bit_synops"] / 1e6,
        "synops_m": ev["synops"] / 1e6,
        "bitwidths": dict(g.bits),
        "bitwidth_histogram": {str(k): v for k, v in g.bit_histogram().items()},
        "timesteps": g.timesteps,
        "t_max": r.t_max,
        "search_time_s": res.seconds,
        "retrain_time_s": retrain_seconds,
        "genotype": g.to_dict(),
        "search_history": res.history,
        "retrain_history": history,
        "settings": {"channels": r.channels, "retrain_channels": r.retrain_channels, "layers": r.layers,
                     "steps": r.steps, "search_epochs": r.search_epochs, "warmup_epochs": r.warmup_epochs,
                     "epochs": r.epochs, "batch_size": r.batch_size, "lr": r.lr, "arch_lr": r.arch_lr,
                     "keep_ratio": r.keep_ratio, "seed": r.seed, "threads": torch.get_num_threads(),
                     "train_images": len(y_tr), "test_images": len(y_te)},
        "deployment": deployment,
    }
    print(format_report(summary))
    return summary


def format_report(s: dict) -> str:
    """The Table-2-like report."""
    hist = ", ".join(f"{b}-bit x{n}" for b, n in s["bitwidth_histogram"].items())
    head = f"{'Model':<22} {'Acc. (%)':>9} {'Size (MB)':>10} {'Bit-SynOps (M)':>15} {'#Timesteps':>11}"
    row = (f"{'LitE-SNN (' + s['preset'] + ')':<22} {s['accuracy']:>9.2f} {s['model_size_mb']:>10.4f} "
           f"{s['bit_synops_m']:>15.3f} {s['timesteps']:>11d}")
    lines = [f"LitE-SNN on {s['dataset']}", head, row,
             f"bit-widths (searched): {hist}",
             f"search time: {s['search_time_s']:.1f} s, retrain time: {s['retrain_time_s']:.1f} s",
             f"model size: {s['model_size']['compressed_bits']} bits in low-bit layers + "
             f"{s['model_size']['float_bits']} bits float32 (stem, BN, classifier); 1 MB = 10^6 bytes"]
    d = s["deployment"]
    if d.get("status") == "ok":
        lines.append(f"deployed (bit-serial low-bit spike kernel, {d['lowbit_layers']} layers): accuracy "
                     f"{100 * d['accuracy']:.2f}%, predictions equal to float64 math on the quantized weights: "
                     f"{d['predictions_equal_float64_on_quantized_weights']}, agreement with the float32 model: "
                     f"{100 * d['prediction_agreement_with_float32_model']:.2f}%")
    else:
        lines.append(f"deployment: {d.get('status')}" + (f" ({d['reason']})" if "reason" in d else ""))
    return "\n".join(lines)
