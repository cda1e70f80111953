"""LitE-SNN: quantizer, mask, CompConv2d, costs, search step, decode, deployment, CLI."""
import math

import pytest
import torch
import torch.nn.functional as F

from snnops.lite import cost, quant
from snnops.lite.compconv import CompConv2d
from snnops.lite.decode import FixedNetwork, Genotype, decode, decode_cell, edge_index
from snnops.lite.search import PRESETS, JointOptimizer, get_preset
from snnops.lite.search_space import PRIMITIVES, SearchNetwork, num_edges

BITS = (1, 2, 3, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- quantizer

@pytest.mark.parametrize("bits", BITS)
def test_quantizer_levels_and_clamping(bits):
    w = torch.randn(4000, dtype=torch.float64) * 3
    step = quant.gaussian_step(w, bits)
    assert float(step) == pytest.approx(quant.GAUSSIAN_STEPS[bits] * float(w.std()), rel=1e-12)
    q = quant.quantize(w, bits)
    half = 2 ** (bits - 1)
    levels = {(c - 0.5) * float(step) for c in range(1 - half, half + 1)}
    got = set(q.tolist())
    assert got == levels  # wide weights reach every one of the 2^b levels and nothing else
    limit = (half - 0.5) * float(step)
    assert float(q.abs().max()) == pytest.approx(limit, rel=1e-15)
    # Each weight inside the range goes to the nearest level (mid-rise: never 0).
    inside = w.abs() < limit
    assert torch.all((q[inside] - w[inside]).abs() <= float(step) / 2 + 1e-12)
    assert torch.all(q[w >= limit] == limit) and torch.all(q[w <= -limit] == -limit)


def test_quantizer_hand_values():
    step = torch.tensor(1.0)
    w = torch.tensor([0.3, -0.3, 0.99, 1.2, -1.2, 6.2, -6.2, 20.0, -20.0])
    assert quant.quantize(w, 1, step).tolist() == [0.5, -0.5, 0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5]
    assert quant.quantize(w, 2, step).tolist() == [0.5, -0.5, 0.5, 1.5, -1.5, 1.5, -1.5, 1.5, -1.5]
    assert quant.quantize(w, 4, step).tolist() == [0.5, -0.5, 0.5, 1.5, -1.5, 6.5, -6.5, 7.5, -7.5]


@pytest.mark.parametrize("bits", BITS)
def test_quantize_codes_match_quantizer_and_ste_is_identity(bits):
    w = torch.randn(64, 9)
    codes, step = quant.quantize_codes(w, bits)
    half = 2 ** (bits - 1)
    assert codes.dtype == torch.int8 and int(codes.min()) >= 1 - half and int(codes.max()) <= half
    assert torch.equal(quant.dequantize_codes(codes, step), quant.quantize(w, bits))
    wg = w.clone().requires_grad_(True)
    g = torch.randn_like(w)
    quant.quantize_ste(wg, bits).backward(g)
    assert torch.equal(wg.grad, g)


def test_constant_weight_has_finite_quantization():
    q = quant.quantize(torch.full((3, 3), 0.25), 2)
    assert torch.isfinite(q).all()


# ----------------------------------------------------------------------------- mask

@pytest.mark.parametrize("keep", [1.0, 0.5, 0.2, 0.1, 0.013, 1e-6])
def test_mask_keeps_exactly_the_top_fraction(keep):
    scores = torch.randn(16, 8, 3, 3)
    m = quant.topk_mask(scores, keep)
    n = scores.numel()
    expect = max(1, int(math.floor(keep * n + 0.5)))
    assert int(m.sum()) == expect == quant.num_kept(n, keep)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    kept, dropped = scores.abs()[m.bool()], scores.abs()[~m.bool()]
    if dropped.numel():
        assert float(kept.min()) >= float(dropped.max())


def test_mask_ste_gradient_goes_to_abs_score():
    scores = torch.randn(5, 7).requires_grad_(True)
    g = torch.randn(5, 7)
    quant.topk_mask_ste(scores, 0.3).backward(g)
    assert torch.equal(scores.grad, g * scores.detach().sign())


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, float("nan")])
def test_bad_keep_ratio(bad):
    with pytest.raises(ValueError, match="keep_ratio"):
        quant.topk_mask(torch.randn(4), bad)
    with pytest.raises(ValueError, match="keep_ratio"):
        CompConv2d(2, 2, 3, keep_ratio=bad)


