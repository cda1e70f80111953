"""The TT layers of MS-ResNet18 at their shapes inside the model (CIFAR 3x32x32, T = 4,
batch 16, default ranks): ``snnops.nn.TTConv2d``'s fused kernels against its own
``F.conv2d`` path (four oneDNN convolutions), forward+backward, interleaved, fed the
same channels-last spikes the model feeds them (with the LIF's packed words).

    python bench/bench_models.py [--rounds N] [--threads N] [--mode ptt|stt|htt]
    pytest bench/bench_models.py --benchmark-json=bench/results/models-pytest.json

The whole training step is measured by ``snnops profile``; this shows which layers
bound it. Prints the median of per-round ratios (x > 1: the fused kernels faster).
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util  # noqa: E402
from bench_tt_conv import forced_isa  # noqa: E402

import snnops  # noqa: E402
from snnops.models import DEFAULT_RANKS  # noqa: E402
from snnops.models.blocks import to_channels_last  # noqa: E402
from snnops.nn import TTConv2d  # noqa: E402

STEPS, BATCH = 4, 16


def layers():
    """(id, Cin, Cout, rank, input size, pool): one of each distinct TT layer of
    MS-ResNet18 on 32x32 inputs."""
    r = DEFAULT_RANKS[18]
    return [("s1", 64, 64, r[0], 32, False), ("s2-pool", 64, 128, r[1], 32, True), ("s2", 128, 128, r[1], 16, False),
            ("s3-pool", 128, 256, r[2], 16, True), ("s3", 256, 256, r[2], 8, False),
            ("s4-pool", 256, 512, r[3], 8, True), ("s4", 512, 512, r[3], 4, False)]


def measure(spec, mode="ptt", rounds=9):
    name, cin, cout, rank, size, pool = spec
    layer = TTConv2d(cin, cout, rank, mode, timesteps=STEPS, pool=pool)
    g = torch.Generator().manual_seed(0)
    x = to_channels_last((torch.rand(STEPS, BATCH, cin, size, size, generator=g) < 0.2).float()).requires_grad_()
    packed = snnops.pack_spikes(x.detach(), 2)
    grad = to_channels_last(torch.randn(layer(x, packed=packed).shape, generator=g))
    params = list(layer.parameters())

    def fused():
        layer.backend = "snnops"
        torch.autograd.grad(layer(x, packed=packed), [x, *params], grad)

    def onednn():
        layer.backend = "reference"
        torch.autograd.grad(layer(x), [x, *params], grad)

    impls = {"fused": fused, "oneDNN": onednn}
    if snnops.cpu_isa() == "avx512":  # the fused kernels on their AVX2 path, same run
        impls["fused AVX2"] = forced_isa(fused, "avx2")
    times = _util.interleave(impls, rounds=rounds, min_time=0.0)
    row = {"layer": name, "shape": f"{cin}->{cout} r{rank} {size}x{size}" + (" pool" if pool else ""),
           "fused_ms": 1e3 * statistics.median(times["fused"]),
           "onednn_ms": 1e3 * statistics.median(times["oneDNN"]),
           "speedup": _util.median_ratio(times, "oneDNN", "fused")}
    if "fused AVX2" in times:
        row["avx2_ms"] = 1e3 * statistics.median(times["fused AVX2"])
        row["x vs AVX2 path"] = _util.median_ratio(times, "fused AVX2", "fused")
    return row


def main(argv=None):
    p = _util.arg_parser(__doc__, rounds=9)
    p.add_argument("--mode", default="ptt", choices=("stt", "ptt", "htt"))
    args = p.parse_args(argv)
    info = _util.start(f"MS-ResNet18 TT layers ({args.mode}, T={STEPS}, batch {BATCH})", args)
    rows = [measure(spec, args.mode, args.rounds) for spec in layers()]
    cols = [("layer", "layer", "{}"), ("shape", "shape", "{}"), ("fused_ms", "fused ms", "{:.1f}"),
            ("onednn_ms", "oneDNN ms", "{:.1f}"), ("speedup", "x (oneDNN/fused)", "{:.2f}")]
    if "x vs AVX2 path" in rows[0]:
        cols.append(("x vs AVX2 path", "x (AVX2 path/fused)", "{:.2f}"))
    _util.print_table(rows, cols,
                      title="forward+backward of one layer, median of interleaved per-round ratios")
    path = _util.save_json(f"models-{args.mode}" + ("" if args.threads == 2 else f"-{args.threads}thread"),
                           {"machine": info, "rows": rows})
    print(f"saved {path}")
    return rows


# ---------------------------------------------------------------- pytest-benchmark
def test_models_tt_layers(benchmark):
    import pytest
    pytest.importorskip("pytest_benchmark")
    torch.set_num_threads(2)
    for spec in layers():
        benchmark.extra_info[spec[0]] = measure(spec, rounds=3)
    spec = layers()[0]
    layer = TTConv2d(*spec[1:4], "ptt", timesteps=STEPS, pool=spec[5])
    x = to_channels_last((torch.rand(STEPS, BATCH, spec[1], spec[4], spec[4]) < 0.2).float()).requires_grad_()
    benchmark(lambda: layer(x).sum().backward())


if __name__ == "__main__":
    main()
