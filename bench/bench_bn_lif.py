"""tdBN + LIF forward+backward: the fused snnops op against BatchNorm then the snnops
LIF (what the models ran before), and against the plain-PyTorch pair (BatchNorm then
the Python LIF loop), interleaved in one run, on channels-last MS-ResNet18 shapes.

    python bench/bench_bn_lif.py [--rounds N] [--threads N]
    pytest bench/bench_bn_lif.py --benchmark-json=bench/results/bn_lif-pytest.json

Prints the median of per-round time ratios (> 1: the fused op is faster) and the
fused op's achieved bandwidth against the machine's copy bandwidth in the same run: of a
copy of z, and (per round) of a copy moving as many bytes as the op.
"""
from __future__ import annotations

import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util  # noqa: E402

import snnops  # noqa: E402
from snnops import reference  # noqa: E402
from snnops.ops.bn_lif import bn_lif  # noqa: E402

# MS-ResNet18 on CIFAR (T = 4, batch 16): the BN+LIF of stages 1 and 3.
SHAPES = {"bnlif-r18-s1": (4, 16, 64, 32, 32), "bnlif-r18-s3": (4, 16, 256, 8, 8)}
NEURON = dict(decay=0.25, v_threshold=0.5, v_reset=0.0)


def _channels_last(x):
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


def implementations(c):
    bn = torch.nn.BatchNorm2d(c)

    def fused(z):
        return bn_lif(z, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, **NEURON)[0]

    def separate(z):  # what the models ran before: PyTorch BN (channels-last) + fused LIF
        y = bn(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        s = snnops.lif(y.permute(0, 1, 3, 4, 2), surrogate="rect", detach_reset=True, **NEURON)[0]
        return s.permute(0, 1, 4, 2, 3)

    def plain(z):  # plain PyTorch: BN + the Python loop
        y = bn(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        return reference.lif(y, input_scale=1.0, surrogate="rect", detach_reset=True, **NEURON)[0]

    return bn, {"fused bn_lif": fused, "BN + snnops LIF": separate, "BN + LIF loop": plain}


def fwd_bwd(fn, z, params, grad):
    def step():
        torch.autograd.grad(fn(z), [z, *params], grad)
    return step


def measure(shape_id, rounds=15):
    shape = SHAPES[shape_id]
    z = _channels_last(torch.randn(shape)).requires_grad_()
    grad = _channels_last(torch.randn(shape))
    bn, impls = implementations(shape[2])
    steps = {name: fwd_bwd(fn, z, [bn.weight, bn.bias], grad) for name, fn in impls.items()}
    # bytes the fused op must move: forward reads z twice and writes fp32 spikes; backward
    # reads the spike gradient and z, writes dy, then reads dy and z and writes dz (4 B each);
    # 2 bits per neuron-step written and read back twice.
    moved = (3 * 4 + 6 * 4 + 3 * 2 / 8) * z.numel()
    # against a copy of as many bytes, in the same rounds (_util.copy_moving)
    steps["copy moved"], copied = _util.copy_moving(moved)
    times = _util.interleave(steps, rounds=rounds)
    ours = statistics.median(times["fused bn_lif"])
    copy_bw = _util.copy_bandwidth(z.numel() * 4)
    row = {"shape": shape_id, "elements": z.numel(), "fused_ms": 1e3 * ours,
           "bandwidth_vs_copy": moved / ours / copy_bw, "copy_GBps": copy_bw / 1e9,
           "bandwidth_vs_copy_moved": statistics.median((moved / a) / (copied / c) for a, c in
                                                        zip(times["fused bn_lif"], times["copy moved"]))}
    for name in impls:
        if name != "fused bn_lif":
            row[f"ms[{name}]"] = 1e3 * statistics.median(times[name])
            row[f"speedup_vs[{name}]"] = _util.median_ratio(times, name, "fused bn_lif")
    return row


def main(argv=None):
    args = _util.arg_parser(__doc__, SHAPES).parse_args(argv)
    info = _util.start("bn_lif", args)
    rows = [measure(s, args.rounds) for s in args.shapes]
    refs = [k[len("speedup_vs["):-1] for k in rows[0] if k.startswith("speedup_vs[")]
    cols = [("shape", "shape", "{}"), ("fused_ms", "fused ms", "{:.2f}")]
    cols += [(f"speedup_vs[{r}]", f"x vs {r}", "{:.2f}") for r in refs]
    cols += [("bandwidth_vs_copy", "BW/copy z", "{:.0%}"), ("bandwidth_vs_copy_moved", "BW/copy moved", "{:.0%}")]
    _util.print_table(rows, cols, title="forward+backward, median of interleaved per-round ratios "
                                        "(x > 1: the fused op is faster)")
    path = _util.save_json("bn_lif", {"machine": info, "rows": rows})
    print(f"saved {path}")
    return rows


# ---------------------------------------------------------------- pytest-benchmark
def test_bn_lif_fwd_bwd(benchmark):
    import pytest
    pytest.importorskip("pytest_benchmark")
    torch.set_num_threads(2)
    for shape_id in SHAPES:
        benchmark.extra_info[shape_id] = measure(shape_id, rounds=5)
    shape = SHAPES["bnlif-r18-s1"]
    z = _channels_last(torch.randn(shape)).requires_grad_()
    bn, impls = implementations(shape[2])
    benchmark(fwd_bwd(impls["fused bn_lif"], z, [bn.weight, bn.bias], _channels_last(torch.randn(shape))))


if __name__ == "__main__":
    main()
