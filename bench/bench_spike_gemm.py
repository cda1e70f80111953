"""Spike GEMMs against MKL (``torch.matmul`` on float spikes), interleaved in one run.

    python bench/bench_spike_gemm.py [--rounds N] [--threads N] [--shapes ...] [--densities ...]
    python bench/bench_spike_gemm.py --paths      # set-bit lists, tables and dense forced, for the break-even
    pytest bench/bench_spike_gemm.py --benchmark-json=bench/results/spike_gemm-pytest.json

Per reference shape (gemm-conv1x1, gemm-tt-in, gemm-fc) and spike density, the median of
per-round time ratios MKL / snnops (> 1: snnops faster) for
  fwd float   Y = S W^T from float 0/1 spikes (the op packs them, as training does),
  fwd packed  the same from packed spikes (what a LIF emitting packed spikes gives),
  dW          dW = dY^T S from the packed spikes, against torch.matmul(dY^T, S_float),
plus useful GFLOP/s (2 M K N over the time) and the bytes each saves for backward
(autograd's saved tensors, the weight excluded). Saves JSON and a plot of speedup
against density in bench/results/.
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util  # noqa: E402

import snnops  # noqa: E402

SHAPES = {  # (M, K, N) from ../shared/docs/PERFORMANCE.md
    "gemm-conv1x1": (32768, 128, 128),
    "gemm-tt-in": (32768, 256, 64),
    "gemm-fc": (128, 4096, 4096),
}
DENSITIES = (0.05, 0.10, 0.20, 0.50)


class _Path:
    """Force the C++ op's path (``SNNOPS_SPIKE_GEMM``) for one call; None = automatic."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.old = os.environ.get("SNNOPS_SPIKE_GEMM")
        if self.path is None:
            os.environ.pop("SNNOPS_SPIKE_GEMM", None)
        else:
            os.environ["SNNOPS_SPIKE_GEMM"] = self.path

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("SNNOPS_SPIKE_GEMM", None)
        else:
            os.environ["SNNOPS_SPIKE_GEMM"] = self.old


def _with_path(fn, path):
    def run():
        with _Path(path):
            return fn()
    return run


def saved_bytes(fn, s, weight):
    """Bytes of the tensors autograd saves for one forward, the weight excluded."""
    seen = {}

    def pack(t):
        if t.data_ptr() != weight.data_ptr():  # the weight is a parameter, not an activation
            seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(s.detach().requires_grad_(), weight.detach().requires_grad_())
    return sum(seen.values())


def inputs(shape_id, density, seed=0):
    M, K, N = SHAPES[shape_id]
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(M, K, generator=g) < density).float()
    w = torch.randn(N, K, generator=g) / K ** 0.5
    gy = torch.randn(M, N, generator=g)
    return s, w, gy


def implementations(s, w, gy, paths=False):
    """The timed callables: ours (automatic path; with ``paths`` also each path forced:
    set-bit lists, subset-sum tables, dense) and MKL, for the forward from float spikes,
    from packed spikes, and dW."""
    ops = torch.ops.snnops
    p = snnops.pack_spikes(s)
    fw = {
        "mkl fwd": lambda: torch.matmul(s, w.t()),
        "fwd float": lambda: ops.spike_gemm(s, w, None, -1),
        "fwd packed": lambda: ops.spike_gemm_packed(p, w, None, None, -1),
        "mkl dW": lambda: torch.matmul(gy.t(), s),
        "dW": lambda: ops.spike_gemm_bwd(gy, p, w, False, True, False),
    }
    if paths:
        for name in ("fwd float", "fwd packed", "dW"):
            base = fw[name]
            for path in ("scan", "table", "dense"):
                fw[f"{name} [{path}]"] = _with_path(base, path)
    return {k: _with_path(v, None) if "[" not in k else v for k, v in fw.items()}


