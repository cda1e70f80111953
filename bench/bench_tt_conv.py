"""Tensor-train convolutions: the fused ``ptt_conv``, the fused TT block (PTT / STT /
HTT layers) against (a) the same math as separate oneDNN convolutions (``F.conv2d``
calls, what the TT-SNN authors run), (b) the merged dense 3x3 convolution and (c) the
dense 3x3 layer the TT layer replaces; forward and forward+backward, interleaved.

    python bench/bench_tt_conv.py [--rounds N] [--threads N] [--shapes ptt-r32 tt-block ...]
    pytest bench/bench_tt_conv.py --benchmark-json=bench/results/tt_conv-pytest.json

Prints the median of per-round time ratios (x > 1: snnops faster) and useful GFLOP/s
(multiply-adds of the TT form as the paper counts them, 6r^2 for G2+G3, x2), saves
JSON to bench/results/tt_conv.json and a plot of time against rank
(bench/results/tt_conv_rank.png).

Targets: ptt_conv >= 1.3x the two separate convs plus add; the fused TT block at r = 32
>= 2x the four separate convs, forward+backward; an HTT layer at T = 4 (FFHH) >= 1.2x the
same layer in PTT mode. ``htt-T4-r32-packed`` runs both layers on spikes that also come
bit-packed, as snnops' blocks pass them from the LIF before the layer.
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
from snnops.nn import TTConv2d  # noqa: E402

BATCH, HW, CHANNELS = 128, 16, 128  # ../shared/docs/PERFORMANCE.md: ptt-r*, tt-block
SHAPES = ["ptt-r32", "ptt-r64", "tt-block-r16", "tt-block-r32", "tt-block-r64", "htt-T4-r32", "htt-T4-r32-packed"]
DENSITY = 0.2  # spikes entering the TT layer


def _step(fn, inputs, grad, params=()):
    """forward (grad None) or forward+backward of fn(*inputs) w.r.t. inputs and params.
    The incoming gradient has the memory layout of the implementation's own output,
    as the op that follows it in a network would produce it."""
    leaves = [t for t in inputs if t.requires_grad] + list(params)
    if grad is not None:
        with torch.no_grad():
            y = fn(*inputs)
            grad = torch.empty_strided(y.shape, y.stride(), dtype=y.dtype).copy_(grad)

    def run():
        y = fn(*inputs)
        if grad is not None:
            torch.autograd.grad(y, leaves, grad)
    return run


def _cross_kernel(w2, w3):
    cross = w2.new_zeros(w2.shape[0], w2.shape[1], 3, 3)
    cross[:, :, :, 1] += w2[:, :, :, 0] / 2
    cross[:, :, 1, :] += w3[:, :, 0, :] / 2
    return cross


def ptt_case(r, backward):
    o = torch.randn(BATCH, r, HW, HW, requires_grad=backward)
    w2 = torch.randn(r, r, 3, 1, requires_grad=backward)
    w3 = torch.randn(r, r, 1, 3, requires_grad=backward)
    cross = _cross_kernel(w2.detach(), w3.detach()).requires_grad_(backward)
    grad = torch.randn(BATCH, r, HW, HW) if backward else None
    params = (w2, w3)
    impls = {
        "snnops": _step(snnops.ptt_conv, (o, w2, w3), grad, params),
        "separate convs": _step(reference.ptt_conv, (o, w2, w3), grad, params),
        "merged 3x3": _step(lambda x, w: F.conv2d(x, w, padding=1), (o, cross), grad),
    }
    macs = BATCH * HW * HW * 6 * r * r
    return impls, macs, {"separate convs": macs, "merged 3x3": BATCH * HW * HW * 9 * r * r}


def layer_case(r, backward, mode="ptt"):
    torch.manual_seed(0)
    fused = TTConv2d(CHANNELS, CHANNELS, r, mode)
    plain = TTConv2d(CHANNELS, CHANNELS, r, mode, backend="reference")
    plain.load_state_dict(fused.state_dict())
    merged = fused.to_dense()
    dense = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
    x = (torch.rand(BATCH, CHANNELS, HW, HW) < DENSITY).float().requires_grad_(backward)
    grad = torch.randn(BATCH, CHANNELS, HW, HW) if backward else None
    impls = {
        "snnops": _step(fused, (x,), grad, fused.parameters() if backward else ()),
        "separate convs": _step(plain, (x,), grad, plain.parameters() if backward else ()),
        "merged 3x3": _step(merged, (x,), grad, merged.parameters() if backward else ()),
        "dense 3x3": _step(dense, (x,), grad, dense.parameters() if backward else ()),
    }
    macs = fused.macs(tuple(x.shape))
    dense_macs = BATCH * HW * HW * 9 * CHANNELS * CHANNELS
    return impls, macs, {"separate convs": macs, "merged 3x3": dense_macs, "dense 3x3": dense_macs}


def htt_case(r, backward, timesteps=4, packed=False):
    """HTT (FFHH) against the same layer in PTT mode, both fused. ``packed``: both also get
    the spikes bit-packed along the channels, as snnops' blocks pass them from the LIF
    before the layer (its kernel writes them), so the layers skip packing the floats."""
    torch.manual_seed(0)
    htt = TTConv2d(CHANNELS, CHANNELS, r, "htt", schedule="FFHH")
    ptt = TTConv2d(CHANNELS, CHANNELS, r, "ptt")
    ptt.load_state_dict(htt.state_dict())
    plain_htt = TTConv2d(CHANNELS, CHANNELS, r, "htt", schedule="FFHH", backend="reference")
    plain_htt.load_state_dict(htt.state_dict())
    x = (torch.rand(timesteps, BATCH // timesteps, CHANNELS, HW, HW) < DENSITY).float().requires_grad_(backward)
    grad = torch.randn(x.shape) if backward else None
    if packed:
        words = snnops.pack_spikes(x.detach(), dim=2)
        htt_fn, ptt_fn = (lambda s: htt(s, packed=words)), (lambda s: ptt(s, packed=words))
    else:
        htt_fn, ptt_fn = htt, ptt
    impls = {
        "snnops": _step(htt_fn, (x,), grad, htt.parameters() if backward else ()),
        "snnops PTT": _step(ptt_fn, (x,), grad, ptt.parameters() if backward else ()),
        "separate convs": _step(plain_htt, (x,), grad, plain_htt.parameters() if backward else ()),
    }
    return impls, htt.macs(tuple(x.shape)), {"snnops PTT": ptt.macs(tuple(x.shape)),
                                             "separate convs": htt.macs(tuple(x.shape))}


def forced_isa(fn, isa):
    """fn run on a lower kernel family (SNNOPS_CPU_ISA is read on every op call)."""
    def run():
        old = os.environ.get("SNNOPS_CPU_ISA")
        os.environ["SNNOPS_CPU_ISA"] = isa
        try:
            fn()
        finally:
            if old is None:
                del os.environ["SNNOPS_CPU_ISA"]
            else:
                os.environ["SNNOPS_CPU_ISA"] = old
    return run


def make_case(shape_id, backward):
    if shape_id.startswith("ptt-r"):
        impls, macs, ref_macs = ptt_case(int(shape_id[5:]), backward)
    elif shape_id.startswith("tt-block-r"):
        impls, macs, ref_macs = layer_case(int(shape_id[10:]), backward)
    elif shape_id.startswith("stt-block-r"):
        impls, macs, ref_macs = layer_case(int(shape_id[11:]), backward, mode="stt")
    elif shape_id.startswith("htt-T4-r"):
        packed = shape_id.endswith("-packed")
        impls, macs, ref_macs = htt_case(int(shape_id[8:].removesuffix("-packed")), backward, packed=packed)
    else:
        raise ValueError(f"unknown shape {shape_id}")
    if snnops.cpu_isa() == "avx512":  # what the AVX-512 kernels add, same run
        impls["snnops AVX2"] = forced_isa(impls["snnops"], "avx2")
        ref_macs["snnops AVX2"] = macs
    return impls, macs, ref_macs


def measure(shape_id, backward, rounds=10):
    impls, macs, ref_macs = make_case(shape_id, backward)
    times = _util.interleave(impls, rounds=rounds, warmup=1, min_time=0.0)
    ours = statistics.median(times["snnops"])
    flops_factor = 3 if backward else 1  # backward: about twice the forward's multiply-adds
    row = {"shape": shape_id, "pass": "fwd+bwd" if backward else "fwd", "snnops_ms": 1e3 * ours,
           "snnops_GFLOPs": 2 * flops_factor * macs / ours / 1e9}
    for name in impls:
        if name == "snnops":
            continue
        t = statistics.median(times[name])
        row[f"ms[{name}]"] = 1e3 * t
        row[f"x vs {name}"] = _util.median_ratio(times, name, "snnops")
        row[f"GFLOPs[{name}]"] = 2 * flops_factor * ref_macs[name] / t / 1e9
    return row


def plot(rows, path, threads=2):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # matplotlib is optional for the table and JSON
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        sel = sorted((r for r in rows if r["shape"].startswith("tt-block-r") and r["pass"] == mode),
                     key=lambda r: int(r["shape"][10:]))
        if not sel:
            continue
        ranks = [int(r["shape"][10:]) for r in sel]
        ax.plot(ranks, [r["snnops_ms"] for r in sel], "o-", label="snnops fused TT block")
        for name in ("snnops AVX2", "separate convs", "merged 3x3", "dense 3x3"):
            if all(f"ms[{name}]" in r for r in sel):
                ax.plot(ranks, [r[f"ms[{name}]"] for r in sel], "s--", label=name if name != "snnops AVX2"
                        else "snnops fused, AVX2 path")
        ax.set_xlabel("rank r")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"TT layer 128->128 on [128,128,16,16]: {mode}, threads={threads}", fontsize=9)
        ax.set_xticks(ranks)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv=None):
    p = _util.arg_parser(__doc__, SHAPES, rounds=10)
    p.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    args = p.parse_args(argv)
    info = _util.start("TT conv", args)
    rows = []
    for shape_id in args.shapes:
        for mode in args.passes:
            rows.append(measure(shape_id, mode == "fwd+bwd", args.rounds))
            print(f"  measured {shape_id} {mode}", file=sys.stderr)
    refs = []
    for r in rows:
        refs += [k[5:] for k in r if k.startswith("x vs ") and k[5:] not in refs]
    cols = [("shape", "shape", "{}"), ("pass", "pass", "{}"), ("snnops_ms", "snnops ms", "{:.1f}"),
            ("snnops_GFLOPs", "GFLOP/s", "{:.0f}")]
    cols += [(f"x vs {r}", f"x vs {r}", "{:.2f}") for r in refs]
    cols += [(f"GFLOPs[{r}]", f"GF/s {r}", "{:.0f}") for r in refs]
    _util.print_table(rows, cols, title="median of interleaved per-round ratios (x > 1: snnops faster); "
                                        "GFLOP/s from the TT multiply-adds (dense ones for 3x3 convs)")
    path = _util.save_json("tt_conv" if args.threads == 2 else f"tt_conv-{args.threads}thread",
                           {"machine": info, "density": DENSITY, "rows": rows})
    print(f"saved {path}")
    png = plot(rows, os.path.join(_util.RESULTS_DIR, "tt_conv_rank.png" if args.threads == 2
                                  else f"tt_conv_rank-{args.threads}thread.png"), args.threads)
    if png:
        print(f"saved {png}")
    return rows


# ---------------------------------------------------------------- pytest-benchmark
def test_ptt_conv_fwd(benchmark):
    torch.set_num_threads(2)
    benchmark.extra_info.update(measure("ptt-r32", False, rounds=3))
    impls, _, _ = ptt_case(32, False)
    benchmark(impls["snnops"])


def test_tt_block_fwd_bwd(benchmark):
    torch.set_num_threads(2)
    benchmark.extra_info.update(measure("tt-block-r32", True, rounds=3))
    impls, _, _ = layer_case(32, True)
    benchmark(impls["snnops"])


def test_htt_fwd_bwd(benchmark):
    torch.set_num_threads(2)
    benchmark.extra_info.update(measure("htt-T4-r32", True, rounds=3))
    impls, _, _ = htt_case(32, True)
    benchmark(impls["snnops"])


if __name__ == "__main__":
    main()
