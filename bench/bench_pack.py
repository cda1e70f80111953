"""Spike packing: snnops.pack_spikes against its plain-PyTorch reference, and the LIF
forward writing packed spikes (pack_dim) against the forward followed by pack_spikes,
interleaved with a copy of the same float data in one run.

    python bench/bench_pack.py [--rounds N] [--threads N] [--shapes ...]
    pytest bench/bench_pack.py --benchmark-json=bench/results/pack-pytest.json

Prints the median of per-round time ratios (> 1: snnops faster) and pack_spikes'
achieved bandwidth against the copy's (bytes that must move: the float32 spikes read
once, the packed words written once).
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util  # noqa: E402

import snnops  # noqa: E402
from snnops import reference  # noqa: E402

# (shape, packed dim): a LIF output of lif-T4 packed along its channels (NCHW, the
# column packers), the same spikes channels-last (rows), and gemm-conv1x1's spikes.
SHAPES = {
    "lif-T4-channels": ((4, 32, 128, 16, 16), 2),
    "lif-T4-channels-last": ((4, 32, 16, 16, 128), 4),
    "gemm-conv1x1": ((32768, 128), 1),
}
DENSITY = 0.2
SETTLE = 0.02  # untimed calls at the start of each turn, as in bench_lif.py
NEURON = dict(decay=0.25, v_threshold=0.5, v_reset=0.0, surrogate="rect", detach_reset=True)


def measure(shape_id, rounds=15):
    shape, dim = SHAPES[shape_id]
    s = (torch.rand(shape) < DENSITY).float()
    assert torch.equal(snnops.pack_spikes(s, dim), reference.pack_spikes(s, dim))
    steps = {
        "snnops": lambda: snnops.pack_spikes(s, dim),
        "reference": lambda: reference.pack_spikes(s, dim),
        "copy": lambda: torch.empty_like(s).copy_(s),
    }
    times = _util.interleave(steps, rounds=rounds, settle=SETTLE)
    moved, copied = (4 + 1 / 8) * s.numel(), 8 * s.numel()
    return {
        "shape": shape_id, "op": "pack_spikes", "elements": s.numel(),
        "snnops_ms": 1e3 * statistics.median(times["snnops"]),
        "speedup_vs[reference]": _util.median_ratio(times, "reference", "snnops"),
        "bandwidth_vs_copy": statistics.median((moved / a) / (copied / c)
                                               for a, c in zip(times["snnops"], times["copy"])),
    }


def measure_lif(shape_id, rounds=15):
    """LIF forward (no grad) with pack_dim, against the forward then pack_spikes."""
    shape, dim = SHAPES[shape_id]
    x = torch.randn(shape) * 0.6
    fused = snnops.lif(x, pack_dim=dim, **NEURON)[-1]
    assert torch.equal(fused, snnops.pack_spikes(snnops.lif(x, **NEURON)[0], dim))

    def separate():
        return snnops.pack_spikes(snnops.lif(x, **NEURON)[0], dim)
    steps = {
        "lif pack_dim": lambda: snnops.lif(x, pack_dim=dim, **NEURON),
        "lif, then pack_spikes": separate,
        "lif alone": lambda: snnops.lif(x, **NEURON),
    }
    with torch.no_grad():
        times = _util.interleave(steps, rounds=rounds, settle=SETTLE)
    return {
        "shape": shape_id, "op": "lif pack_dim", "elements": x.numel(),
        "snnops_ms": 1e3 * statistics.median(times["lif pack_dim"]),
        "speedup_vs[lif, then pack_spikes]": _util.median_ratio(times, "lif, then pack_spikes", "lif pack_dim"),
        "time_vs[lif alone]": _util.median_ratio(times, "lif pack_dim", "lif alone"),
    }


def main(argv=None):
    args = _util.arg_parser(__doc__, SHAPES).parse_args(argv)
    info = _util.start("pack", args)
    rows = [measure(s, args.rounds) for s in args.shapes]
    _util.print_table(rows, [("shape", "shape", "{}"), ("snnops_ms", "snnops ms", "{:.3f}"),
                             ("speedup_vs[reference]", "x vs reference", "{:.1f}"),
                             ("bandwidth_vs_copy", "BW/copy", "{:.0%}")],
                      title="pack_spikes of float32 spikes (density 0.2), median of interleaved per-round ratios")
    lif_rows = [measure_lif(s, args.rounds) for s in args.shapes if s.startswith("lif-")]
    if lif_rows:
        _util.print_table(lif_rows, [("shape", "shape", "{}"), ("snnops_ms", "ms", "{:.3f}"),
                                     ("speedup_vs[lif, then pack_spikes]", "x vs lif, then pack_spikes", "{:.2f}"),
                                     ("time_vs[lif alone]", "time vs lif alone", "{:.2f}")],
                          title="LIF forward with pack_dim (no grad), median of interleaved per-round ratios")
    path = _util.save_json("pack", {"machine": info, "rows": rows + lif_rows})
    print(f"saved {path}")
    return rows + lif_rows


# ---------------------------------------------------------------- pytest-benchmark
def test_pack_spikes(benchmark):
    import pytest
    pytest.importorskip("pytest_benchmark")
    torch.set_num_threads(2)
    for shape_id in SHAPES:
        benchmark.extra_info[shape_id] = measure(shape_id, rounds=3)
    shape, dim = SHAPES["lif-T4-channels"]
    s = (torch.rand(shape) < DENSITY).float()
    benchmark(lambda: snnops.pack_spikes(s, dim))


if __name__ == "__main__":
    main()
