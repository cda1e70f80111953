"""Fused tdBN + LIF (``snnops.bn_lif``): the C++ kernels (AVX2 and portable) against
the reference, the reference against ``F.batch_norm`` + the LIF loop, autograd,
running statistics, layouts and errors."""
import pytest
import torch
import torch.nn.functional as F

import snnops
from snnops import reference
from snnops.ops.bn_lif import bn_lif

NEURON = dict(decay=0.25, v_threshold=0.5, v_reset=0.0, width=1.0)


def _z(steps, rows, c, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(steps, rows, c, generator=g, dtype=dtype) * 1.5 + 0.3)


def _bn_params(c, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + torch.rand(c, generator=g, dtype=dtype), 0.3 * torch.randn(c, generator=g, dtype=dtype),
            0.1 * torch.randn(c, generator=g, dtype=dtype), 0.5 + torch.rand(c, generator=g, dtype=dtype))


def _fwd_args(z, w, b, rm, rv, training, neuron=NEURON):
    return (z, w, b, rm, rv, training, 1e-5, neuron["decay"], neuron["v_threshold"], neuron["v_reset"],
            neuron["width"])


@pytest.mark.parametrize("shape", [(4, 37, 64), (3, 19, 20), (1, 5, 8), (2, 3, 33)])
@pytest.mark.parametrize("training", [True, False])
def test_kernel_matches_reference(cpu_isa, shape, training):
    """Spikes, packed spikes and window bits bit-exact (same arithmetic, statistics in
    double; a flip would need the float32 statistics to round differently); gradients to
    float32 rounding of double sums taken in another order."""
    z = _z(*shape)
    w, b, rm, rv = _bn_params(shape[2])
    args = _fwd_args(z, w, b, rm, rv, training)
    got = torch.ops.snnops.bn_lif_fwd(*args)
    want = reference.bn_lif_fwd(*args)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    for g, r in zip(got[3:], want[3:]):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)
    assert 0.05 < float(got[0].mean()) < 0.95
    gs = torch.randn(shape)
    bargs = (gs, z, w, got[3], got[4], got[1], got[2], training, NEURON["decay"], NEURON["width"], [True, True, True])
    for g, r in zip(torch.ops.snnops.bn_lif_bwd(*bargs), reference.bn_lif_bwd(*bargs)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_float64_and_output_mask(cpu_isa):
    z = _z(3, 11, 24, torch.float64)
    w, b, rm, rv = _bn_params(24, torch.float64)
    args = _fwd_args(z, w, b, rm, rv, True)
    got, want = torch.ops.snnops.bn_lif_fwd(*args), reference.bn_lif_fwd(*args)
    assert got[0].dtype == torch.float64 and torch.equal(got[0], want[0])
    gs = torch.randn(3, 11, 24, dtype=torch.float64)
    bargs = (gs, z, w, got[3], got[4], got[1], got[2], True, 0.25, 1.0)
    gz, gw, gb = torch.ops.snnops.bn_lif_bwd(*bargs, [True, False, True])
    rz, _, rb = reference.bn_lif_bwd(*bargs, [True, True, True])
    assert gw.numel() == 0
    torch.testing.assert_close(gz, rz, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, rb, rtol=1e-12, atol=1e-12)


def test_equals_batch_norm_then_lif_loop():
    """The op is F.batch_norm (training statistics over T and B) followed by the
    TT-SNN LIF: in float64 spikes agree exactly, gradients to rounding."""
    steps, batch, c, h, w = 4, 3, 16, 5, 6
    z = torch.randn(steps, batch, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = (0.5 + torch.rand(c, dtype=torch.float64)).requires_grad_()
    bias = (0.2 * torch.randn(c, dtype=torch.float64)).requires_grad_()
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    spikes, packed = bn_lif(z, weight, bias, rm, rv, True, 0.1, 1e-5)
    rm2, rv2 = torch.zeros_like(rm), torch.ones_like(rv)
    y = F.batch_norm(z.flatten(0, 1), rm2, rv2, weight, bias, True, 0.1, 1e-5).unflatten(0, (steps, batch))
    ref, _ = reference.lif(y, decay=0.25, input_scale=1.0, v_threshold=0.5, v_reset=0.0, surrogate="rect",
                           detach_reset=True)
    assert torch.equal(spikes, ref)
    assert torch.equal(packed, snnops.pack_spikes(ref.detach(), 2))
    torch.testing.assert_close(rm, rm2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, rv2, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(spikes, (z, weight, bias), g)
    want = torch.autograd.grad(ref, (z, weight, bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_eval_mode_uses_running_statistics():
    c = 8
    z = torch.randn(2, 2, c, 3, 3)
    w, b, rm, rv = _bn_params(c)
    before = rm.clone()
    spikes, _ = bn_lif(z, w, b, rm, rv, False)
    assert torch.equal(rm, before)
    y = F.batch_norm(z.flatten(0, 1), rm, rv, w, b, False, 0.1, 1e-5).unflatten(0, (2, 2))
    ref, _ = reference.lif(y, decay=0.25, input_scale=1.0, v_threshold=0.5, v_reset=0.0, surrogate="rect",
                           detach_reset=True)
    assert (spikes != ref).float().mean() < 0.01   # float32: a tie at the threshold may round either way


def test_channels_last_frames_are_read_in_place_and_returned_channels_last():
    z = torch.randn(2, 3, 16, 4, 4).flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
    w, b, rm, rv = _bn_params(16)
    spikes, packed = bn_lif(z, w, b, rm, rv, True)
    assert spikes.shape == z.shape and spikes.stride() == z.stride()
    assert packed.shape == (2, 3, 4, 4, 1)
    nchw, _ = bn_lif(z.contiguous(), w, b, rm.clone(), rv.clone(), True)
    assert torch.equal(spikes, nchw)


def test_errors():
    w, b, rm, rv = _bn_params(4)
    with pytest.raises(ValueError, match=r"\[T, B, C, H, W\]"):
        bn_lif(torch.randn(2, 4, 3, 3), w, b, rm, rv, True)
    with pytest.raises(ValueError, match="weight must be a \\[5\\]"):
        bn_lif(torch.randn(2, 1, 5, 3, 3), w, b, rm, rv, True)
    with pytest.raises(TypeError, match="float32 or float64"):
        bn_lif(torch.zeros(2, 1, 4, 3, 3, dtype=torch.int64), w, b, rm, rv, True)
    with pytest.raises(ValueError, match="eval mode needs running_mean"):
        bn_lif(torch.randn(2, 1, 4, 3, 3), w, b, None, None, False)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn_lif(torch.randn(1, 1, 4, 1, 1), w, b, rm, rv, True)
    with pytest.raises(ValueError, match="width must be > 0"):
        bn_lif(torch.randn(2, 1, 4, 3, 3), w, b, rm, rv, True, width=0.0)


def opcheck_samples():
    z = _z(3, 7, 40)
    w, b, rm, rv = _bn_params(40)
    w.requires_grad_()
    b.requires_grad_()
    zg = z.clone().requires_grad_()
    yield "bn_lif_fwd", _fwd_args(zg, w, b, rm, rv, True), {}
    yield "bn_lif_fwd", _fwd_args(z, w.detach(), b.detach(), rm, rv, False), {}
    out = reference.bn_lif_fwd(*_fwd_args(z, w.detach(), b.detach(), rm, rv, True))
    yield "bn_lif_bwd", (torch.randn(3, 7, 40), z, w.detach(), out[3], out[4], out[1], out[2], True, 0.25, 1.0,
                         [True, True, True]), {}
