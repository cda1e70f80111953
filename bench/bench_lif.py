"""LIF forward+backward: snnops against the plain PyTorch loop, the same loop under
torch.compile, and, when installed (scripts/install-references.sh), SpikingJelly's
LIFNode, snnTorch's Leaky and Norse's LIFBoxCell, interleaved in one run.

    python bench/bench_lif.py [--rounds N] [--threads N] [--shapes lif-T4 lif-T16]
    pytest bench/bench_lif.py --benchmark-json=bench/results/lif-pytest.json

Prints, per reference shape and neuron configuration, the median of per-round time
ratios (reference / snnops: > 1 means snnops is faster), snnops' achieved bandwidth
against the machine's copy bandwidth measured in the same rounds, and the bits each
implementation keeps for backward per neuron-step (counted from the autograd graph), and
how many of each reference's forward spikes differ from ours for the same neuron.

Two copies give the bandwidth: BW/copy moved is against a copy of as many bytes as the
op moves (the same amount of data, its tensors made once as the op's outputs come from
the block cache), BW/copy x against a copy of x alone, whose two 16.8 MB tensors a 32 MB
last-level cache largely holds between calls (there it measures the cache: docs/lif.md).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
import weakref

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
    return run, None


def _snntorch(cfg):
    # Leaky with reset to zero is h = beta * v + x, as ours, stepped over time the way
    # snnTorch's tutorials do. Its reset is always detached and it has no rectangular
    # surrogate: ATan (its default) in both configurations.
    try:
        import snntorch
        from snntorch import surrogate as snn_surrogate
    except Exception:
        return None
    assert cfg["v_reset"] == 0.0
    node = snntorch.Leaky(beta=cfg["decay"], threshold=cfg["v_threshold"], reset_mechanism="zero",
                          spike_grad=snn_surrogate.atan(alpha=2.0))

    def run(x):
        mem = node.init_leaky()
        spikes = []
        for t in range(x.shape[0]):
            spk, mem = node(x[t], mem)
            spikes.append(spk)
        return torch.stack(spikes), mem
    return run, None


def _norse(cfg):
    # LIFBoxCell is Norse's LIF without a synaptic current, one Euler step per call:
    # h = v + k * (x - v) with k = dt / tau_mem, SpikingJelly's decay_input form, so it
    # is compared with ours in that form (tau = 1 / k). Its reset is attached; SuperSpike
    # (its default) stands in for the surrogate, with no rectangular one to choose.
    try:
        from norse.torch import LIFBoxCell, LIFBoxParameters
    except Exception:
        return None
    dt, k = 1e-3, 1.0 - cfg["decay"]
    cell = LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.as_tensor(k / dt), v_th=torch.as_tensor(cfg["v_threshold"]),
                                       v_reset=torch.as_tensor(cfg["v_reset"]), method="super"), dt=dt)

    def run(x):
        state, spikes = None, []
        for t in range(x.shape[0]):
            z, state = cell(x[t], state)
            spikes.append(z)
        return torch.stack(spikes), state.v
    twin = {key: val for key, val in cfg.items() if key != "decay"}
    return run, dict(twin, tau=1.0 / k, decay_input=True)


# Other SNN libraries, when installed (scripts/install-references.sh): name -> maker of
# (run, the snnops arguments of the same forward).
LIBRARIES = {"SpikingJelly LIFNode": _spikingjelly, "snnTorch Leaky": _snntorch, "Norse LIFBoxCell": _norse}
SHORT = {"torch loop": "loop", "torch.compile loop": "compile", "SpikingJelly LIFNode": "SpikingJelly",
         "snnTorch Leaky": "snnTorch", "Norse LIFBoxCell": "Norse"}


def implementations(cfg, with_compile=True):
    """{name: fn} for snnops and every reference, and {name: snnops arguments of the same
    forward} for the references whose neuron is written in another form."""
    canon = _canonical(cfg)
    impls = {
        "snnops": lambda x: snnops.lif(x, **cfg),
        "torch loop": lambda x: reference.lif(x, **canon),
    }
    twins = {}
    if with_compile:
        compiled = torch.compile(lambda x: reference.lif(x, **canon))
        impls["torch.compile loop"] = compiled
    for name, make in LIBRARIES.items():
        made = make(cfg)
        if made is not None:
            impls[name], twin = made
            if twin is not None:
                twins[name] = twin
    return impls, twins


def spikes_differing(impls, twins, x):
    """How many of each implementation's forward spikes differ from snnops' for the same
    neuron: the references must compute what is timed against us. A spike may differ where
    h lands on the threshold itself (snnTorch and Norse fire on h > v_th, we on h >= v_th)
    or, for Norse's form, where its rounding differs from ours."""
    xd = x.detach()
    with torch.no_grad():
        ours = impls["snnops"](xd)[0]
        out = {}
        for name, fn in impls.items():
            ref = snnops.lif(xd, **twins[name])[0] if name in twins else ours
            out[name] = int((fn(xd)[0] != ref).sum())
    return out


