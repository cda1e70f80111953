"""LIF forward+backward: snnops against the plain PyTorch loop, the same loop under
torch.compile, and SpikingJelly's LIFNode (when installed), interleaved in one run.

    python bench/bench_lif.py [--rounds N] [--threads N] [--shapes lif-T4 lif-T16]
    pytest bench/bench_lif.py --benchmark-json=bench/results/lif-pytest.json

Prints, per reference shape and neuron configuration, the median of per-round time
ratios (reference / snnops: > 1 means snnops is faster), snnops' achieved bandwidth
against the machine's copy bandwidth measured in the same run, and the bits each
implementation keeps for backward per neuron-step (counted from the autograd graph).
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util  # noqa: E402

import snnops  # noqa: E402
from snnops import reference  # noqa: E402
from snnops.ops.lif import resolve_params  # noqa: E402

# Untimed calls at the start of each turn (seconds): after a switch from another
# implementation the first passes over these 17 MB tensors run up to 1.7x slower until
# the data is cache-resident again (a copy needs ~3 passes, the op ~5); see docs/lif.md.
SETTLE = 0.02
SHAPES = {"lif-T4": (4, 32, 128, 16, 16), "lif-T16": (16, 32, 128, 8, 8)}

# The papers' neuron (TT-SNN / MS-ResNet: rectangular, detached reset) and a smooth
# surrogate with an attached reset, where the backward needs the membrane.
CONFIGS = {
    "tt-snn": dict(decay=0.25, v_threshold=0.5, v_reset=0.0, surrogate="rect", detach_reset=True),
    "atan": dict(decay=0.25, v_threshold=0.5, v_reset=0.0, surrogate="atan", detach_reset=False),
}


def _canonical(cfg):
    decay, scale, vth, vr, sg, detach = resolve_params(tau=None, decay_input=True, **cfg)
    return dict(decay=decay, input_scale=scale, v_threshold=vth, v_reset=vr, surrogate=sg, detach_reset=detach)


def _spikingjelly(cfg):
    try:
        from spikingjelly.activation_based import neuron, surrogate as sj_surrogate
    except Exception:
        return None
    sg = {"rect": None, "atan": sj_surrogate.ATan()}[cfg["surrogate"]]
    if sg is None:  # SpikingJelly has no rectangular surrogate; use its ATan (same cost class)
        sg = sj_surrogate.ATan()
    # decay form lam = 1 - 1/tau with decay_input off is exactly h = lam * v + x
    node = neuron.LIFNode(tau=1.0 / (1.0 - cfg["decay"]), decay_input=False, v_threshold=cfg["v_threshold"],
                          v_reset=cfg["v_reset"], surrogate_function=sg, detach_reset=cfg["detach_reset"],
                          step_mode="m")

    def run(x):
        node.reset()
        return node(x), None
    return run


def implementations(cfg, with_compile=True):
    canon = _canonical(cfg)
    impls = {
        "snnops": lambda x: snnops.lif(x, **cfg),
        "torch loop": lambda x: reference.lif(x, **canon),
    }
    if with_compile:
        compiled = torch.compile(lambda x: reference.lif(x, **canon))
        impls["torch.compile loop"] = compiled
    sj = _spikingjelly(cfg)
    if sj is not None:
        impls["SpikingJelly LIFNode"] = sj
    return impls


def fwd_bwd(fn, x, grad):
    def step():
        spikes = fn(x)[0]
        torch.autograd.grad(spikes, x, grad)
    return step


def saved_bits(fn, x):
    """Bits per neuron-step kept by the autograd graph of one forward (x itself excluded)."""
    seen = {}

    def pack(t):
        if t.data_ptr() != x.data_ptr() or fn is not None:
            seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)[0]
    del out
    return 8 * sum(seen.values()) / x.numel()


def measure(shape_id, cfg_name, rounds=15, with_compile=True, settle=SETTLE):
    cfg = CONFIGS[cfg_name]
    shape = SHAPES[shape_id]
    torch._dynamo.reset()  # each configuration compiles its own loop from scratch
    x = (torch.randn(shape) * 0.6).requires_grad_()
    grad = torch.randn(shape)
    impls = implementations(cfg, with_compile)
    compile_s = None
    if "torch.compile loop" in impls:
        t0 = time.perf_counter()
        fwd_bwd(impls["torch.compile loop"], x, grad)()
        compile_s = time.perf_counter() - t0
    steps = {name: fwd_bwd(fn, x, grad) for name, fn in impls.items()}
    # The copy runs in the same rounds, so the bandwidth ratio is a per-round ratio too
    # (a copy timed before or after drifts with the machine's load).
    xd = x.detach()
    steps["copy"] = lambda: torch.empty_like(xd).copy_(xd)
    times = _util.interleave(steps, rounds=rounds, settle=settle)
    ours = statistics.median(times["snnops"])
    # bytes the fused op must move: forward reads x and writes fp32 spikes, backward
    # reads the incoming gradient and writes grad_x (4 B each), plus the saved state
    # written and read back (2 bits here), or x read again when it is what is kept,
    # plus the last membrane the forward returns (4 B per neuron, once per sequence).
    bits = saved_bits(impls["snnops"], x)
    per_neuron = 16 + (2 * bits / 8 if bits < 32 else 4) + 4 / shape[0]
    moved = per_neuron * x.numel()
    copied = 8 * x.numel()
    copy_bw = copied / statistics.median(times["copy"])
    bw_ratio = statistics.median((moved / a) / (copied / c) for a, c in zip(times["snnops"], times["copy"]))
    row = {
        "shape": shape_id, "config": cfg_name, "neuron_steps": x.numel(),
        "snnops_ms": 1e3 * ours,
        "bandwidth_GBps": moved / ours / 1e9, "copy_GBps": copy_bw / 1e9,
        "bandwidth_vs_copy": bw_ratio,
        "bits_saved_snnops": bits,
        "bits_saved_torch_loop": saved_bits(impls["torch loop"], x),
        "compile_s": compile_s,
    }
    for name in impls:
        if name != "snnops":
            row[f"ms[{name}]"] = 1e3 * statistics.median(times[name])
            row[f"speedup_vs[{name}]"] = _util.median_ratio(times, name, "snnops")
    return row


def main(argv=None):
    p = _util.arg_parser(__doc__, SHAPES)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference")
    p.add_argument("--settle", type=float, default=SETTLE,
                   help="seconds of untimed calls at the start of each implementation's turn")
    args = p.parse_args(argv)
    info = _util.start("LIF", args, f"settle={args.settle} s")
    rows = []
    for shape_id in args.shapes:
        for cfg_name in args.configs:
            row = measure(shape_id, cfg_name, args.rounds, not args.no_compile, args.settle)
            rows.append(row)
            print(f"  measured {shape_id} {cfg_name}", file=sys.stderr)
    refs = [k[len("speedup_vs["):-1] for k in rows[0] if k.startswith("speedup_vs[")]
    cols = [("shape", "shape", "{}"), ("config", "neuron", "{}"), ("snnops_ms", "snnops ms", "{:.2f}")]
    cols += [(f"speedup_vs[{r}]", f"x vs {r}", "{:.2f}") for r in refs]
    cols += [("bandwidth_vs_copy", "BW/copy", "{:.0%}"), ("bits_saved_snnops", "bits saved", "{:.0f}"),
             ("bits_saved_torch_loop", "bits loop", "{:.0f}")]
    _util.print_table(rows, cols, title="forward+backward, median of interleaved per-round ratios "
                                        "(x > 1: snnops faster)")
    if rows[0].get("compile_s") is not None:
        print("torch.compile first-call wait: " + ", ".join(f"{r['shape']}/{r['config']} {r['compile_s']:.0f} s"
                                                          for r in rows))
    path = _util.save_json("lif", {"machine": info, "rows": rows})
    print(f"saved {path}")
    return rows


# ---------------------------------------------------------------- pytest-benchmark
def test_lif_fwd_bwd(benchmark):
    import pytest
    pytest.importorskip("pytest_benchmark")
    torch.set_num_threads(2)
    for shape_id in SHAPES:
        row = measure(shape_id, "tt-snn", rounds=5, with_compile=False)
        benchmark.extra_info[shape_id] = row
    x = (torch.randn(SHAPES["lif-T4"]) * 0.6).requires_grad_()
    benchmark(fwd_bwd(lambda t: snnops.lif(t, **CONFIGS["tt-snn"]), x, torch.randn(SHAPES["lif-T4"])))


if __name__ == "__main__":
    main()
