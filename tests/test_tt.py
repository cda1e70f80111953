"""The TT layer and the TT-SNN method logic: TTConv2d's API, merge, TT-SVD, EVBMF,
decompose / decompose_model, counts.

Equivalences (merge, full-rank TT-SVD) are exact in real arithmetic; they are checked
in float64 to 1e-10, far above its rounding (~1e-15 relative) and far below any
real mismatch.
"""
import math

import pytest
import torch
from torch import nn

import snnops
from snnops import reference
from snnops.nn import MergedTTConv2d, TTConv2d
from snnops.nn.tt_conv import default_schedule, parse_schedule
from snnops.tt import count_macs, count_params, decompose, decompose_model, evbmf, max_ranks, merge_model, tt_svd

F64 = dict(dtype=torch.float64)
TIGHT = dict(rtol=1e-10, atol=1e-10)


def layer(mode, cin=6, cout=10, rank=None, **kw):
    # real-valued test inputs: the float-G1 path (the spiking path is in test_tt_conv.py)
    rank = rank if rank is not None else ((3, 4, 5) if mode == "stt" else 4)
    return TTConv2d(cin, cout, rank, mode, spiking=False, **kw).double()


# ----------------------------------------------------------------------- layer API

@pytest.mark.parametrize("mode", ["stt", "ptt", "htt"])
@pytest.mark.parametrize("pool", [False, True])
def test_layer_matches_reference_composition(mode, pool):
    m = layer(mode, pool=pool, bias=True)
    x = torch.randn(4, 2, 6, 7, 9, **F64)
    sched = default_schedule(4) if mode == "htt" else []
    want = reference.tt_layer(x.flatten(0, 1), *m.cores(), parallel=mode != "stt", schedule=sched, pool=pool)
    want = want + m.bias.view(1, -1, 1, 1)
    y = m(x)
    assert y.shape == (4, 2, 10) + ((3, 4) if pool else (7, 9))
    torch.testing.assert_close(y, want.view(y.shape), **TIGHT)


def test_layer_4d_input_and_timesteps():
    m = layer("htt", timesteps=4, schedule="FHFH")
    x = torch.randn(4, 3, 6, 5, 5, **F64)
    torch.testing.assert_close(m(x.flatten(0, 1)), m(x).flatten(0, 1), **TIGHT)
    for mode in ("stt", "ptt"):  # no time dependence: any [N, C, H, W] works without timesteps
        m2 = layer(mode)
        torch.testing.assert_close(m2(x.flatten(0, 1)), m2(x).flatten(0, 1), **TIGHT)


def test_htt_half_steps_are_g4_g1():
    m = layer("htt", schedule="HFHF")
    x = torch.randn(4, 2, 6, 5, 6, **F64)
    y = m(x)
    g1, g2, g3, g4 = m.cores()
    for t in range(4):
        o = nn.functional.conv2d(x[t], g1)
        mid = reference.ptt_conv(o, g2, g3) if t % 2 else o
        torch.testing.assert_close(y[t], nn.functional.conv2d(mid, g4), **TIGHT)


@pytest.mark.parametrize("steps,expected", [(1, "F"), (2, "FH"), (3, "FFH"), (4, "FFHH"), (5, "FFFHH"), (6, "FFFHHH")])
def test_default_schedule(steps, expected):
    assert default_schedule(steps) == parse_schedule(expected)