@pytest.mark.parametrize("bad", [(), [], (5,), (0,), (2, 2), (1.5,)])
def test_bad_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        CompConv2d(2, 2, 3, bits=bad)
    with pytest.raises(ValueError, match="bits"):
        SearchNetwork(channels=2, layers=1, steps=1, bits=bad, t_max=2)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_t_max(bad):
    with pytest.raises(ValueError, match="t_max"):
        SearchNetwork(channels=2, layers=1, steps=1, t_max=bad)


# ----------------------------------------------------------------------------- CompConv2d

def _spikes(*shape, p=0.3):
    return (torch.rand(*shape) < p).float()


def test_compconv_effective_weight_and_forward():
    conv = CompConv2d(3, 5, 3, padding=1, bits=(1, 2, 4), keep_ratio=0.3)
    with torch.no_grad():
        conv.beta.copy_(torch.tensor([0.3, -0.2, 1.1]))
    probs = torch.softmax(conv.beta.detach(), 0)
    w = conv.weight.detach()
    mixed = sum(probs[j] * quant.quantize(w, b) for j, b in enumerate((1, 2, 4)))
    expect = quant.topk_mask(conv.scores, 0.3) * mixed
    assert torch.allclose(conv.effective_weight(), expect, rtol=0, atol=1e-7)
    x = _spikes(2, 3, 6, 7)
    assert torch.allclose(conv(x), F.conv2d(x, expect, padding=1), atol=1e-6)
    # time-major input runs as one flattened batch and records per-step rates
    xs = _spikes(4, 2, 3, 6, 7)
    ys = conv(xs)
    assert ys.shape == (4, 2, 5, 6, 7)
    assert torch.allclose(ys, conv(xs.flatten(0, 1)).unflatten(0, (4, 2)), atol=0)
    conv(xs)
    assert torch.allclose(conv.input_rate, xs.mean(dim=(1, 2, 3, 4)))
    assert conv.output_hw == (6, 7)
    # non-contiguous input
    assert torch.allclose(conv(xs.transpose(3, 4).contiguous().transpose(3, 4)), ys)


def test_compconv_gradients_reach_weight_scores_beta():
    conv = CompConv2d(3, 4, 3, padding=1, keep_ratio=0.5)
    conv(_spikes(2, 3, 5, 5)).square().sum().backward()
    for p in (conv.weight, conv.scores, conv.beta):
        assert p.grad is not None and p.grad.abs().sum() > 0