def fwd_bwd(fn, x, grad):
    def step():
        spikes = fn(x)[0]
        torch.autograd.grad(spikes, x, grad)
    return step


def saved_bits(fn, x):
    """Bits per neuron-step the autograd graph of one forward keeps, each tensor once; x
    counts when it is kept (it is all snnops' recompute backward keeps). Tensors saved by
    graph branches that die within the forward (a detached reset's surrogate) are not."""
    packed = []

    def pack(t):
        packed.append(weakref.ref(t))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)  # spikes and v_last: what a stateful module keeps between calls
    kept = {}
    for ref in packed:
        t = ref()
        if t is not None:
            kept[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
    del out
    return 8 * sum(kept.values()) / x.numel()


def measure(shape_id, cfg_name, rounds=15, with_compile=True, settle=SETTLE):
    cfg = CONFIGS[cfg_name]
    shape = SHAPES[shape_id]
    torch._dynamo.reset()  # each configuration compiles its own loop from scratch
    x = (torch.randn(shape) * 0.6).requires_grad_()
    grad = torch.randn(shape)
    impls, twins = implementations(cfg, with_compile)
    compile_s = None
    if "torch.compile loop" in impls:
        t0 = time.perf_counter()
        fwd_bwd(impls["torch.compile loop"], x, grad)()
        compile_s = time.perf_counter() - t0
    differing = spikes_differing(impls, twins, x)
    steps = {name: fwd_bwd(fn, x, grad) for name, fn in impls.items()}
    # bytes the fused op must move: forward reads x and writes fp32 spikes, backward
    # reads the incoming gradient and writes grad_x (4 B each), plus the saved state
    # written and read back (2 bits here), or x read again when it is what is kept,
    # plus the last membrane the forward returns (4 B per neuron, once per sequence).
    bits = saved_bits(impls["snnops"], x)
    per_neuron = 16 + (2 * bits / 8 if bits < 32 else 4) + 4 / shape[0]
    moved = per_neuron * x.numel()
    # The machine's copy bandwidth, timed in the same rounds (a per-round ratio, as a copy
    # timed before or after drifts with the machine's load), two ways: a copy of x
    # (2 x 16.8 MB, which a 32 MB last-level cache largely keeps between calls, while the
    # op's four 16.8 MB tensors stream from memory), and a copy moving as many bytes as
    # the op (_util.copy_moving).
    xd = x.detach()
    steps["copy"] = lambda: torch.empty_like(xd).copy_(xd)
    steps["copy moved"], copied_moved = _util.copy_moving(moved)
    times = _util.interleave(steps, rounds=rounds, settle=settle)
    ours = statistics.median(times["snnops"])
    copied = 8 * x.numel()
    copy_bw = copied / statistics.median(times["copy"])
    bw_ratio = statistics.median((moved / a) / (copied / c) for a, c in zip(times["snnops"], times["copy"]))
    bw_ratio_moved = statistics.median((moved / a) / (copied_moved / c)
                                       for a, c in zip(times["snnops"], times["copy moved"]))
    row = {
        "shape": shape_id, "config": cfg_name, "neuron_steps": x.numel(),
        "snnops_ms": 1e3 * ours,
        "bandwidth_GBps": moved / ours / 1e9, "copy_GBps": copy_bw / 1e9,
        "bandwidth_vs_copy": bw_ratio,
        "copy_moved_GBps": copied_moved / statistics.median(times["copy moved"]) / 1e9,
        "bandwidth_vs_copy_moved": bw_ratio_moved,
        "compile_s": compile_s,
    }
    for name in impls:
        if name != "snnops":
            row[f"ms[{name}]"] = 1e3 * statistics.median(times[name])
            row[f"speedup_vs[{name}]"] = _util.median_ratio(times, name, "snnops")
        row[f"bits_saved[{name}]"] = bits if name == "snnops" else saved_bits(impls[name], x)
        row[f"spikes_differing[{name}]"] = differing[name]
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
    cols += [(f"speedup_vs[{r}]", f"x {SHORT.get(r, r)}", "{:.2f}") for r in refs]
    cols += [("bandwidth_vs_copy", "BW/copy x", "{:.0%}"), ("bandwidth_vs_copy_moved", "BW/copy moved", "{:.0%}")]
    _util.print_table(rows, cols, title="forward+backward, median of interleaved per-round ratios "
                                        "(x > 1: snnops faster)")
    impls = ["snnops"] + refs
    _util.print_table(rows, [("shape", "shape", "{}"), ("config", "neuron", "{}")] +
                      [(f"bits_saved[{r}]", SHORT.get(r, r), "{:.0f}") for r in impls],
                      title="bits kept for backward per neuron-step")
    differing = {r: max(row[f"spikes_differing[{r}]"] for row in rows) for r in refs}
    print(f"forward spikes differing from snnops' for the same neuron (most in one row, of up to "
          f"{max(row['neuron_steps'] for row in rows)}): " +
          ", ".join(f"{SHORT.get(r, r)} {n}" for r, n in differing.items()))
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
