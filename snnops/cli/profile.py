"""``snnops profile``: what TT-SNN saves in training time and memory, measured here.

    snnops profile [--model ms_resnet18] [--input-size 3x32x32] [--timesteps 4] [--batch-size 16]

One row per method: the dense MS-ResNet on snnops kernels (the baseline), its STT, PTT
and HTT forms, and the same four models on plain PyTorch ops (Python-loop LIF, one
``F.conv2d`` per TT core). For each: parameters, MACs over T, the forward+backward time
of one batch (median of repeats after warm-up, methods interleaved round by round),
the reduction versus the baseline (median of per-round ratios), the speed-up over the
same model on plain PyTorch ops, the peak memory the training step allocates above
the model and its gradients (activations and temporaries), the bytes autograd saves
for backward, and the share of the step spent in convolutions / LIF / BatchNorm /
other (``torch.profiler``, backward ops attributed to the layer that recorded them).
The paper's GPU figures are printed beside ours. Output: a table, ``--json PATH`` and
a PNG chart.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import CLIError, summary
from .rounds import round_orders

# The TT-SNN paper's Table II (RTX 3090 Ti; time = forward+backward of one batch).
PAPER = {
    "ms_resnet18": dict(
        setting="CIFAR-10, 3x32x32, T=4, batch 100, RTX 3090 Ti",
        rows={"dense": dict(time_s=0.214, params_m=11.20, macs_g=2.221),
              "stt": dict(time_s=0.190, params_m=1.83, macs_g=0.372),
              "ptt": dict(time_s=0.176, params_m=1.83, macs_g=0.372),
              "htt": dict(time_s=0.166, params_m=1.83, macs_g=0.282)}),
    "ms_resnet34": dict(
        setting="N-Caltech101, 48x48, T=6, batch 50, RTX 3090 Ti",
        rows={"dense": dict(time_s=0.657, params_m=21.31, macs_g=15.65),
              "stt": dict(time_s=0.572, params_m=2.67, macs_g=1.69),
              "ptt": dict(time_s=0.541, params_m=2.67, macs_g=1.69),
              "htt": dict(time_s=0.530, params_m=2.67, macs_g=1.46)}),
}

# Per model: (input size, timesteps, classes) when not given.
MODEL_DEFAULTS = {
    "ms_resnet18": ((3, 32, 32), 4, 10),
    "ms_resnet34": ((2, 48, 48), 6, 101),
}

# method key -> (conv, backend)
METHODS = {
    "dense": ("dense", "snnops"), "stt": ("stt", "snnops"), "ptt": ("ptt", "snnops"), "htt": ("htt", "snnops"),
    "dense-ref": ("dense", "reference"), "stt-ref": ("stt", "reference"),
    "ptt-ref": ("ptt", "reference"), "htt-ref": ("htt", "reference"),
}
DEFAULT_METHODS = ("dense", "stt", "ptt", "htt", "dense-ref", "stt-ref", "ptt-ref", "htt-ref")
BASELINE = "dense"
CATEGORIES = ("conv", "lif", "bn", "bn_lif", "other")

# The profile's targets on a CPU: (method, what, threshold).
TARGETS = (
    ("ptt", "reduction", 60.0), ("htt", "reduction", 70.0),
    ("ptt", "speedup", 2.0), ("htt", "speedup", 2.0), ("dense", "speedup", 1.2),
    ("dense", "memory", 3.0), ("stt", "memory", 3.0), ("ptt", "memory", 3.0), ("htt", "memory", 3.0),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snnops profile", description=summary(__doc__))
    p.add_argument("--model", default="ms_resnet18", help="ms_resnet18 (default) | ms_resnet34")
    p.add_argument("--input-size", default=None,
                   help="C x H x W of one image, e.g. 3x32x32 (default: 3x32x32 for ms_resnet18, 2x48x48 for "
                        "ms_resnet34)")
    p.add_argument("--timesteps", type=int, default=None, help="T (default 4; 6 for ms_resnet34)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default 10; 101 for ms_resnet34)")
    p.add_argument("--ranks", default=None,
                   help="TT ranks: one int, 4 (per stage) or one per layer, comma separated (default: the "
                        "library's defaults, printed)")
    p.add_argument("--schedule", default="first", help="HTT full/half order (default first: the paper's)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated rows to measure, from {', '.join(METHODS)} (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, printed)")
    p.add_argument("--allocator", choices=("system", "cache"), default="system",
                   help="system (default): torch's allocator (the snnops kernels' own outputs still come "
                        "from their block cache); cache: every CPU tensor of every method comes from the "
                        "block cache (snnops.cache_all_cpu_tensors), as with a preloaded jemalloc")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--settle", type=int, default=0,
                   help="untimed steps of a method right before each of its timed steps, so each is timed "
                        "in the steady state of its own training loop, not in the memory state the previous "
                        "method left (default 0: each timed step follows the previous method's, as in "
                        "the measurements in docs/profile.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows as JSON")
    p.add_argument("--chart", default="snnops_profile.png", metavar="PATH",
                   help="PNG chart (default snnops_profile.png)")
    p.add_argument("--no-chart", action="store_true", help="no chart")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# ----------------------------------------------------------------------------- parsing

def parse_input_size(text):
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise CLIError(f"--input-size must be C x H x W like 3x32x32, got {text!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise CLIError(f"--input-size must be three positive integers C x H x W like 3x32x32, got {text!r}")
    return size


def parse_ranks(text):
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--ranks must be an int or a comma-separated list of ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise CLIError(f"--ranks must be positive integers, got {text!r}")
    return values[0] if len(values) == 1 else values


def parse_methods(text):
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise CLIError(f"--methods: unknown {unknown or text!r}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


# ----------------------------------------------------------------------------- measuring

def _step(model, x, y):
    """One training step's forward and backward (no optimizer: the paper's "training
    time" is forward + backward of one batch). Gradients stay allocated between steps."""
    model.zero_grad(set_to_none=False)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def peak_memory(model, x, y):
    """(peak bytes allocated above the pre-step level during one step, bytes saved for
    backward by autograd): every allocation and free of the CPU allocator is recorded
    by torch.profiler and replayed in time order; saved tensors are deduplicated by
    storage and parameters are not counted."""
    from torch.profiler import ProfilerActivity, profile

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            ptr = s.data_ptr()
            if ptr not in params and ptr != 0:
                saved[ptr] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            pass
        return t

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.zero_grad(set_to_none=False)
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        del loss
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak, sum(saved.values())