@pytest.mark.parametrize("sched", ["FFHH", "HHFF", "FHFH", "HFHF"])
def test_paper_ablation_orders(sched):
    m = layer("htt", schedule=sched)
    assert m.schedule_for(4) == [c == "F" for c in sched]
    assert parse_schedule(list(sched)) == parse_schedule([c == "F" for c in sched])
    assert parse_schedule(["full" if c == "F" else "half" for c in sched]) == m.schedule
    x = torch.randn(4, 1, 6, 4, 4, **F64)
    torch.testing.assert_close(m(x), m.to_dense()(x), **TIGHT)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        TTConv2d(4, 4, 0)
    with pytest.raises(ValueError, match="unknown mode"):
        TTConv2d(4, 4, 2, "tt")
    with pytest.raises(ValueError, match="one rank"):
        TTConv2d(4, 4, (2, 3, 4), "ptt")
    with pytest.raises(ValueError, match="schedule has 5 entries but timesteps=4"):
        TTConv2d(4, 4, 2, "htt", schedule="FFHHF", timesteps=4)
    with pytest.raises(ValueError, match="only applies to mode 'htt'"):
        TTConv2d(4, 4, 2, "ptt", schedule="FH")
    with pytest.raises(ValueError, match="schedule entries"):
        TTConv2d(4, 4, 2, "htt", schedule="FXH")
    with pytest.raises(ValueError, match="vbmf"):
        TTConv2d(4, 4, "vbmf")
    with pytest.raises(ValueError, match="in_channels"):
        TTConv2d(0, 4, 2)
    with pytest.raises(ValueError, match="backend"):
        TTConv2d(4, 4, 2, backend="cuda")
    for name in ("pool", "spiking", "bias"):
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            TTConv2d(4, 4, 2, **{name: "no"})
    m = TTConv2d(4, 6, 2, "htt", schedule="FFHH")
    with pytest.raises(ValueError, match="expected 4 input channels"):
        m(torch.randn(4, 1, 5, 3, 3))
    with pytest.raises(ValueError, match="schedule has 4 entries but the input has 3|timesteps=4"):
        m(torch.randn(3, 1, 4, 3, 3))
    with pytest.raises(ValueError, match="needs the timesteps"):
        TTConv2d(4, 6, 2, "htt")(torch.randn(4, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\[T, B, C, H, W\] or \[T\*B, C, H, W\]"):
        m(torch.randn(4, 3, 3))
    with pytest.raises(TypeError, match="floating point"):
        TTConv2d(4, 6, 2)(torch.ones(1, 4, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="weight must be a dense 3x3 kernel"):
        TTConv2d(4, 6, 2, weight=torch.randn(6, 4, 1, 1))


def test_init_is_kaiming_uniform_like_conv2d():
    torch.manual_seed(1)
    m = TTConv2d(64, 64, 32)
    bound = 1 / math.sqrt(64)  # kaiming_uniform_(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert m.g1.abs().max() <= bound and m.g1.abs().max() > 0.9 * bound
    assert m.g2.abs().max() <= 1 / math.sqrt(32 * 3)


def test_empty_batch():
    m = layer("htt", timesteps=2)
    y = m(torch.randn(2, 0, 6, 5, 5, **F64))
    assert y.shape == (2, 0, 10, 5, 5)


# ----------------------------------------------------------------------- merge

@pytest.mark.parametrize("mode", ["stt", "ptt", "htt"])
@pytest.mark.parametrize("pool", [False, True])
def test_merge_is_exact(mode, pool):
    m = layer(mode, pool=pool, bias=True)
    x = torch.randn(4, 2, 6, 7, 5, **F64)
    d = m.to_dense()
    assert isinstance(d, MergedTTConv2d)
    torch.testing.assert_close(d(x), m(x), **TIGHT)
    if mode != "htt":  # no time dependence: [T*B, C, H, W] works too
        torch.testing.assert_close(d(x.flatten(0, 1)), m(x).flatten(0, 1), **TIGHT)


def test_ptt_merge_has_zero_corners_and_stt_is_full():
    m = layer("ptt")
    w = m.to_dense().conv.weight
    assert torch.all(w[:, :, [0, 0, 2, 2], [0, 2, 0, 2]] == 0)
    w_stt = layer("stt").to_dense().conv.weight
    assert torch.all(w_stt[:, :, 0, 0] != 0)


def test_merge_model():
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), layer("htt", cin=6, cout=8, timesteps=2).float())
    net[0].double()
    net[1].double()
    merged = merge_model(net)
    assert not any(isinstance(m, TTConv2d) for m in merged.modules())
    assert any(isinstance(m, TTConv2d) for m in net.modules())  # a copy by default
    x = torch.randn(4, 3, 5, 5, **F64)
    torch.testing.assert_close(merged(x), net(x), **TIGHT)


# ----------------------------------------------------------------------- TT-SVD

@pytest.mark.parametrize("cin,cout", [(5, 7), (16, 3), (1, 4)])
def test_tt_svd_full_rank_is_exact(cin, cout):
    w = torch.randn(cout, cin, 3, 3, **F64)
    cores = tt_svd(w, max_ranks(cin, cout))
    torch.testing.assert_close(reference.merge_stt(*cores), w, **TIGHT)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    tt = decompose(conv, max_ranks(cin, cout), "stt", spiking=False)
    x = torch.randn(2, cin, 6, 5, **F64)
    torch.testing.assert_close(tt(x), conv(x), **TIGHT)


def test_tt_svd_truncation_error_falls_with_rank():
    w = torch.randn(12, 10, 3, 3, **F64)
    errs = [float((reference.merge_stt(*tt_svd(w, (r, r, r))) - w).norm()) for r in (1, 3, 6, 10)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


# ----------------------------------------------------------------------- EVBMF

def _low_rank(L, M, rank, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(L, rank, generator=g, **F64))
    V, _ = torch.linalg.qr(torch.randn(M, rank, generator=g, **F64))
    # signal singular values 2-6x the noise's largest singular value sigma*(sqrt(L)+sqrt(M))
    edge = sigma * (math.sqrt(L) + math.sqrt(M))
    s = edge * torch.linspace(2, 6, rank, **F64)
    return U @ torch.diag(s) @ V.t() + sigma * torch.randn(L, M, generator=g, **F64)


@pytest.mark.parametrize("L,M,rank,sigma", [(50, 80, 6, 0.1), (64, 576, 10, 0.05), (90, 40, 5, 1.0),
                                            (30, 30, 3, 0.5), (96, 864, 16, 0.02)])
@pytest.mark.parametrize("seed", [0, 1])
def test_evbmf_recovers_rank_and_noise(L, M, rank, sigma, seed):
    res = evbmf(_low_rank(L, M, rank, sigma, seed))
    assert res.rank == rank
    assert abs(res.sigma2 / sigma ** 2 - 1) < 0.15
    assert res.U.shape == (L, rank) and res.V.shape == (M, rank)
    # EVB shrinks every kept singular value below the observed one
    assert torch.all(res.singular_values > 0)


def test_evbmf_pure_noise_is_rank_zero_and_known_sigma():
    assert evbmf(torch.randn(40, 70, **F64)).rank == 0
    Y = _low_rank(40, 70, 4, 0.2, 3)
    assert evbmf(Y, sigma2=0.04).rank == 4


def test_vbmf_ranks_on_a_conv_kernel():
    # A "trained" kernel: a rank-5 unfolding plus small noise.
    cout, cin = 32, 24
    w = _low_rank(cout, 9 * cin, 5, 0.01, 0).reshape(cout, cin, 3, 3)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    tt = decompose(conv, "vbmf", "ptt")
    assert tt.ranks == (5, 5, 5)
    untrained = nn.Conv2d(8, 8, 3, padding=1).double()
    with torch.no_grad():
        untrained.weight.normal_()  # i.i.d. noise: no structure for EVBMF to find
    with pytest.raises(ValueError, match="no component above the noise"):
        decompose(untrained, "vbmf")


# ----------------------------------------------------------------------- decompose_model

class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block1 = _Block(8, 8, 1)
        self.block2 = _Block(8, 16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(x.mean((-2, -1)))


def test_decompose_model_skips_stem_shortcuts_classifier():
    net = _Net().double()
    tt = decompose_model(net, 4, "ptt", spiking=False)
    assert type(tt.stem) is nn.Conv2d and type(tt.fc) is nn.Linear
    assert type(tt.block1.shortcut) is nn.Conv2d and type(tt.block2.shortcut) is nn.Conv2d
    for b in (tt.block1, tt.block2):
        assert isinstance(b.conv1, TTConv2d) and isinstance(b.conv2, TTConv2d)
    assert tt.block2.conv1.pool and not tt.block2.conv2.pool  # stride 2 -> max-pool after G4
    assert isinstance(net.block1.conv1, nn.Conv2d)  # original untouched
    assert tt(torch.randn(2, 3, 8, 8, **F64)).shape == (2, 5)


def test_decompose_model_full_rank_stt_is_exact_and_rank_maps():
    net = _Net().double()
    full = decompose_model(net, lambda name, conv: max_ranks(conv.in_channels, conv.out_channels), "stt",
                           skip=["block2.conv1"], spiking=False)
    assert type(full.block2.conv1) is nn.Conv2d
    x = torch.randn(2, 3, 8, 8, **F64)
    torch.testing.assert_close(full(x), net(x), **TIGHT)
    with pytest.raises(ValueError, match="no rank given"):
        decompose_model(net, {"block1.conv1": 2})
    with pytest.raises(ValueError, match="does not have"):
        decompose_model(net, 2, skip=["nope"])


# ----------------------------------------------------------------------- counting

def test_counts_one_layer_by_hand():
    cin, cout, r, h, w, T = 64, 128, 16, 32, 32, 4
    m = TTConv2d(cin, cout, r, "ptt")
    assert count_params(m).total == 64 * 16 + 6 * 16 * 16 + 16 * 128 == 4608
    per_step = 32 * 32 * (16 * 64 + 6 * 16 * 16 + 16 * 128)  # 4,718,592
    assert count_macs(m, (cin, h, w), T).total == 4 * per_step == 18874368
    htt = TTConv2d(cin, cout, r, "htt", schedule="FFHH")
    half = 32 * 32 * 16 * (64 + 128)  # 3,145,728: only G1 and G4 run
    assert count_macs(htt, (cin, h, w), T).total == 2 * per_step + 2 * half == 15728640
    stt = TTConv2d(cin, cout, (8, 16, 32), "stt", pool=True)
    assert count_params(stt).total == 8 * 64 + 3 * 8 * 16 + 3 * 16 * 32 + 32 * 128
    assert count_macs(stt, (cin, h, w), 1).total == 1024 * (8 * 64 + 3 * 8 * 16 + 3 * 16 * 32 + 32 * 128)
    dense = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    assert count_params(dense).total == 9 * 64 * 128
    assert count_macs(dense, (cin, h, w), T).total == T * 1024 * 9 * 64 * 128
    # merged HTT: the 3x3 cross at full steps (counted as a dense 3x3), the 1x1 at half steps
    assert count_macs(htt.to_dense(), (cin, h, w), T).total == 2 * 1024 * 9 * 64 * 128 + 2 * 1024 * 64 * 128


def test_counts_per_layer_in_a_model():
    net = decompose_model(_Net(), 4, "htt", timesteps=2, spiking=False)
    c = count_params(net)
    assert c.total == sum(p.numel() for p in net.parameters())
    assert c.per_layer["block1.conv1"] == 4 * 8 + 6 * 16 + 4 * 8
    macs = count_macs(net, (3, 8, 8), 2, example_input=torch.randn(2, 3, 8, 8))
    assert macs.per_layer["stem"] == 2 * 64 * 27 * 8
    assert macs.per_layer["block1.conv1"] == 64 * (4 * 8 + 6 * 16 + 4 * 8) + 64 * 4 * 16
    assert macs.per_layer["fc"] == 2 * 16 * 5
    assert macs.total == sum(macs.per_layer.values())
