"""The fused TT convolution ops (ptt_conv, tt_block, tt_conv) against their F.conv2d references
(snnops/reference/tt_conv.py), on both C++ code paths, and the Triton kernels under
the interpreter.

Tolerances: float32 results are sums of up to 5r (taps x channels) products taken in
another order than oneDNN's, so they differ by a few ulp of the largest partial sums:
we compare with rtol 1e-4 and an atol of 1e-5 x the reference's largest magnitude.
float64 (gradcheck and the exactness checks) is compared to 1e-10. Pool argmax codes
are compared exactly (the kernels take the first maximum, as F.max_pool2d does).
Spikes enter tt_conv bit-packed; its gradient for the float spikes is checked against
the reference's in float64 (gradcheck cannot perturb 0/1 spikes and stay binary).
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import snnops
from snnops import reference
from snnops.nn import TTConv2d
from snnops.ops.tt_conv import tt_block as tt_block_fn

F64 = dict(dtype=torch.float64)


def close(ours, ref, scale=None):
    scale = float(ref.detach().abs().max()) if scale is None and ref.numel() else (scale or 1.0)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * max(scale, 1e-30))


def ptt_weights(r, dtype=torch.float32):
    return torch.randn(r, r, 3, 1, dtype=dtype), torch.randn(r, r, 1, 3, dtype=dtype)


def block_weights(r1, cout, parallel, dtype=torch.float32):
    r2, r3 = (r1, r1) if parallel else (r1 + 2, max(1, r1 - 1))
    return (torch.randn(r2, r1, 3, 1, dtype=dtype), torch.randn(r3, r2, 1, 3, dtype=dtype),
            torch.randn(cout, r3, 1, 1, dtype=dtype))


def assert_tt_conv_matches(x, g1, w2, w3, w4, parallel, schedule, pool, float_in=False):
    """tt_conv and tt_conv_bwd against the reference for spikes x (packed by the kernel
    itself with float_in, which must then return the same words)."""
    packed = snnops.pack_spikes(x, 1)
    y, idx, words = torch.ops.snnops.tt_conv(None if float_in else packed, x if float_in else None, g1, w2, w3,
                                             w4, parallel, schedule, pool)
    ref, ref_idx = reference.tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool)
    if float_in:
        assert torch.equal(words, packed)
    close(y, ref)
    g = torch.randn_like(ref)
    ours = torch.ops.snnops.tt_conv_bwd(g, packed, g1, w2, w3, w4, idx, parallel, schedule, pool, [True] * 5)
    want = reference.tt_conv_bwd(g, packed, g1, w2, w3, w4, ref_idx, parallel, schedule, pool, [True] * 5)
    for a, b in zip(ours, want):
        close(a, b)


# ----------------------------------------------------------------------- ptt_conv

@pytest.mark.parametrize("r", [1, 3, 8, 17, 32, 96])
@pytest.mark.parametrize("shape", [(1, 5, 7), (2, 16, 16), (3, 1, 9), (1, 9, 1)], ids=str)
def test_ptt_conv_matches_reference(cpu_isa, r, shape):
    n, h, w = shape
    o = torch.randn(n, r, h, w)
    w2, w3 = ptt_weights(r)
    y = snnops.ptt_conv(o, w2, w3)
    ref = reference.ptt_conv(o, w2, w3)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    close(y, ref)
    g = torch.randn_like(ref)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        ours = torch.ops.snnops.ptt_conv_bwd(g, o, w2, w3, mask)
        want = reference.ptt_conv_bwd(g, o, w2, w3, mask)
        for a, b, m in zip(ours, want, mask):
            assert a.shape == b.shape
            if m:
                close(a, b)


def test_ptt_conv_is_the_five_tap_cross_kernel():
    # (conv3x1 + conv1x3)/2 equals one 3x3 conv whose kernel is the cross with the two
    # centre taps averaged: checks the fused centre tap exactly, in float64.
    r = 6
    o = torch.randn(2, r, 7, 8, **F64)
    w2, w3 = ptt_weights(r, torch.float64)
    cross = torch.zeros(r, r, 3, 3, **F64)
    cross[:, :, :, 1] += w2[:, :, :, 0] / 2
    cross[:, :, 1, :] += w3[:, :, 0, :] / 2
    torch.testing.assert_close(snnops.ptt_conv(o, w2, w3), F.conv2d(o, cross, padding=1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced", "empty"])
def test_ptt_conv_layouts(cpu_isa, layout):
    r = 5
    w2, w3 = ptt_weights(r)
    if layout == "nchw":
        o = torch.randn(2, r, 6, 7)
    elif layout == "channels_last":
        o = torch.randn(2, r, 6, 7).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        o = torch.randn(3, 2 * r, 9, 14)[::2, ::2, 1:7, ::2]
    else:
        o = torch.randn(0, r, 6, 7)
    o.requires_grad_()
    y = snnops.ptt_conv(o, w2, w3)
    close(y, reference.ptt_conv(o, w2, w3))
    g = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, o, g)
    close(ours, reference.ptt_conv_bwd(g, o, w2, w3, [True, False, False])[0])


def test_ptt_conv_gradcheck():
    o = torch.randn(2, 3, 5, 4, **F64, requires_grad=True)
    w2, w3 = (w.requires_grad_() for w in ptt_weights(3, torch.float64))
    assert torch.autograd.gradcheck(snnops.ptt_conv, (o, w2, w3))


def test_ptt_conv_bad_input():
    o = torch.randn(1, 4, 5, 5)
    w2, w3 = ptt_weights(4)
    with pytest.raises(ValueError, match=r"w2 must be \[r, r, 3, 1\]"):
        snnops.ptt_conv(o, w3, w3)
    with pytest.raises(ValueError, match=r"w3 must be \[r, r, 1, 3\]"):
        snnops.ptt_conv(o, w2, torch.randn(4, 5, 1, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        snnops.ptt_conv(o.int(), w2, w3)
    with pytest.raises(TypeError, match="dtype"):
        snnops.ptt_conv(o, w2.double(), w3)
    with pytest.raises(ValueError, match="4-D"):
        snnops.ptt_conv(o[0], w2, w3)


# ----------------------------------------------------------------------- tt_block

BLOCK_CASES = [
    # parallel, schedule, pool
    (True, [], False),
    (True, [], True),
    (False, [], False),
    (False, [], True),
    (True, [True, True, False, False], False),   # HTT FFHH
    (True, [False, True, False, True], True),    # HTT HFHF with pool
]


@pytest.mark.parametrize("parallel,schedule,pool", BLOCK_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("r,cout,shape", [(1, 3, (4, 5, 7)), (8, 16, (4, 9, 9)), (32, 24, (4, 8, 6)),
                                          (96, 20, (4, 4, 4))], ids=str)
def test_tt_block_matches_reference(cpu_isa, parallel, schedule, pool, r, cout, shape):
    n, h, w = shape
    o = torch.randn(n, r, h, w)
    w2, w3, w4 = block_weights(r, cout, parallel)
    y, idx = torch.ops.snnops.tt_block(o, w2, w3, w4, parallel, schedule, pool)
    ref, ref_idx = reference.tt_block(o, w2, w3, w4, parallel, schedule, pool)
    close(y, ref)
    assert y.is_contiguous(memory_format=torch.channels_last)
    if pool:
        assert torch.equal(idx, ref_idx)
    g = torch.randn_like(ref)
    ours = torch.ops.snnops.tt_block_bwd(g, o, w2, w3, w4, idx, parallel, schedule, pool, [True] * 4)
    want = reference.tt_block_bwd(g, o, w2, w3, w4, ref_idx, parallel, schedule, pool, [True] * 4)
    for a, b in zip(ours, want):
        close(a, b)


@pytest.mark.parametrize("parallel", [True, False])
def test_tt_block_bands_of_a_large_image(cpu_isa, parallel):
    # Batch 1 and a tall image: the kernel splits it into bands of rows with halos.
    o = torch.randn(1, 6, 41, 13)
    w2, w3, w4 = block_weights(6, 10, parallel)
    x = (torch.rand(1, 35, 41, 13) < 0.3).float()
    g1 = torch.randn(6, 35, 1, 1)
    for pool in (False, True):
        # tt_conv packs each band's rows and its halo rows (halo bits stay private)
        y, idx, words = torch.ops.snnops.tt_conv(None, x, g1, w2, w3, w4, parallel, [], pool)
        assert torch.equal(words, snnops.pack_spikes(x, 1))
        ref, ref_idx = reference.tt_conv(words, x, g1, w2, w3, w4, parallel, [], pool)
        close(y, ref)
        g = torch.randn_like(ref)
        ours = torch.ops.snnops.tt_conv_bwd(g, words, g1, w2, w3, w4, idx, parallel, [], pool, [True] * 5)
        want = reference.tt_conv_bwd(g, words, g1, w2, w3, w4, ref_idx, parallel, [], pool, [True] * 5)
        for a, b in zip(ours, want):
            close(a, b)
        y, idx = torch.ops.snnops.tt_block(o, w2, w3, w4, parallel, [], pool)
        ref, ref_idx = reference.tt_block(o, w2, w3, w4, parallel, [], pool)
        close(y, ref)
        g = torch.randn_like(ref)
        ours = torch.ops.snnops.tt_block_bwd(g, o, w2, w3, w4, idx, parallel, [], pool, [True] * 4)
        want = reference.tt_block_bwd(g, o, w2, w3, w4, ref_idx, parallel, [], pool, [True] * 4)
        for a, b in zip(ours, want):
            close(a, b)


def test_tt_block_pool_ties_pick_the_first_maximum(cpu_isa):
    # All-zero input: every pool window is a four-way tie; the gradient must go to the
    # window's first element exactly as F.max_pool2d sends it.
    o = torch.zeros(2, 4, 6, 6)
    w2, w3, w4 = block_weights(4, 5, True)
    y, idx = torch.ops.snnops.tt_block(o, w2, w3, w4, True, [], True)
    ref, ref_idx = reference.tt_block(o, w2, w3, w4, True, [], True)
    assert torch.equal(idx, ref_idx) and int(idx.max()) == 0
    assert torch.equal(y, ref)


def test_tt_block_pool_ties_and_nan_over_many_channels(cpu_isa):
    # 37 output channels: two 16-channel vector blocks and a scalar tail. Zero input
    # ties every window (the first maximum wins); a NaN input spreads NaN over its
    # cross-shaped neighbourhood, and NaN wins a window, as in F.max_pool2d.
    o = torch.zeros(2, 4, 6, 6)
    o[0, 1, 2, 3] = float("nan")
    o[1, 0, 5, 0] = float("nan")
    w2, w3, w4 = block_weights(4, 37, True)
    y, idx = torch.ops.snnops.tt_block(o, w2, w3, w4, True, [], True)
    ref, ref_idx = reference.tt_block(o, w2, w3, w4, True, [], True)
    assert torch.isnan(ref).any() and torch.equal(idx, ref_idx)
    torch.testing.assert_close(y, ref, equal_nan=True, rtol=0, atol=0)


def test_tt_block_masks_and_empty():
    o = torch.randn(2, 4, 5, 5)
    w2, w3, w4 = block_weights(4, 6, True)
    g = torch.randn(2, 6, 5, 5)
    go, g2, g3, g4 = torch.ops.snnops.tt_block_bwd(g, o, w2, w3, w4, torch.empty(0, dtype=torch.uint8), True, [],
                                                   False, [False, False, False, True])
    assert go.numel() == g2.numel() == g3.numel() == 0
    close(g4, reference.tt_block_bwd(g, o, w2, w3, w4, None, True, [], False, [False, False, False, True])[3])
    y, idx = torch.ops.snnops.tt_block(o[:0], w2, w3, w4, True, [], True)
    assert y.shape == (0, 6, 2, 2) and idx.shape == (0, 6, 2, 2)


@pytest.mark.parametrize("parallel,schedule,pool", BLOCK_CASES, ids=lambda v: str(v))
def test_tt_block_gradcheck(parallel, schedule, pool):
    o = torch.randn(4, 2, 4, 5, **F64, requires_grad=True)
    ws = [w.requires_grad_() for w in block_weights(2, 3, parallel, torch.float64)]

    def fn(o, w2, w3, w4):
        return torch.ops.snnops.tt_block(o, w2, w3, w4, parallel, schedule, pool)[0]

    assert torch.autograd.gradcheck(fn, (o, *ws), fast_mode=True)


def test_tt_block_bad_input():
    o = torch.randn(4, 3, 5, 5)
    w2, w3, w4 = block_weights(3, 6, True)
    with pytest.raises(ValueError, match="not a whole number"):
        tt_block_fn(o, w2, w3, w4, schedule=[True, False, True])
    with pytest.raises(ValueError, match="half steps need the parallel form"):
        s2, s3, s4 = block_weights(3, 6, False)
        tt_block_fn(o, s2, s3, s4, parallel=False, schedule=[True, False])
    with pytest.raises(ValueError, match=r"w4 must be \[Cout, 3, 1, 1\]"):
        tt_block_fn(o, w2, w3, torch.randn(6, 4, 1, 1))
    with pytest.raises(RuntimeError, match="w4 must be"):
        torch.ops.snnops.tt_block(o, w2, w3, torch.randn(6, 4, 1, 1), True, [], False)


# ----------------------------------------------------------------------- tt_conv (G1 from packed spikes)

@contextlib.contextmanager
def num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def spikes(*shape, dtype=torch.float32, density=0.3):
    return (torch.rand(*shape) < density).to(dtype)


@pytest.mark.parametrize("parallel,schedule,pool", BLOCK_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("cin,r,cout,shape", [(3, 1, 2, (4, 5, 7)), (37, 8, 16, (4, 9, 9)), (64, 32, 24, (4, 8, 6)),
                                              (33, 96, 20, (4, 4, 4))], ids=str)
def test_tt_conv_matches_reference(cpu_isa, parallel, schedule, pool, cin, r, cout, shape):
    n, h, w = shape
    x = spikes(n, cin, h, w)
    packed = snnops.pack_spikes(x, 1)
    g1 = torch.randn(r, cin, 1, 1)
    w2, w3, w4 = block_weights(r, cout, parallel)
    y, idx, _ = torch.ops.snnops.tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool)
    ref, ref_idx = reference.tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool)
    close(y, ref)
    # float spikes in: the kernel packs them itself and returns the same words
    y2, idx2, words = torch.ops.snnops.tt_conv(None, x, g1, w2, w3, w4, parallel, schedule, pool)
    assert torch.equal(words, packed) and torch.equal(y2, y) and torch.equal(idx2, idx)
    if pool:
        assert torch.equal(idx, ref_idx)
    g = torch.randn_like(ref)
    ours = torch.ops.snnops.tt_conv_bwd(g, packed, g1, w2, w3, w4, idx, parallel, schedule, pool, [True] * 5)
    want = reference.tt_conv_bwd(g, packed, g1, w2, w3, w4, ref_idx, parallel, schedule, pool, [True] * 5)
    # the spikes' gradient comes back channels-last, the layout the models' spikes have
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ours, want):
        close(a, b)


@pytest.mark.parametrize("cin,r,density", [(64, 16, 0.01), (64, 16, 0.5), (37, 24, 0.02), (70, 40, 0.2),
                                            (300, 176, 0.15), (40, 200, 0.3)], ids=str)
def test_tt_conv_g1_paths(cpu_isa, cin, r, density):
    # G1 from the bits by subset-sum tables (dense rows, rank <= 32), by a scan of the
    # set bits over G1^T rows read in place (one to twelve vectors, tails masked), or by
    # the packed spike GEMM (wider ranks): each matches the reference.
    x = (torch.rand(4, cin, 5, 3) < density).float()
    assert_tt_conv_matches(x, torch.randn(r, cin, 1, 1), *block_weights(r, 24, True), True, [True, False], False)


@pytest.mark.parametrize("parallel", [True, False])
def test_tt_conv_strided_cores(cpu_isa, parallel):
    # Cores that are views with strides (the kernels copy them, keep the copies alive
    # while reading them in place, and transpose them in 16 x 16 tiles: 48 and 40
    # channels leave partial tiles) give the results of their contiguous copies.
    cin, r, cout = 48, 40, 33
    x = spikes(4, cin, 5, 6)
    packed = snnops.pack_spikes(x, 1)
    g1 = torch.randn(cin, r, 1, 1).transpose(0, 1)
    w2, w3, w4 = block_weights(r, cout, parallel)
    w4 = torch.randn(w3.shape[0], cout, 1, 1).transpose(0, 1)
    w2 = w2.transpose(0, 1).contiguous().transpose(0, 1) if parallel else w2
    assert not g1.is_contiguous() and not w4.is_contiguous()
    cores = (g1, w2, w3, w4)
    dense = tuple(t.contiguous() for t in cores)
    schedule = [True, False] if parallel else []
    y, idx, _ = torch.ops.snnops.tt_conv(packed, None, *cores, parallel, schedule, False)
    want, _, _ = torch.ops.snnops.tt_conv(packed, None, *dense, parallel, schedule, False)
    assert torch.equal(y, want)
    g = torch.randn_like(y)
    ours = torch.ops.snnops.tt_conv_bwd(g, packed, *cores, idx, parallel, schedule, False, [True] * 5)
    ref = torch.ops.snnops.tt_conv_bwd(g, packed, *dense, idx, parallel, schedule, False, [True] * 5)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    close(y, reference.tt_conv(packed, x, *dense, parallel, schedule, False)[0])


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("hw", [(6, 37), (7, 33)], ids=str)
@pytest.mark.parametrize("r", [8, 24, 32], ids=str)
def test_tt_conv_bwd_gradient_layouts(cpu_isa, pool, hw, r):
    # Gradients in NCHW planes are turned into channels-last rows by 16x16 / 8x8 blocks
    # (rows of 37 or 33 pixels and 40 channels leave partial blocks on both sides); pooled
    # gradients go back to their window (an odd height leaves a row outside every window).
    # Channels-last ones are read in place (ranks 17..32: G4^T tiles that prefetch the
    # next tile's rows; 24 leaves a partial vector).
    n = 4
    x = spikes(n, 20, *hw)
    packed = snnops.pack_spikes(x, 1)
    g1 = torch.randn(r, 20, 1, 1)
    w2, w3, w4 = block_weights(r, 40, True)
    schedule = [True, False, True, False]
    y, idx, _ = torch.ops.snnops.tt_conv(packed, None, g1, w2, w3, w4, True, schedule, pool)
    ref, ref_idx = reference.tt_conv(packed, x, g1, w2, w3, w4, True, schedule, pool)
    close(y, ref)
    g = torch.randn_like(ref)
    want = reference.tt_conv_bwd(g, packed, g1, w2, w3, w4, ref_idx, True, schedule, pool, [True] * 5)
    for layout in (torch.contiguous_format, torch.channels_last):
        ours = torch.ops.snnops.tt_conv_bwd(g.contiguous(memory_format=layout), packed, g1, w2, w3, w4, idx, True,
                                            schedule, pool, [True] * 5)
        for a, b in zip(ours, want):
            close(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("parallel,schedule,pool", [(True, [True, True, False, False], True), (True, [], False),
                                                    (False, [], True)], ids=str)
@pytest.mark.parametrize("hw", [(5, 5), (4, 6)], ids=str)
def test_tt_conv_groups_of_small_images(cpu_isa, threads, parallel, schedule, pool, hw):
    # Many small images: the kernels stack several (of one timestep) per work unit with
    # one shared zero row between them; 9 images a step does not divide into the groups,
    # so the last group of each step is smaller. Both gradient layouts are fed.
    n = 36
    x = spikes(n, 20, *hw)
    packed = snnops.pack_spikes(x, 1)
    g1 = torch.randn(12, 20, 1, 1)
    w2, w3, w4 = block_weights(12, 8, parallel)
    with num_threads(threads):
        y, idx, _ = torch.ops.snnops.tt_conv(packed, None, g1, w2, w3, w4, parallel, schedule, pool)
        ref, ref_idx = reference.tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool)
        close(y, ref)
        g = torch.randn_like(ref)
        want = reference.tt_conv_bwd(g, packed, g1, w2, w3, w4, ref_idx, parallel, schedule, pool, [True] * 5)
        for layout in (torch.contiguous_format, torch.channels_last):
            ours = torch.ops.snnops.tt_conv_bwd(g.contiguous(memory_format=layout), packed, g1, w2, w3, w4, idx,
                                                parallel, schedule, pool, [True] * 5)
            for a, b in zip(ours, want):
                close(a, b)
        o = torch.randn(n, 12, *hw)
        yb, ib = torch.ops.snnops.tt_block(o, w2, w3, w4, parallel, schedule, pool)
        rb, rib = reference.tt_block(o, w2, w3, w4, parallel, schedule, pool)
        close(yb, rb)
        gb = torch.randn_like(rb)
        ours = torch.ops.snnops.tt_block_bwd(gb, o, w2, w3, w4, ib, parallel, schedule, pool, [True] * 4)
        want = reference.tt_block_bwd(gb, o, w2, w3, w4, rib, parallel, schedule, pool, [True] * 4)
        for a, b in zip(ours, want):
            close(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("schedule,pool", [([True, True, False, False], False), ([False, True, False, True], True)],
                         ids=str)
def test_tt_conv_half_steps_in_bands(cpu_isa, threads, schedule, pool):
    # Images too large for one work unit are split into bands of rows: the half steps'
    # compact path handles its own rows only (no halo), packing float spikes in place.
    x = spikes(4, 64, 40, 40)
    with num_threads(threads):
        assert_tt_conv_matches(x, torch.randn(32, 64, 1, 1), *block_weights(32, 48, True), True, schedule, pool,
                               float_in=True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("spikes_in", ["packed", "float", "float channels-last"])
@pytest.mark.parametrize("n,hw", [(8, 16), (4, 40), (64, 16)], ids=str)
def test_tt_conv_half_steps_sparse_and_dense_rows(cpu_isa, threads, pool, spikes_in, n, hw):
    # On AVX-512, half steps send image rows with few spikes through the merged weight
    # G4 G1 and the others through G1 then G4 (chosen per image row). Row densities
    # spread over 0..0.5 (about 28 spikes a pixel of 128 is where the choice changes
    # here) give runs of both kinds; whole-image units and bands of a 40x40 image; and
    # (64 images) an output of 8 MiB, written with streaming stores.
    density = torch.rand(n, 1, hw, 1) * 0.5
    x = (torch.rand(n, 128, hw, hw) < density).float()
    x[:, :, 0] = 0
    x[:, :, 1] = 1
    if spikes_in == "float channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    with num_threads(threads):
        assert_tt_conv_matches(x, torch.randn(32, 128, 1, 1), *block_weights(32, 128, True), True,
                               [True, False, False, True], pool, float_in=spikes_in != "packed")


@pytest.mark.parametrize("parallel,schedule,pool", BLOCK_CASES, ids=lambda v: str(v))
def test_tt_conv_float64_gradients(parallel, schedule, pool):
    # float64 always runs the portable C++ path (the AVX2 kernels are float32)
    x = spikes(4, 5, 5, 6, dtype=torch.float64).requires_grad_()
    packed = snnops.pack_spikes(x.detach(), 1)
    g1 = torch.randn(3, 5, 1, 1, **F64, requires_grad=True)
    ws = [w.requires_grad_() for w in block_weights(3, 4, parallel, torch.float64)]

    def fused(g1, w2, w3, w4):
        return torch.ops.snnops.tt_conv(None, x, g1, w2, w3, w4, parallel, schedule, pool)[0]

    assert torch.autograd.gradcheck(fused, (g1, *ws), fast_mode=True)
    y = fused(g1, *ws)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x, g1, *ws], g)
    ref, _ = reference.tt_block(F.conv2d(x, g1), *ws, parallel, schedule, pool)
    want = torch.autograd.grad(ref, [x, g1, *ws], g)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_tt_conv_packed_only_and_masks():
    x = spikes(2, 40, 6, 5)
    packed = snnops.pack_spikes(x, 1)
    g1 = torch.randn(4, 40, 1, 1)
    w2, w3, w4 = block_weights(4, 6, True)
    y, _, _ = torch.ops.snnops.tt_conv(packed, None, g1, w2, w3, w4, True, [], False)
    close(y, reference.tt_conv(packed, None, g1, w2, w3, w4, True, [], False)[0])
    g = torch.randn_like(y)
    gx, gg1, g2, g3, g4 = torch.ops.snnops.tt_conv_bwd(g, packed, g1, w2, w3, w4, torch.empty(0, dtype=torch.uint8),
                                                       True, [], False, [False, True, False, False, False])
    assert gx.numel() == g2.numel() == g3.numel() == g4.numel() == 0
    close(gg1, reference.tt_conv_bwd(g, packed, g1, w2, w3, w4, None, True, [], False, [False, True, False, False,
                                                                                         False])[1])


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("schedule", [[], [True, False]], ids=str)
@pytest.mark.parametrize("cin", [37, 64, 128], ids=str)
def test_tt_conv_input_layouts(cpu_isa, layout, schedule, cin):
    """Float spikes in any memory layout: channels-last ones are packed as they lie,
    others copied; same output and packed words as from NCHW."""
    x = spikes(4, cin, 6, 5)
    g1 = torch.randn(8, cin, 1, 1)
    w2, w3, w4 = block_weights(8, 12, True)
    if layout == "channels_last":
        xl = x.contiguous(memory_format=torch.channels_last)
        assert not xl.is_contiguous()
    else:  # every other column of a wider tensor
        xl = torch.zeros(4, cin, 6, 10)
        xl[..., ::2] = x
        xl = xl[..., ::2]
    y, _, words = torch.ops.snnops.tt_conv(None, x, g1, w2, w3, w4, True, schedule, False)
    yl, _, words_l = torch.ops.snnops.tt_conv(None, xl, g1, w2, w3, w4, True, schedule, False)
    assert torch.equal(words_l, words) and torch.equal(words, snnops.pack_spikes(x, 1))
    assert torch.equal(yl, y)
    # a non-binary value is reported at its [n, c, h, w] in any layout
    bad = xl.clone(memory_format=torch.preserve_format)
    bad[3, cin - 1, 5, 4] = 0.5
    with pytest.raises(RuntimeError, match=rf"0/1 spikes; found 0.5 at \[3, {cin - 1}, 5, 4\]"):
        torch.ops.snnops.tt_conv(None, bad, g1, w2, w3, w4, True, schedule, False)


def test_tt_conv_bad_input():
    g1 = torch.randn(4, 8, 1, 1)
    w2, w3, w4 = block_weights(4, 6, True)
    with pytest.raises(ValueError, match="0/1 spikes.*spiking=False"):
        snnops.tt_conv(torch.randn(2, 8, 5, 5), g1, w2, w3, w4)
    with pytest.raises(ValueError, match="words per pixel"):
        snnops.tt_conv(torch.zeros(2, 5, 5, 2, dtype=torch.int32), g1, w2, w3, w4)
    with pytest.raises(RuntimeError, match="ceil"):
        torch.ops.snnops.tt_conv(torch.zeros(2, 5, 5, 2, dtype=torch.int32), None, g1, w2, w3, w4, True, [], False)
    with pytest.raises(RuntimeError, match=r"0/1 spikes; found 0.5 at \[1, 3, 2, 4\]"):
        x = torch.zeros(2, 8, 5, 5)
        x[1, 3, 2, 4] = 0.5
        torch.ops.snnops.tt_conv(None, x, g1, w2, w3, w4, True, [], False)
    with pytest.raises(RuntimeError, match=r"0/1 spikes; found 0.5 at \[1, 3, 2, 4\]"):
        torch.ops.snnops.tt_conv(None, x, g1, w2, w3, w4, True, [True, False], False)  # at a half step
    with pytest.raises(RuntimeError, match=r"0/1 spikes; found 2 at \[0, 7, 4, 4\]"):
        x = torch.zeros(2, 8, 5, 5)
        x[0, 7, 4, 4] = 2.0  # the last pixel: past the kernels' groups of 8 / 16 positions
        torch.ops.snnops.tt_conv(None, x, g1, w2, w3, w4, True, [], False)
    with pytest.raises(ValueError, match="x has 5 channels"):
        snnops.tt_conv(torch.zeros(2, 5, 5, 5), g1, w2, w3, w4)
    # flags are booleans: a string would count as True
    x = torch.zeros(2, 8, 5, 5)
    for kw, match in ((dict(parallel="no"), "parallel must be True or False"), (dict(pool="no"), "pool must be"),
                      (dict(spiking="no"), "spiking must be"), (dict(schedule="FH"), "schedule must be a sequence"),
                      (dict(schedule=[True, "no"]), "schedule entries must be True or False")):
        with pytest.raises(TypeError, match=match):
            snnops.tt_conv(x, g1, w2, w3, w4, **kw)
    with pytest.raises(TypeError, match="pool must be True or False"):
        tt_block_fn(torch.randn(2, 4, 5, 5), w2, w3, w4, pool="no")


# ----------------------------------------------------------------------- the layer on the kernels

@pytest.mark.parametrize("spiking", [True, False], ids=["spiking", "float"])
@pytest.mark.parametrize("mode,kw", [("stt", {}), ("ptt", {"pool": True}), ("htt", {"schedule": "FHHF"}),
                                     ("htt", {"timesteps": 3})])
def test_layer_fused_equals_reference_backend(cpu_isa, mode, kw, spiking):
    rank = (4, 6, 5) if mode == "stt" else 5
    torch.manual_seed(3)
    fused = TTConv2d(12, 10, rank, mode, bias=True, spiking=spiking, **kw)
    plain = TTConv2d(12, 10, rank, mode, bias=True, backend="reference", **kw)
    plain.load_state_dict(fused.state_dict())
    steps = kw.get("timesteps") or len(kw.get("schedule", "FFHH"))
    x = spikes(steps, 2, 12, 7, 9) if spiking else torch.randn(steps, 2, 12, 7, 9)
    x.requires_grad_()
    y, y_ref = fused(x), plain(x)
    close(y, y_ref)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x, *fused.parameters()], g)
    want = torch.autograd.grad(y_ref, [x, *plain.parameters()], g)
    for a, b in zip(ours, want):
        close(a, b)


def test_layer_takes_packed_spikes():
    torch.manual_seed(4)
    m = TTConv2d(40, 8, 4, "htt", schedule="FH")
    x = spikes(2, 3, 40, 6, 6).requires_grad_()
    packed = snnops.pack_spikes(x.detach(), 2)  # [T, B, H, W, words]
    y = m(x)
    close(m(packed), y)                      # packed only: inference
    y2 = m(x, packed=packed)                 # packed + the float spikes that get the gradient
    close(y2, y)
    g = torch.randn_like(y)
    close(torch.autograd.grad(y2, x, g)[0], torch.autograd.grad(m(x), x, g)[0])
    ref = TTConv2d(40, 8, 4, "htt", schedule="FH", backend="reference")
    ref.load_state_dict(m.state_dict())
    close(ref(packed), y)
    with pytest.raises(ValueError, match="0/1 spikes"):
        m(torch.randn(2, 3, 40, 6, 6))
    with pytest.raises(ValueError, match="packed spikes must be int32"):
        m(torch.zeros(2, 3, 6, 6, 1, dtype=torch.int32))


# ----------------------------------------------------------------------- opcheck samples

def opcheck_samples():
    torch.manual_seed(0)
    r = 3
    o = torch.randn(2, r, 4, 5)
    w2, w3 = ptt_weights(r)
    yield "ptt_conv", (o.requires_grad_(), w2.requires_grad_(), w3.requires_grad_()), {}
    yield "ptt_conv", (o.detach().contiguous(memory_format=torch.channels_last), w2.detach(), w3.detach()), {}
    yield "ptt_conv_bwd", (torch.randn(2, r, 4, 5), o.detach(), w2.detach(), w3.detach(), [True, True, False]), {}
    for parallel, schedule, pool in BLOCK_CASES:
        o = torch.randn(4, r, 5, 4)
        b2, b3, b4 = block_weights(r, 5, parallel)
        yield ("tt_block", (o.requires_grad_(), b2.requires_grad_(), b3.requires_grad_(), b4.requires_grad_(),
                            parallel, schedule, pool), {})
    o = torch.randn(4, r, 5, 4)
    b2, b3, b4 = block_weights(r, 5, True)
    _, idx = torch.ops.snnops.tt_block(o, b2, b3, b4, True, [True, False], True)
    yield ("tt_block_bwd", (torch.randn(4, 5, 2, 2), o, b2, b3, b4, idx, True, [True, False], True,
                            [True, True, True, True]), {})
    yield ("tt_block_bwd", (torch.randn(4, 5, 5, 4), o, b2, b3, b4, torch.empty(0, dtype=torch.uint8), True, [],
                            False, [True, False, False, True]), {})
    for parallel, schedule, pool in BLOCK_CASES[:4] + BLOCK_CASES[5:]:
        x = spikes(4, 35, 5, 4)
        packed = snnops.pack_spikes(x, 1)
        g1 = torch.randn(r, 35, 1, 1)
        b2, b3, b4 = block_weights(r, 5, parallel)
        yield ("tt_conv", (packed, x.requires_grad_(), g1.requires_grad_(), b2.requires_grad_(),
                           b3.requires_grad_(), b4.requires_grad_(), parallel, schedule, pool), {})
    yield ("tt_conv", (packed, None, g1.detach(), b2.detach(), b3.detach(), b4.detach(), True, [], False), {})
    yield ("tt_conv", (None, x.detach().requires_grad_(), g1.detach().requires_grad_(), b2.detach(), b3.detach(),
                       b4.detach(), True, [], True), {})
    _, idx, _ = torch.ops.snnops.tt_conv(packed, None, g1.detach(), b2.detach(), b3.detach(), b4.detach(), True,
                                         [False, True], True)
    yield ("tt_conv_bwd", (torch.randn(4, 5, 2, 2), packed, g1.detach(), b2.detach(), b3.detach(), b4.detach(), idx,
                           True, [False, True], True, [True, True, False, True, True]), {})


# ----------------------------------------------------------------------- Triton kernels (interpreter)

@pytest.fixture(scope="module")
def triton_kernels():
    pytest.importorskip("triton")
    from snnops.kernels import tt_conv as k
    return k


def test_triton_ptt_conv(triton_kernels):
    o = torch.randn(2, 5, 5, 6)
    w2, w3 = ptt_weights(5)
    close(triton_kernels.ptt_conv(o, w2, w3), reference.ptt_conv(o, w2, w3))
    g = torch.randn(2, 5, 5, 6)
    for a, b in zip(triton_kernels.ptt_conv_bwd(g, o, w2, w3, [True] * 3),
                    reference.ptt_conv_bwd(g, o, w2, w3, [True] * 3)):
        close(a, b)


@pytest.mark.parametrize("parallel,schedule,pool", [(True, [True, False], True), (False, [], False)],
                         ids=["htt-pool", "stt"])
def test_triton_tt_block_and_tt_conv(triton_kernels, parallel, schedule, pool):
    x = spikes(2, 35, 5, 6)
    packed = snnops.pack_spikes(x, 1)
    g1 = torch.randn(4, 35, 1, 1)
    w2, w3, w4 = block_weights(4, 6, parallel)
    o = torch.randn(2, 4, 5, 6)
    y, idx = triton_kernels.tt_block(o, w2, w3, w4, parallel, schedule, pool)
    ref, ref_idx = reference.tt_block(o, w2, w3, w4, parallel, schedule, pool)
    close(y, ref)
    g = torch.randn_like(ref)
    for a, b in zip(triton_kernels.tt_block_bwd(g, o, w2, w3, w4, idx, parallel, schedule, pool, [True] * 4),
                    reference.tt_block_bwd(g, o, w2, w3, w4, ref_idx, parallel, schedule, pool, [True] * 4)):
        close(a, b)
    y, idx, _ = triton_kernels.tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool)
    y2, _, words = triton_kernels.tt_conv(None, x, g1, w2, w3, w4, parallel, schedule, pool)
    assert torch.equal(words, packed) and torch.equal(y2, y)
    ref, ref_idx = reference.tt_conv(packed, x, g1, w2, w3, w4, parallel, schedule, pool)
    close(y, ref)
    if pool:
        assert torch.equal(idx, ref_idx)
    for a, b in zip(triton_kernels.tt_conv_bwd(g, packed, g1, w2, w3, w4, idx, parallel, schedule, pool, [True] * 5),
                    reference.tt_conv_bwd(g, packed, g1, w2, w3, w4, ref_idx, parallel, schedule, pool, [True] * 5)):
        close(a, b)


@pytest.mark.slow
def test_ptt_conv_past_2_31_elements(large):
    """o of (2^18 + 1) x 32 x 16 x 16 = 2^31 + 8192 elements and y the same (about
    17 GiB), tiled from 997 random images; images around the start, flat element 2^31
    and the end against the reference."""
    large.need(18)
    n, r, h, w = 2**18 + 1, 32, 16, 16
    block = torch.randn(997, h, w, r)
    o = large.tile(block, n).permute(0, 3, 1, 2)   # channels-last frames
    w2, w3 = ptt_weights(r)
    y = snnops.ptt_conv(o, w2, w3)
    for sl in large.rows(n, r * h * w):
        close(y[sl], reference.ptt_conv(o[sl], w2, w3))


@pytest.mark.slow
def test_tt_conv_past_2_31_elements(large):
    """Spikes bit-packed in (2^18 + 1 images of 128 x 8 x 8), more than 2^31 outputs
    (8 GiB), then the backward's spike gradient of more than 2^31 elements beside the
    incoming one (17 GiB). Images around the start, flat element 2^31 and the end against
    the reference; the core gradients (sums over all 2^24 positions) against the float64
    reference on one 997-image period times the number of periods, plus the rest."""
    large.need(18)
    n, cin, h, w, r, cout = 2**18 + 1, 128, 8, 8, 32, 128
    g1 = torch.randn(r, cin, 1, 1) * 0.1
    w2, w3, w4 = (t * 0.1 for t in block_weights(r, cout, True))
    s_block = spikes(997, cin, h, w)
    packed = large.tile(snnops.pack_spikes(s_block, 1), n)
    y = snnops.tt_conv(packed, g1, w2, w3, w4)
    assert y.numel() > 2**31
    for sl in large.rows(n, cout * h * w):
        close(y[sl], reference.tt_conv(packed[sl], None, g1, w2, w3, w4, True, [], False)[0])
    del y
    gy_block = torch.randn(997, h, w, cout)
    gy = large.tile(gy_block, n).permute(0, 3, 1, 2)
    no_index = torch.empty(0, dtype=torch.uint8)
    grads = torch.ops.snnops.tt_conv_bwd(gy, packed, g1, w2, w3, w4, no_index, True, [], False, [True] * 5)
    assert grads[0].numel() > 2**31
    for sl in large.rows(n, cin * h * w):
        close(grads[0][sl], reference.tt_conv_bwd(gy[sl], packed[sl], g1, w2, w3, w4, no_index, True, [], False,
                                                  [True] * 5)[0])
    whole, rest = divmod(n, 997)
    cores = [t.double() for t in (g1, w2, w3, w4)]
    gyd = gy_block.permute(0, 3, 1, 2).double()
    period = reference.tt_conv_bwd(gyd, packed[:997], *cores, no_index, True, [], False, [False] + [True] * 4)
    part = reference.tt_conv_bwd(gyd[:rest], packed[:rest], *cores, no_index, True, [], False, [False] + [True] * 4)
    # float32 sums over 2^24 positions round far more than the few-term sums above (5e-4
    # of the largest entry measured); an index wrapped at 2^31 would drop or repeat a
    # whole share of the positions, an error of the order of the gradient itself
    for got, p, q in zip(grads[1:], period[1:], part[1:]):
        exact = whole * p + q
        torch.testing.assert_close(got.double(), exact, rtol=0, atol=2e-3 * float(exact.abs().max()))