_TAGS = {"conv": "snnops.profile.conv", "lif": "snnops.profile.lif", "bn": "snnops.profile.bn"}
# The fused BN + LIF of the snnops models opens this range itself (no module to hook).
_RANGES = {"snnops.bn_lif": "bn_lif"}


def _category_of_module(m):
    from torch import nn

    from ..models.blocks import SpikingNeuron, TemporalBatchNorm
    from ..nn.tt_conv import MergedTTConv2d, TTConv2d
    if isinstance(m, (TTConv2d, MergedTTConv2d, nn.Conv2d)):
        return "conv"
    if isinstance(m, SpikingNeuron):
        return "lif"
    if isinstance(m, (TemporalBatchNorm, nn.BatchNorm2d)):
        return "bn"
    return None


@contextmanager
def _tagged(model):
    """Wrap the forward of every conv / LIF / BN layer in a named profiler range (the
    outermost only)."""
    depth = [0]
    handles = []

    def pre(cat):
        def fn(module, inputs):
            depth[0] += 1
            module._snnops_profile_range = (torch.ops.profiler._record_function_enter_new(_TAGS[cat])
                                            if depth[0] == 1 else None)
        return fn

    def post(module, inputs, output):
        rec = getattr(module, "_snnops_profile_range", None)
        if rec is not None:
            torch.ops.profiler._record_function_exit(rec)
        module._snnops_profile_range = None
        depth[0] -= 1

    for m in model.modules():
        cat = _category_of_module(m)
        if cat is not None:
            handles.append(m.register_forward_pre_hook(pre(cat)))
            handles.append(m.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            if hasattr(m, "_snnops_profile_range"):
                del m._snnops_profile_range


def time_shares(model, x, y, details=None):
    """Share of one profiled step's time in conv / LIF / BN / fused BN+LIF / other.
    Forward: time in the tagged layers (and the fused op's own range). Backward: each autograd node's time goes to the category of
    the forward op that recorded it (matched by sequence number). ``details`` (a
    dict) receives the number of backward nodes attributed to each category."""
    from torch.profiler import ProfilerActivity, profile

    by_name = {v: k for k, v in _TAGS.items()}
    by_name.update(_RANGES)
    with _tagged(model):
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _step(model, x, y)
        wall = time.perf_counter() - t0
    events = prof.events()
    seq_category = {}
    spent = dict.fromkeys(CATEGORIES, 0.0)
    total = 0.0
    for e in events:
        if e.name in by_name:
            spent[by_name[e.name]] += e.cpu_time_total
    for e in events:
        if e.sequence_nr < 0 or e.name.startswith("autograd::engine"):
            continue
        parent = e.cpu_parent
        while parent is not None and parent.name not in by_name:
            parent = parent.cpu_parent
        if parent is not None:
            seq_category.setdefault(e.sequence_nr, by_name[parent.name])
    backward_nodes = dict.fromkeys(CATEGORIES, 0)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            cat = seq_category.get(e.sequence_nr)
            backward_nodes[cat or "other"] += 1
            if cat is not None:
                spent[cat] += e.cpu_time_total
    if details is not None:
        details["backward_nodes"] = backward_nodes
    for e in events:  # the profiled step's span: its top-level events
        if e.cpu_parent is None:
            total += e.cpu_time_total
    measured = [c for c in CATEGORIES if c != "other"]
    total = max(total, sum(spent[c] for c in measured))
    if total <= 0:
        return dict.fromkeys(CATEGORIES, float("nan")), wall
    shares = {c: spent[c] / total for c in measured}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return shares, wall


def _median(values):
    v = sorted(values)
    n = len(v)
    return float("nan") if n == 0 else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))