class _CostProbe(torch.nn.Module):
    """The compression cost of one conv as a function of psi (beta via functional_call)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, psi):
        return cost.compression_cost([(self.conv, 1.0)], torch.softmax(psi, 0), 1e-3, 1e-2)[0]


def test_gradcheck_beta_and_psi_paths_float64():
    # The quantizer and mask are straight-through (not differentiable by definition);
    # the softmax(beta) mixture, the costs and the timestep-weighted CE are, exactly.
    conv = CompConv2d(2, 3, 3, padding=1, keep_ratio=0.5).double()
    xs = _spikes(2, 2, 2, 4, 4).double()  # T = 2
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda b: torch.func.functional_call(conv, {"beta": b}, (xs,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (beta,))
    conv(xs)
    probe = _CostProbe(conv)
    psi = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda b, p: torch.func.functional_call(probe, {"conv.beta": b}, (p,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (beta, psi))
    logits = torch.randn(4, 3, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (3,))
    psi4 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: cost.timestep_ce(logits, y, torch.softmax(p, 0)), (psi4,))


def test_compconv_single_bits_is_masked_quantized_weight():
    conv = CompConv2d(4, 4, 1, bits=(2,), keep_ratio=0.25)
    assert torch.equal(conv.effective_weight().detach(), conv.quantized_weight())
    assert conv.expected_bits().item() == 2.0 and conv.chosen_bits() == 2


def test_compconv_bad_input():
    conv = CompConv2d(3, 4, 3)
    with pytest.raises(ValueError, match="channels"):
        conv(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="expected input"):
        conv(torch.zeros(3, 4, 4))
    with pytest.raises(RuntimeError, match="forward"):
        CompConv2d(3, 4, 3).synops()


def test_compconv_empty_batch():
    conv = CompConv2d(3, 4, 3, padding=1)
    assert conv(torch.zeros(0, 3, 5, 5)).shape == (0, 4, 5, 5)
    assert conv(torch.zeros(2, 0, 3, 5, 5)).shape == (2, 0, 4, 5, 5)
    assert torch.equal(conv.input_rate, torch.zeros(2))


def test_nn_exposes_compconv():
    import snnops.nn
    assert snnops.nn.CompConv2d is CompConv2d


# ----------------------------------------------------------------------------- costs

def test_costs_against_hand_computed_values():
    # Two layers: 2->3 3x3 stride 1 on 4x4, 3->2 1x1 stride 2 (output 2x2).
    a = CompConv2d(2, 3, 3, padding=1, bits=(1, 2, 4), keep_ratio=0.5)
    b = CompConv2d(3, 2, 1, stride=2, bits=(1, 2, 4), keep_ratio=0.2)
    with torch.no_grad():
        a.beta.copy_(torch.tensor([0.0, math.log(2.0), math.log(5.0)]))  # softmax = [1, 2, 5] / 8
        b.beta.copy_(torch.tensor([0.0, 0.0, 0.0]))
    xa = torch.zeros(3, 1, 2, 4, 4)           # T = 3, one sample
    xa[0, 0, :, :2, :] = 1                    # rate 0.5 at t = 0
    xa[1, 0, 0, 0, 0] = 1                     # rate 1/32 at t = 1 ; 0 at t = 2
    xb = torch.zeros(3, 1, 3, 4, 4)
    xb[:, 0, 0] = 1                           # rate 1/3 at every step
    a(xa)
    b(xb)
    ka, kb = 27, 1                            # round(0.5 * 54) = 27, round(0.2 * 6) = 1
    bbar_a = (1 * 1 + 2 * 2 + 4 * 5) / 8      # 3.125
    bbar_b = (1 + 2 + 4) / 3
    p = torch.tensor(0.25)                    # b is a searched edge's conv with weight 0.25
    terms = [(a, 1.0), (b, p)]
    size = ka * bbar_a + 0.25 * kb * bbar_b
    assert cost.model_size_bits(terms).item() == pytest.approx(size, rel=1e-6)
    syn_a = [ka * 16 * 0.5, ka * 16 / 32, 0.0]
    syn_b = [kb * 4 / 3] * 3
    syn = [sa + 0.25 * sb for sa, sb in zip(syn_a, syn_b)]
    bsyn = [bbar_a * sa + 0.25 * bbar_b * sb for sa, sb in zip(syn_a, syn_b)]
    assert cost.synops(terms).tolist() == pytest.approx(syn, rel=1e-6)
    assert cost.bit_synops(terms).tolist() == pytest.approx(bsyn, rel=1e-6)
    w = torch.tensor([0.2, 0.3, 0.5])
    lam1, lam2 = 1e-3, 1e-4
    comp = 0.2 * bsyn[0] + 0.3 * (bsyn[0] + bsyn[1]) + 0.5 * sum(bsyn)
    total, s, c = cost.compression_cost(terms, w, lam1, lam2)
    assert s.item() == pytest.approx(size, rel=1e-6) and c.item() == pytest.approx(comp, rel=1e-6)
    assert total.item() == pytest.approx(lam1 * size + lam2 * comp, rel=1e-6)


def test_timestep_ce_on_cumulative_outputs():
    T, B, K = 4, 5, 3
    logits = torch.randn(T, B, K)
    y = torch.randint(0, K, (B,))
    psi = torch.randn(T)
    w = cost.timestep_weights(psi)
    expect = sum(w[t] * F.cross_entropy(logits[:t + 1].mean(0), y) for t in range(T)) / w.sum()
    assert cost.timestep_ce(logits, y, w).item() == pytest.approx(expect.item(), rel=1e-6)
    u = cost.timestep_weights(psi, uniform=True)
    assert torch.equal(u, torch.full((T,), 0.25)) and not u.requires_grad


def test_cost_gradients_reach_beta_alpha_psi_only():
    net = SearchNetwork(channels=2, layers=2, steps=2, t_max=3)
    net(torch.randn(3, 1, 6, 6))
    w = cost.timestep_weights(net.psi)
    total, _, _ = cost.compression_cost(net.cost_terms(), w, 1e-3, 1e-3)
    total.backward()
    groups = net.parameter_groups()
    for name in ("beta", "alpha", "psi"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name]), name
    for name in ("weights", "scores"):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in groups[name]), name


# ----------------------------------------------------------------------------- search

def _tiny_net(**kw):
    cfg = dict(channels=2, num_classes=3, layers=3, steps=2, t_max=3, keep_ratio=0.5)
    cfg.update(kw)
    return SearchNetwork(**cfg)


def test_search_network_shapes_and_groups():
    net = _tiny_net(auxiliary=True)
    logits, aux = net(torch.randn(4, 1, 8, 8))
    assert logits.shape == (3, 4, 3) and aux.shape == (3, 4, 3)
    groups = net.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    n_conv = len(net.compconvs())
    assert len(groups["beta"]) == len(groups["scores"]) == n_conv
    # two preprocess convs + one conv per edge in every cell
    assert n_conv == 3 * (2 + num_edges(2))


def _snapshot(net):
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def _changed(before, net):
    return {n for n, p in net.named_parameters() if not torch.equal(before[n], p.detach())}


def _names(net, group):
    ids = {id(p) for p in net.parameter_groups()[group]}
    return {n for n, p in net.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("warmup", [False, True])
def test_search_step_updates_only_its_groups(warmup):
    torch.manual_seed(1)
    net = _tiny_net()
    opt = JointOptimizer(net, lam1=1e-4, lam2=1e-6, arch_lr=1e-2, total_steps=4)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    weights = _names(net, "weights")
    arch = set().union(*(_names(net, g) for g in ("beta", "scores", "psi", "alpha")))
    before = _snapshot(net)
    opt.weight_step(x, y, warmup)
    changed = _changed(before, net)
    assert changed and changed <= weights
    assert len(changed) > 0.8 * len(weights)
    before = _snapshot(net)
    opt.arch_step(x, y, warmup)
    changed = _changed(before, net)
    assert changed <= arch
    if warmup:
        assert "psi" not in changed
    else:
        assert "psi" in changed
    for g in ("beta", "scores", "alpha"):
        assert changed & _names(net, g), g
    assert all(p.grad is None for p in net.parameters())


def test_cost_pressure_lowers_the_bit_widths():
    torch.manual_seed(2)
    net = _tiny_net()
    opt = JointOptimizer(net, lam1=10.0, lam2=0.0, arch_lr=0.05, total_steps=6)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    before = torch.stack([m.expected_bits() for _, m in net.compconvs()]).detach()
    for _ in range(5):
        opt.arch_step(x, y)
    after = torch.stack([m.expected_bits() for _, m in net.compconvs()]).detach()
    assert torch.all(after < before - 0.1)


def test_joint_step_runs_both_steps():
    net = _tiny_net()
    opt = JointOptimizer(net, lam1=1e-9, lam2=1e-13, total_steps=2)
    parts = opt.step(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,)))
    assert {"loss", "arch_loss", "ce", "model_size_bits", "bit_synops"} <= set(parts)


def test_presets_are_the_papers():
    assert (PRESETS["large"].lam1, PRESETS["large"].lam2, PRESETS["large"].keep_ratio) == (0.0, 0.0, 0.5)
    assert (PRESETS["medium"].lam1, PRESETS["medium"].lam2, PRESETS["medium"].keep_ratio) == (5e-10, 5e-14, 0.2)
    assert (PRESETS["small"].lam1, PRESETS["small"].lam2, PRESETS["small"].keep_ratio) == (1e-9, 1e-13, 0.1)
    with pytest.raises(ValueError, match="preset"):
        get_preset("tiny")


# ----------------------------------------------------------------------------- decode

def test_decode_cell_rules():
    steps = 3
    alpha = torch.zeros(num_edges(steps), len(PRIMITIVES))
    conv, skip = PRIMITIVES.index("conv_3x3"), PRIMITIVES.index("skip")
    alpha[edge_index(0, 0), skip] = 2.0
    alpha[edge_index(0, 1), conv] = 0.5
    alpha[edge_index(1, 0), conv] = 0.1
    alpha[edge_index(1, 1), skip] = 3.0
    alpha[edge_index(1, 2), conv] = 1.0
    # node 2: all edges tied -> the two lowest inputs, first op on ties
    nodes = decode_cell(alpha, steps)
    assert nodes[0] == [("skip", 0), ("conv_3x3", 1)]
    assert nodes[1] == [("skip", 1), ("conv_3x3", 2)]
    assert nodes[2] == [(PRIMITIVES[0], 0), (PRIMITIVES[0], 1)]


def test_decode_is_deterministic_and_reads_beta_psi():
    torch.manual_seed(3)
    net = _tiny_net()
    with torch.no_grad():
        net.alpha_normal.normal_()
        net.alpha_reduce.normal_()
        net.psi.copy_(torch.tensor([0.1, 0.7, 0.2]))
        for _, m in net.compconvs():
            m.beta.normal_()
    g1, g2 = decode(net), decode(net)
    assert g1 == g2
    assert g1.timesteps == 2
    assert g1.bits["cells.0.pre1"] == net.cells[0].pre1.conv.chosen_bits()
    for key, b in g1.bits.items():
        module = net.get_submodule(key)
        conv = module.conv if hasattr(module, "conv") else module
        assert b == (1, 2, 4)[int(torch.argmax(conv.beta))]
    # every conv edge kept in the genotype has a bit-width, and only those
    for l, cell in enumerate(net.cells):
        nodes = g1.reduce if cell.reduction else g1.normal
        convs = {edge_index(i, j) for i, node in enumerate(nodes) for op, j in node if op == "conv_3x3"}
        have = {int(k.rsplit(".", 1)[1]) for k in g1.bits if k.startswith(f"cells.{l}.edges.")}
        assert have == convs
    assert Genotype.from_dict(g1.to_dict()) == g1


def test_fixed_network_runs_and_trains():
    net = _tiny_net()
    g = decode(net)
    fixed = FixedNetwork(g, channels=3, num_classes=3, auxiliary=True)
    logits, aux = fixed(torch.randn(4, 1, 8, 8))
    assert logits.shape == (g.timesteps, 4, 3) and aux.shape == logits.shape
    (logits.sum() + aux.sum()).backward()
    for _, m in fixed.compconvs():
        assert len(m.bits) == 1 and m.beta.grad is None
    fixed.eval()
    assert fixed(torch.randn(2, 1, 8, 8)).shape == (g.timesteps, 2, 3)


def test_model_size_by_hand():
    from snnops.lite.retrain import model_size
    g = Genotype(normal=[[("conv_3x3", 0), ("skip", 1)]], reduce=[[("skip", 0), ("skip", 1)]],
                 bits={"cells.0.pre0": 1, "cells.0.pre1": 2, "cells.0.edges.0": 4}, timesteps=2, layers=1,
                 steps=1, keep_ratio=0.5)
    net = FixedNetwork(g, channels=4, num_classes=3, auxiliary=False)
    # pre0, pre1: 4x4 1x1 = 16 weights, keep 8; edge 0: 4x4x3x3 = 144, keep 72
    compressed = 8 * 1 + 8 * 2 + 72 * 4
    # stem 1->4 3x3 (36) + BN (8); pre BNs 2x8; edge BN 8; classifier 4*3 + 3
    floats = 36 + 8 + 16 + 8 + 15
    s = model_size(net)
    assert s["compressed_bits"] == compressed and s["float_bits"] == 32 * floats
    assert s["model_size_mb"] == pytest.approx((compressed + 32 * floats) / 8e6)


# ----------------------------------------------------------------------------- CLI

def _cli_args(**kw):
    from snnops.cli.train import build_parser
    from snnops.lite import train as lite_train
    argv = ["--method", "lite", "--no-progress"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return build_parser("lite", lite_train).parse_args(argv)


def test_cli_tiny_search_and_retrain(tmp_path, capsys):
    from snnops.lite import train as lite_train
    torch.manual_seed(0)
    args = _cli_args(search_epochs=1, warmup_epochs=0, epochs=2, channels=2, retrain_channels=4, layers=3,
                     steps=1, timesteps=2, train_subset=96, test_subset=64, batch_size=32)
    s = lite_train.run(args)
    out = capsys.readouterr().out
    assert "LitE-SNN (small)" in out and "Bit-SynOps" in out
    assert 0.0 <= s["accuracy"] <= 100.0 and s["model_size_mb"] > 0 and s["bit_synops_m"] >= 0
    assert 1 <= s["timesteps"] <= 2
    assert set(s["bitwidths"].values()) <= {1, 2, 4}
    assert s["search_time_s"] > 0
    assert s["deployment"]["status"] in ("ok", "unavailable")
    if s["deployment"]["status"] == "ok":
        assert s["deployment"]["predictions_equal_float64_on_quantized_weights"]
    import json
    json.dumps(s)


@pytest.mark.parametrize("kw, match", [
    (dict(bits=""), "bits"), (dict(bits="3,5"), "bits"), (dict(keep_ratio=0), "keep_ratio"),
    (dict(keep_ratio=1.5), "keep_ratio"), (dict(timesteps=0), "t_max"), (dict(preset="huge"), "preset"),
    (dict(lam1=-1), "lam1"), (dict(dataset="mnist"), "dataset"), (dict(channels=0), "channels"),
])
def test_cli_bad_settings(kw, match):
    from snnops.cli import CLIError
    from snnops.lite import train as lite_train
    args = _cli_args(**kw)
    with pytest.raises(CLIError, match=match):
        lite_train.resolve(args)


def _fake_cifar10(root, n=8):
    import pickle
    import numpy as np
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(d / name, "wb") as f:
            pickle.dump(entry, f)


def test_cli_reads_cifar_from_a_local_directory(tmp_path):
    from snnops.lite import train as lite_train
    _fake_cifar10(tmp_path)
    args = _cli_args(dataset="cifar10", data_dir=tmp_path, search_epochs=1, warmup_epochs=0, epochs=1,
                     channels=2, retrain_channels=2, layers=2, steps=1, timesteps=1, batch_size=20, no_deploy=True)
    s = lite_train.run(args)
    assert s["dataset"] == "cifar10" and s["settings"]["train_images"] == 40 and s["timesteps"] == 1
    assert s["deployment"] == {"status": "skipped"}


def test_cli_cifar_without_data_dir():
    from snnops.cli import CLIError
    from snnops.lite import train as lite_train
    with pytest.raises(CLIError, match="data-dir"):
        lite_train.run(_cli_args(dataset="cifar10"))
