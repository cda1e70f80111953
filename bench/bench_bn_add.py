"""tdBN (+ residual add): the fused snnops op against PyTorch's BatchNorm then the add
(what the models ran before), forward and forward+backward, interleaved in one run, on
the channels-last shapes of MS-ResNet18 at batch 16, T = 4 (and the stem's BN, which
runs once for a static image: T = 1).

    python bench/bench_bn_add.py [--rounds N] [--threads 1 2] [--shapes ...]
    python bench/bench_bn_add.py --steps [--threads 1] [--rounds 15]
    pytest bench/bench_bn_add.py --benchmark-json=bench/results/bn_add-pytest.json

Prints, per thread count, the median of per-round time ratios (> 1: the fused op is
faster) and the fused op's achieved bandwidth against a copy's in the same run. With
--steps: whole MS-ResNet18 training steps (CIFAR 3x32x32, batch 16, T = 4), each model
once with every TemporalBatchNorm on PyTorch's BN + add and once on bn_add (copies of
one initialization), interleaved round by round.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util  # noqa: E402

import snnops  # noqa: E402
from snnops.ops.bn_add import bn_add  # noqa: E402

# MS-ResNet18 on CIFAR (T = 4, batch 16): each stage's BN + shortcut add (its stand-alone
# BNs have the same shapes), and the stem BN (T = 1 for a static image).
SHAPES = {"r18-s1": (4, 16, 64, 32, 32), "r18-s2": (4, 16, 128, 16, 16), "r18-s3": (4, 16, 256, 8, 8),
          "r18-s4": (4, 16, 512, 4, 4), "r18-stem": (1, 16, 64, 32, 32)}


def _channels_last(x):
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


def implementations(c):
    bn = torch.nn.BatchNorm2d(c)
    p = (bn.weight, bn.bias, bn.running_mean, bn.running_var)

    def fused(z, r):
        return bn_add(z, r, *p, True)

    def native(z, r):   # PyTorch BatchNorm (channels-last) then the add
        y = F.batch_norm(z.flatten(0, 1), bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.1,
                         1e-5).unflatten(0, z.shape[:2])
        return y if r is None else y + r

    return bn, {"fused bn_add": fused, "BN + add": native}


def forward(fn, z, r):
    def step():
        with torch.no_grad():
            fn(z, r)
    return step


def fwd_bwd(fn, z, r, params, grad):
    inputs = [z, *params] + ([r] if r is not None else [])

    def step():
        torch.autograd.grad(fn(z, r), inputs, grad)
    return step


def measure(shape_id, residual=True, rounds=15):
    shape = SHAPES[shape_id]
    z = _channels_last(torch.randn(shape)).requires_grad_()
    r = _channels_last(torch.randn(shape)).requires_grad_() if residual else None
    grad = _channels_last(torch.randn(shape))
    bn, impls = implementations(shape[2])
    steps = {}
    for name, fn in impls.items():
        steps[("fwd", name)] = forward(fn, z, r)
        steps[("fwd+bwd", name)] = fwd_bwd(fn, z, r, [bn.weight, bn.bias], grad)
    # bytes the fused op must move (4 B each): forward reads z twice (+ the residual) and
    # writes y; backward reads grad_y and z twice and writes grad_z
    moved = {"fwd": (3 + residual) * 4 * z.numel(), "fwd+bwd": (3 + residual + 5) * 4 * z.numel()}
    # against a copy of as many bytes as the forward+backward, in the same rounds
    steps["copy moved"], copied = _util.copy_moving(moved["fwd+bwd"])
    times = _util.interleave(steps, rounds=rounds)
    copy_bw = _util.copy_bandwidth(z.numel() * 4)
    row = {"shape": shape_id, "residual": residual, "elements": z.numel(), "copy_GBps": copy_bw / 1e9}
    for mode in ("fwd", "fwd+bwd"):
        ours = statistics.median(times[(mode, "fused bn_add")])
        row[f"{mode}_ms"] = 1e3 * ours
        row[f"{mode}_native_ms"] = 1e3 * statistics.median(times[(mode, "BN + add")])
        row[f"{mode}_speedup"] = _util.median_ratio(times, (mode, "BN + add"), (mode, "fused bn_add"))
        row[f"{mode}_bandwidth_vs_copy"] = moved[mode] / ours / copy_bw
    fb = times[("fwd+bwd", "fused bn_add")]
    row["fwd+bwd_bandwidth_vs_copy_moved"] = statistics.median(
        (moved["fwd+bwd"] / a) / (copied / c) for a, c in zip(fb, times["copy moved"]))
    return row


def measure_steps(convs=("dense", "ptt", "htt"), rounds=15):
    import copy

    from snnops import models
    from snnops.models.blocks import TemporalBatchNorm
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    steps = {}
    for conv in convs:
        base = models.ms_resnet18(conv, timesteps=4)
        for variant in ("BN + add", "bn_add"):
            model = copy.deepcopy(base)
            for m in model.modules():
                if isinstance(m, TemporalBatchNorm):
                    m.fuse_add = variant == "bn_add"

            def step(model=model):
                model.zero_grad(set_to_none=False)
                F.cross_entropy(model(x), y).backward()
            steps[(conv, variant)] = step
    times = _util.interleave(steps, rounds=rounds, min_time=0)
    rows = []
    for conv in convs:
        row = {"model": conv, "native_s": statistics.median(times[(conv, "BN + add")]),
               "bn_add_s": statistics.median(times[(conv, "bn_add")]),
               "speedup": _util.median_ratio(times, (conv, "BN + add"), (conv, "bn_add"))}
        if conv != "dense" and "dense" in convs:
            for variant, key in (("BN + add", "native"), ("bn_add", "bn_add")):
                row[f"{key}_reduction"] = 1 - 1 / _util.median_ratio(times, ("dense", variant), (conv, variant))
        rows.append(row)
    return rows


def main_steps(args):
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load0 = os.getloadavg()[0]
        rows = measure_steps(rounds=args.rounds)
        load = (load0, os.getloadavg()[0])
        _util.print_table(rows, [("model", "model", "{}"), ("native_s", "BN + add s", "{:.3f}"),
                                 ("bn_add_s", "bn_add s", "{:.3f}"), ("speedup", "x", "{:.3f}"),
                                 ("native_reduction", "vs dense before", "{:.1%}"),
                                 ("bn_add_reduction", "vs dense after", "{:.1%}")],
                          title=f"MS-ResNet18 training steps, {threads} thread(s), {args.rounds} rounds, load "
                                f"{load[0]:.2f} -> {load[1]:.2f} (x > 1: bn_add faster)")
        runs.append({"machine": _util.machine(), "load": load, "rows": rows})
    path = _util.save_json(args.out + "-steps", {"runs": runs})
    print(f"saved {path}")
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="bn_add", help="name of the JSON file in bench/results")
    p.add_argument("--steps", action="store_true", help="whole MS-ResNet18 training steps instead")
    args = p.parse_args(argv)
    if args.steps:
        return main_steps(args)
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        info = _util.machine()
        print(f"snnops bn_add benchmark: threads={info['threads']}, torch {info['torch']}, "
              f"cpu kernels {snnops.cpu_isa()}, rounds={args.rounds}, load {os.getloadavg()[0]:.2f}")
        rows = [measure(s, residual, args.rounds) for s in args.shapes for residual in (True, False)]
        cols = [("shape", "shape", "{}"), ("residual", "+add", "{}"),
                ("fwd_ms", "fwd ms", "{:.2f}"), ("fwd_native_ms", "native", "{:.2f}"), ("fwd_speedup", "x", "{:.2f}"),
                ("fwd+bwd_ms", "f+b ms", "{:.2f}"), ("fwd+bwd_native_ms", "native", "{:.2f}"),
                ("fwd+bwd_speedup", "x", "{:.2f}"), ("fwd+bwd_bandwidth_vs_copy", "BW/copy z", "{:.0%}"),
                ("fwd+bwd_bandwidth_vs_copy_moved", "BW/copy moved", "{:.0%}")]
        _util.print_table(rows, cols, title=f"{threads} thread(s): median of interleaved per-round ratios "
                                            "(x > 1: the fused op is faster)")
        runs.append({"machine": info, "load": os.getloadavg()[0], "rows": rows})
    path = _util.save_json(args.out, {"runs": runs})
    print(f"saved {path}")
    return runs


# ---------------------------------------------------------------- pytest-benchmark
def test_bn_add_fwd_bwd(benchmark):
    import pytest
    pytest.importorskip("pytest_benchmark")
    torch.set_num_threads(2)
    for shape_id in SHAPES:
        benchmark.extra_info[shape_id] = measure(shape_id, True, rounds=5)
    shape = SHAPES["r18-s1"]
    z = _channels_last(torch.randn(shape)).requires_grad_()
    r = _channels_last(torch.randn(shape)).requires_grad_()
    bn, impls = implementations(shape[2])
    benchmark(fwd_bwd(impls["fused bn_add"], z, r, [bn.weight, bn.bias], _channels_last(torch.randn(shape))))


if __name__ == "__main__":
    main()