def _progress(total, show):
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="snnops profile", file=sys.stderr, leave=False, dynamic_ncols=True)


def measure(model_name, input_size, timesteps, batch_size, num_classes, ranks, schedule, methods, repeats,
            warmup, seed, progress=None, settle=0):
    """Build the models, time them interleaved, profile them; returns the rows."""
    from ..models import build, convert_backend

    models = {}
    built = {}  # conv -> snnops-backend model, so both backends share one set of weights
    for key in methods:
        conv, backend = METHODS[key]
        if conv not in built:
            torch.manual_seed(seed)
            built[conv] = build(model_name, conv=conv, timesteps=timesteps, num_classes=num_classes,
                                in_channels=input_size[0], ranks=None if conv == "dense" else ranks,
                                schedule=schedule)
        models[key] = built[conv] if backend == "snnops" else convert_backend(built[conv], backend)
        models[key].train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_size, generator=g)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    for m in models.values():
        m.check_input(x)

    def tick():
        if progress is not None:
            progress.update(1)

    times = {k: [] for k in methods}
    rounds = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed step would land on one method by chance
    try:
        # each method follows every other equally often (rounds.py)
        for r, order in enumerate(round_orders(methods, warmup + repeats)):
            this_round = {}
            for key in order:
                for _ in range(settle):
                    _step(models[key], x, y)
                t0 = time.perf_counter()
                _step(models[key], x, y)
                this_round[key] = time.perf_counter() - t0
                tick()
            if r >= warmup:
                rounds.append(this_round)
                for k, t in this_round.items():
                    times[k].append(t)
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()

    rows = []
    for key in methods:
        conv, backend = METHODS[key]
        model = models[key]
        peak, saved = peak_memory(model, x, y)
        tick()
        shares, profiled_wall = time_shares(model, x, y)
        tick()
        rows.append(dict(
            method=key, conv=conv, backend=backend,
            label=f"{conv.upper() if conv != 'dense' else 'dense'}" + (" (plain PyTorch)" if backend == "reference"
                                                                     else ""),
            params=model.count_params(), macs=model.count_macs(input_size),
            ranks=model.ranks, time_s=_median(times[key]), times_s=times[key],
            peak_activation_bytes=peak, saved_for_backward_bytes=saved, shares=shares,
            profiled_step_s=profiled_wall))
        gc.collect()
    _add_ratios(rows, rounds)
    _add_paper(rows, model_name)
    return rows