def measure(shape_id, density, rounds=15, paths=False, check=True):
    M, K, N = SHAPES[shape_id]
    s, w, gy = inputs(shape_id, density)
    impls = implementations(s, w, gy, paths)
    if check:  # the timed ops compute the right thing
        torch.testing.assert_close(impls["fwd packed"](), impls["mkl fwd"](), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(impls["dW"]()[1], impls["mkl dW"](), rtol=1e-4, atol=1e-3)
    times = _util.interleave(impls, rounds=rounds, warmup=1, min_time=0.05)
    flops = 2.0 * M * K * N
    row = {"shape": shape_id, "M": M, "K": K, "N": N, "density": density,
           "measured_density": float(s.mean())}
    for name in impls:
        row[f"ms[{name}]"] = 1e3 * statistics.median(times[name])
        row[f"GFLOPs[{name}]"] = flops / statistics.median(times[name]) / 1e9
    for name in impls:
        if name.startswith("mkl"):
            continue
        ref = "mkl dW" if name.startswith("dW") else "mkl fwd"
        row[f"x[{name}]"] = _util.median_ratio(times, ref, name)
    row["saved_bytes_snnops"] = saved_bytes(lambda s_, w_: snnops.spike_linear(s_, w_), s, w)
    row["saved_bytes_torch"] = saved_bytes(lambda s_, w_: torch.nn.functional.linear(s_, w_), s, w)
    row["saved_ratio"] = row["saved_bytes_torch"] / row["saved_bytes_snnops"]
    return row


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    shapes = sorted({r["shape"] for r in rows}, key=list(SHAPES).index)
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 3.6), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        rs = sorted((r for r in rows if r["shape"] == shape), key=lambda r: r["density"])
        d = [r["density"] for r in rs]
        for key, label in (("x[fwd float]", "forward (float spikes)"), ("x[fwd packed]", "forward (packed)"),
                           ("x[dW]", "dW")):
            ax.plot(d, [r[key] for r in rs], marker="o", label=label)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_title(shape)
        ax.set_xlabel("spike density")
        ax.set_ylabel("speedup vs MKL (x)")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(d)
        ax.set_xticklabels([f"{v:g}" for v in d])
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    p = _util.arg_parser(__doc__, SHAPES)
    p.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    p.add_argument("--paths", action="store_true", help="also time the bit-scan and dense paths forced")
    p.add_argument("--name", default="spike_gemm", help="name of the JSON / plot in bench/results")
    args = p.parse_args(argv)
    info = _util.start("spike GEMM", args)
    rows = []
    for shape_id in args.shapes:
        for density in args.densities:
            rows.append(measure(shape_id, density, args.rounds, args.paths))
            print(f"  measured {shape_id} d={density}", file=sys.stderr)
    cols = [("shape", "shape", "{}"), ("density", "density", "{:.2f}"),
            ("ms[mkl fwd]", "mkl fwd ms", "{:.2f}"), ("x[fwd float]", "x fwd float", "{:.2f}"),
            ("x[fwd packed]", "x fwd packed", "{:.2f}")]
    if args.paths:
        cols += [(f"x[fwd {kind} [{path}]]", f"x {kind} {path}", "{:.2f}")
                 for kind in ("float", "packed") for path in ("scan", "table", "dense")]
    cols += [("ms[mkl dW]", "mkl dW ms", "{:.2f}"), ("x[dW]", "x dW", "{:.2f}")]
    if args.paths:
        cols += [(f"x[dW [{path}]]", f"x dW {path}", "{:.2f}") for path in ("scan", "table", "dense")]
    cols += [("GFLOPs[fwd packed]", "GFLOP/s fwd", "{:.0f}"), ("saved_ratio", "saved x smaller", "{:.0f}")]
    _util.print_table(rows, cols, title="median of interleaved per-round ratios MKL / snnops (x > 1: snnops faster)")
    info["load_average_end"] = os.getloadavg()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in info['load_average_end'])}")
    path = _util.save_json(args.name, {"machine": info, "rows": rows})
    print(f"saved {path}")
    png = plot(rows, os.path.join(_util.RESULTS_DIR, f"{args.name}.png"))
    if png:
        print(f"plot {png}")
    return rows


# ---------------------------------------------------------------- pytest-benchmark
def test_spike_gemm(benchmark):
    import pytest
    pytest.importorskip("pytest_benchmark")
    torch.set_num_threads(2)
    for shape_id in SHAPES:
        benchmark.extra_info[shape_id] = measure(shape_id, 0.10, rounds=3)
    s, w, _ = inputs("gemm-conv1x1", 0.10)
    p = snnops.pack_spikes(s)
    benchmark(lambda: torch.ops.snnops.spike_gemm_packed(p, w, None, None, -1))


if __name__ == "__main__":
    main()