def _add_ratios(rows, rounds):
    by_key = {r["method"]: r for r in rows}
    for row in rows:
        key = row["method"]
        base = BASELINE if row["backend"] == "snnops" else BASELINE + "-ref"
        if base in by_key:
            ratios = [rd[key] / rd[base] for rd in rounds]
            row["ratio_to_baseline"] = _median(ratios)
            row["reduction_pct"] = 100.0 * (1.0 - row["ratio_to_baseline"])
            row["baseline"] = base
        else:
            row["ratio_to_baseline"] = row["reduction_pct"] = row["baseline"] = None
        if row["backend"] == "reference" and BASELINE in by_key:
            row["reduction_vs_snnops_dense_pct"] = 100.0 * (1.0 - _median([rd[key] / rd[BASELINE] for rd in rounds]))
        plain = row["conv"] + "-ref" if row["conv"] != "dense" else "dense-ref"
        if row["backend"] == "snnops" and plain in by_key:
            row["speedup_vs_plain"] = _median([rd[plain] / rd[key] for rd in rounds])
            other = by_key[plain]
            row["memory_vs_plain"] = (other["peak_activation_bytes"] / row["peak_activation_bytes"]
                                      if row["peak_activation_bytes"] else None)
            row["saved_vs_plain"] = (other["saved_for_backward_bytes"] / row["saved_for_backward_bytes"]
                                     if row["saved_for_backward_bytes"] else None)
        else:
            row["speedup_vs_plain"] = row["memory_vs_plain"] = row["saved_vs_plain"] = None
        row["params_m"] = row["params"] / 1e6
        row["macs_g"] = row["macs"] / 1e9
        row["peak_activation_mb"] = row["peak_activation_bytes"] / 2 ** 20
        row["saved_for_backward_mb"] = row["saved_for_backward_bytes"] / 2 ** 20


def _add_paper(rows, model_name):
    paper = PAPER.get(model_name)
    for row in rows:
        entry = paper["rows"].get(row["conv"]) if paper and row["backend"] == "snnops" else None
        if entry:
            base = paper["rows"]["dense"]["time_s"]
            row["paper"] = dict(entry, reduction_pct=100.0 * (1 - entry["time_s"] / base), setting=paper["setting"])
        else:
            row["paper"] = None


def check_targets(rows):
    """The CPU targets against the measured rows: list of (text, met)."""
    by_key = {r["method"]: r for r in rows}
    out = []
    for key, what, threshold in TARGETS:
        row = by_key.get(key)
        if row is None:
            continue
        if what == "reduction":
            value = row.get("reduction_pct")
            text = f"{row['label']}: {value:.1f}% less time than snnops dense (target >= {threshold:.0f}%)" \
                if value is not None else None
        elif what == "speedup":
            value = row.get("speedup_vs_plain")
            text = (f"{row['label']}: {value:.2f}x faster than on plain PyTorch ops (target >= {threshold:g}x)"
                    if value is not None else None)
        else:
            value = row.get("memory_vs_plain")
            saved = row.get("saved_vs_plain")
            text = (f"{row['label']}: peak activation memory {value:.2f}x smaller than on plain PyTorch ops "
                    f"(target >= {threshold:g}x)" + (f"; saved for backward {saved:.2f}x" if saved else "")
                    if value is not None else None)
        if text is not None:
            out.append((text, bool(value >= threshold)))
    return out


# ----------------------------------------------------------------------------- output

def format_table(rows, config) -> str:
    head = ["method", "params M", "MACs G", "time s", "vs base", "x plain", "peak MB", "saved MB",
            "x mem", "conv", "LIF", "BN", "BN+LIF", "other", "paper s", "paper"]
    lines = []
    for r in rows:
        s = r["shares"]
        paper = r.get("paper")

        def pct(v):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"

        lines.append([
            r["label"], f"{r['params_m']:.2f}", f"{r['macs_g']:.3f}", f"{r['time_s']:.3f}",
            "base" if r["method"] == r.get("baseline") else (
                "-" if r.get("reduction_pct") is None else f"{-r['reduction_pct']:+.1f}%"),
            "-" if r.get("speedup_vs_plain") is None else f"{r['speedup_vs_plain']:.2f}x",
            f"{r['peak_activation_mb']:.0f}", f"{r['saved_for_backward_mb']:.0f}",
            "-" if r.get("memory_vs_plain") is None else f"{r['memory_vs_plain']:.2f}x",
            pct(s.get("conv")), pct(s.get("lif")), pct(s.get("bn")), pct(s.get("bn_lif")), pct(s.get("other")),
            "-" if not paper else f"{paper['time_s']:.3f}",
            "-" if not paper else ("base" if r["conv"] == "dense" else f"{-paper['reduction_pct']:+.1f}%"),
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(l) for l in lines]
    return "\n".join(out)


def write_chart(rows, config, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"].replace(" (plain PyTorch)", "\nplain") for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {"conv": "#4C72B0", "lif": "#DD8452", "bn": "#55A868", "bn_lif": "#C44E52", "other": "#8C8C8C"}
    bottoms = [0.0] * len(rows)
    for cat in CATEGORIES:
        heights = [r["time_s"] * (r["shares"].get(cat) or 0.0) for r in rows]
        ax1.bar(range(len(rows)), heights, bottom=bottoms, color=colors[cat],
                label={"lif": "LIF", "bn": "BN", "bn_lif": "BN+LIF (fused)"}.get(cat, cat))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, r in enumerate(rows):
        text = "base" if r["method"] == r.get("baseline") else (
            "" if r.get("reduction_pct") is None else f"{-r['reduction_pct']:+.0f}%")
        ax1.text(i, r["time_s"], text, ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(range(len(rows)), labels, fontsize=8)
    ax1.set_ylabel("forward + backward per batch (s)")
    ax1.set_title("training step time (median), split by torch.profiler", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.bar(range(len(rows)), [r["peak_activation_mb"] for r in rows], color="#937860")
    ax2.set_xticks(range(len(rows)), labels, fontsize=8)
    ax2.set_ylabel("peak activation memory (MB)")
    ax2.set_title("training step peak memory above parameters and gradients ('plain': plain PyTorch ops)",
                  fontsize=9)
    fig.suptitle(f"snnops profile: {config['model']} {config['input_size_text']}, T={config['timesteps']}, "
                 f"batch {config['batch_size']}, {config['threads']} threads", fontsize=10)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def main(argv) -> int:
    args = build_parser().parse_args(argv)
    from .. import cpu_isa
    from ..models import MODELS, build
    model_name = args.model.lower().replace("-", "_")
    if not model_name.startswith("ms_"):
        model_name = "ms_" + model_name
    if model_name not in MODELS:
        raise CLIError(f"unknown model {args.model!r}; choose from {', '.join(sorted(MODELS))}")
    d_size, d_steps, d_classes = MODEL_DEFAULTS[model_name]
    input_size = parse_input_size(args.input_size) if args.input_size else d_size
    timesteps = d_steps if args.timesteps is None else args.timesteps
    num_classes = d_classes if args.num_classes is None else args.num_classes
    for name, value in (("timesteps", timesteps), ("batch-size", args.batch_size), ("num-classes", num_classes),
                        ("repeats", args.repeats)):
        if value < 1:
            raise CLIError(f"--{name} must be >= 1, got {value}")
    for name, value in (("warmup", args.warmup), ("settle", args.settle)):
        if value < 0:
            raise CLIError(f"--{name} must be >= 0, got {value}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    ranks = parse_ranks(args.ranks)
    methods = parse_methods(args.methods)
    from .. import _native
    allocator = args.allocator if _native.HAS_NATIVE else "system"
    # Validate the whole configuration on the cheapest model before measuring anything.
    try:
        probe = build(model_name, conv="htt" if any(METHODS[m][0] == "htt" for m in methods) else "ptt",
                      timesteps=timesteps, num_classes=num_classes, in_channels=input_size[0], ranks=ranks,
                      schedule=args.schedule)
        probe.check_input(torch.empty(1, *input_size))
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from None
    del probe

    threads = torch.get_num_threads()
    size_text = "x".join(map(str, input_size))
    config = dict(model=model_name, input_size=list(input_size), input_size_text=size_text, timesteps=timesteps,
                  batch_size=args.batch_size, num_classes=num_classes, threads=threads, repeats=args.repeats,
                  warmup=args.warmup, settle=args.settle, schedule=args.schedule, methods=methods, cpu_isa=cpu_isa(), allocator=allocator,
                  torch=torch.__version__, machine=platform.processor() or platform.machine())
    print(f"snnops profile: {model_name}, input {size_text}, T={timesteps}, batch {args.batch_size}, "
          f"{num_classes} classes; {threads} threads, CPU kernels {cpu_isa()}, {allocator} allocator; "
          f"{args.warmup} warm-up + {args.repeats} timed rounds, methods interleaved, {args.settle} untimed "
          f"step(s) of a method before each of its timed ones", flush=True)
    total = (args.warmup + args.repeats) * len(methods) + 2 * len(methods)
    bar = _progress(total, not args.no_progress)
    t0 = time.perf_counter()
    # The same allocator serves every method (the plain-PyTorch models too).
    was_global = _native.caches_all_cpu_tensors()
    if allocator == "cache":
        _native.cache_all_cpu_tensors(True)
    try:
        rows = measure(model_name, input_size, timesteps, args.batch_size, num_classes, ranks, args.schedule,
                       methods, args.repeats, args.warmup, args.seed, bar, settle=args.settle)
    finally:
        if allocator == "cache" and not was_global:
            _native.cache_all_cpu_tensors(False)
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    tt_ranks = next((r["ranks"] for r in rows if r["ranks"] is not None), None)
    config["ranks"] = tt_ranks
    config["elapsed_s"] = elapsed

    print(format_table(rows, config))
    print("time: median forward+backward of one batch; vs base: median of per-round ratios to the dense "
          "model on the same backend; x plain: speed-up over the same model on plain PyTorch ops; peak: "
          "memory the step allocates above parameters and gradients; saved: bytes autograd keeps for backward; "
          "conv/LIF/BN/BN+LIF (the fused op)/other: torch.profiler shares of one step.")
    if tt_ranks is not None:
        print(f"TT ranks (per decomposed layer): {tt_ranks}")
    paper = PAPER.get(model_name)
    if paper:
        print(f"paper (TT-SNN Table II): {paper['setting']}")
    targets = check_targets(rows)
    if targets:
        print("targets on this machine:")
        for text, met in targets:
            print(f"  [{'met' if met else 'MISSED'}] {text}")
    result = dict(config=config, rows=rows, targets=[dict(text=t, met=m) for t, m in targets],
                  paper=paper)
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    if not args.no_chart:
        write_chart(rows, config, args.chart)
        print(f"wrote {args.chart}")
    print(f"done in {elapsed:.0f} s")
    return 0
