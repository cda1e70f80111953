"""The fused multi-step LIF op against its PyTorch reference (snnops/reference/lif.py).

Spikes are compared exactly: the kernels compute h in the reference's rounding order,
so even values sitting on the threshold fire identically. Membranes are compared
exactly too (the same float operations); gradients to 1e-5 relative in float32 (the
kernels' exp/tanh approximations and a different association of the backward sum
differ by a few ulp) and 1e-10 in float64.
"""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import snnops
from snnops import reference, surrogate as S
from snnops.ops.lif import resolve_params, saved_bits_per_neuron_step

SURROGATES = ["rect", "triangle", "atan", "sigmoid", "fast_sigmoid", "dspike"]
RESETS = [0.0, -0.2, None]  # hard to 0, hard to -0.2, soft
FORMS = [dict(decay=0.25), dict(tau=2.0, decay_input=True), dict(tau=3.0, decay_input=False)]


def run_reference(x, v, return_membrane=True, **kw):
    decay, scale, vth, vr, sg, detach = resolve_params(
        tau=kw.get("tau"), decay_input=kw.get("decay_input", True), v_threshold=kw.get("v_threshold", 1.0),
        v_reset=kw.get("v_reset", 0.0), detach_reset=kw.get("detach_reset", False), decay=kw.get("decay"),
        surrogate=kw.get("surrogate", "sigmoid"))
    return reference.lif(x, v, decay=decay, input_scale=scale, v_threshold=vth, v_reset=vr, surrogate=sg,
                         detach_reset=detach, return_membrane=return_membrane)


def compare(x, v, dtype=torch.float32, **kw):
    x = x.to(dtype).requires_grad_()
    v = None if v is None else v.to(dtype).requires_grad_()
    s, vl, m = snnops.lif(x, v, return_membrane=True, **kw)
    rs, rvl, rm = run_reference(x, v, **kw)
    assert s.dtype == x.dtype and s.shape == x.shape and vl.shape == x.shape[1:]
    assert torch.equal(s, rs), f"{int((s != rs).sum())} spikes differ"
    assert torch.equal(vl, rvl) and torch.equal(m, rm)
    gs, gv, gm = torch.randn_like(s), torch.randn_like(vl), torch.randn_like(m)
    inputs = [x] + ([v] if v is not None else [])
    ours = torch.autograd.grad((s * gs).sum() + (vl * gv).sum() + (m * gm).sum(), inputs)
    ref = torch.autograd.grad((rs * gs).sum() + (rvl * gv).sum() + (rm * gm).sum(), inputs)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("form", FORMS, ids=["decay", "tau-decay_input", "tau-no_decay_input"])
@pytest.mark.parametrize("v_reset", RESETS, ids=["hard0", "hard-0.2", "soft"])
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detached", "attached"])
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("steps", [3, 7])
def test_grid_against_reference(cpu_isa, steps, surrogate, detach_reset, v_reset, form):
    # 67 neurons per step: a full AVX2 block plus a 3-lane tail and a partial bit word.
    # T = 3 runs the AVX2 and AVX-512 register walks; T = 7 the chunks of steps (a chunk
    # of 4, then one of 3) and AVX2's one-step backward walks.
    x = torch.randn(steps, 3, 67) * 0.8
    v0 = torch.randn(3, 67) * 0.3
    kw = dict(v_threshold=0.5, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate, **form)
    compare(x, v0, **kw)
    compare(x, None, **kw)


@pytest.mark.parametrize("steps", [1, 4, 6, 16, 33, 79])
@pytest.mark.parametrize("surrogate,detach_reset,v_reset", [("rect", True, 0.0), ("rect", True, None),
                                                             ("sigmoid", False, 0.0)])
def test_block_boundaries(cpu_isa, steps, surrogate, detach_reset, v_reset):
    # 18002 neurons a step: full and partial blocks of every kernel (8192 neurons in the
    # chunked forwards and the AVX-512 bits backward, 512-4096 chosen by T in the AVX-512
    # recompute backward, 2048 in the AVX2 backwards, 1024 in the portable code) and a
    # 2-lane tail. T = 6, 33 and 79 end on a partial chunk of steps (2, 1 and 3 of 4).
    compare(torch.randn(steps, 2, 9001) * 0.8, torch.randn(2, 9001) * 0.3, decay=0.25, v_threshold=0.5,
            surrogate=surrogate, detach_reset=detach_reset, v_reset=v_reset)


@pytest.mark.parametrize("steps", [4, 9])
@pytest.mark.parametrize("surrogate,detach_reset", [("rect", True), ("atan", False)])
@pytest.mark.parametrize("neurons", [(64, 8192), (3, 174763)], ids=["streamed", "odd"])
def test_large_outputs(cpu_isa, steps, surrogate, detach_reset, neurons):
    # Outputs of 8 MiB and more are written with streaming stores when every row is
    # 64-byte aligned (524288 neurons a step: T = 4 is exactly 8 MiB); 524289 neurons a
    # step are as large but unaligned, and take the plain stores.
    compare(torch.randn(steps, *neurons) * 0.8, torch.randn(*neurons) * 0.3, decay=0.25, v_threshold=0.5,
            surrogate=surrogate, detach_reset=detach_reset, v_reset=0.0)


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("detach_reset", [True, False])
def test_float64_gradients_match_reference(cpu_isa, surrogate, detach_reset):
    x = torch.randn(4, 2, 19) * 0.8
    compare(x, torch.randn(2, 19) * 0.3, dtype=torch.float64, decay=0.25, v_threshold=0.5,
            surrogate=surrogate, detach_reset=detach_reset)


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_gradcheck_float64(cpu_isa, v_reset):
    """gradcheck where the surrogate gradient is the true derivative: a detached reset
    with the loss on the membrane outputs (the Heaviside's true derivative is 0, so
    the spike path itself is checked against the reference's autograd above)."""
    torch.manual_seed(1)
    x = (torch.randn(4, 3, 9, dtype=torch.float64) * 0.8)
    # keep h away from the threshold so finite differences do not cross it
    x = torch.where((x - 0.5).abs() < 0.05, x + 0.2, x).requires_grad_()
    v0 = (torch.randn(3, 9, dtype=torch.float64) * 0.1).requires_grad_()

    def f(x, v0):
        _, vl, m = snnops.lif(x, v0, decay=0.25, v_threshold=0.5, v_reset=v_reset, detach_reset=True,
                              surrogate="rect", return_membrane=True)
        return vl, m

    assert torch.autograd.gradcheck(f, (x, v0), eps=1e-6, atol=1e-7)


def assert_same_gradients_on_every_cpu_path(monkeypatch, grads_of):
    """grads_of() -> tuple of gradients, run on the AVX-512, AVX2 and portable paths this
    machine has; all must be equal bit for bit."""
    grads = {}
    for isa in ("avx512", "avx2", "generic"):
        monkeypatch.setenv("SNNOPS_CPU_ISA", isa)
        if snnops.cpu_isa() != isa:
            continue
        grads[isa] = grads_of()
    assert "generic" in grads
    for isa, grad in grads.items():
        assert all(torch.equal(a, b) for a, b in zip(grad, grads["generic"])), isa


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("steps", [3, 16])
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detached", "attached"])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_gradients_equal_on_every_cpu_path(monkeypatch, surrogate, steps, detach_reset, v_reset):
    # The AVX-512 kernels repeat the AVX2 kernels' arithmetic in its order, and the
    # portable code (also the vector kernels' tail lanes: 4440 neurons a step leave some)
    # rounds float32 surrogates as they do, fused multiply-adds and exp included: the
    # gradients are the same bit for bit on every CPU path this machine has.
    x = (torch.randn(steps, 3, 40, 37) * 0.8).requires_grad_()
    g = torch.randn_like(x)

    def grads_of():
        s, _ = snnops.lif(x, decay=0.25, v_threshold=0.5, v_reset=v_reset, surrogate=surrogate,
                          detach_reset=detach_reset)
        return torch.autograd.grad(s, x, g)
    assert_same_gradients_on_every_cpu_path(monkeypatch, grads_of)


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("v_reset", [-0.2, None], ids=["hard-0.2", "soft"])
def test_gradients_equal_on_every_cpu_path_tau_form(monkeypatch, surrogate, v_reset):
    # The AVX-512 recompute backward has a second form for h = decay * v + x with a
    # reset to 0 (above); here the general one (input scale 1/tau, a non-zero bias),
    # T = 16 so that its blocked walk runs, with a starting membrane.
    x = (torch.randn(16, 3, 40, 37) * 0.8).requires_grad_()
    v0 = (torch.randn(3, 40, 37) * 0.3).requires_grad_()
    g = torch.randn_like(x)

    def grads_of():
        s, _ = snnops.lif(x, v0, tau=1.5, decay_input=True, v_threshold=0.3, v_reset=v_reset,
                          surrogate=surrogate, detach_reset=False)
        return torch.autograd.grad(s, (x, v0), g)
    assert_same_gradients_on_every_cpu_path(monkeypatch, grads_of)


def test_spike_on_the_threshold_fires():
    # h == v_threshold exactly must fire (h >= v_th), in both kernels and reference.
    x = torch.tensor([[0.5, 0.49999997, 0.50000006]])
    s, _ = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect")
    assert s.tolist() == [[1.0, 0.0, 1.0]]


@pytest.mark.parametrize("cls,param", [(S.Rectangular, 0.7), (S.Triangle, 1.3), (S.ATan, 2.0),
                                       (S.Sigmoid, 4.0), (S.SuperSpike, 10.0), (S.Dspike, 3.0)])
def test_surrogate_formula_is_derivative_of_primitive(cls, param):
    sg = cls(param)
    u = torch.linspace(-1.2, 1.2, 2001, dtype=torch.float64)
    # avoid the kinks of the piecewise surrogates, where the derivative is not defined
    kinks = torch.tensor([-param / 2, param / 2, -0.5, 0.5, -0.7, 0.7, 0.0], dtype=torch.float64)
    u = u[(u.unsqueeze(1) - kinks).abs().min(1).values > 1e-3].requires_grad_()
    (auto,) = torch.autograd.grad(sg.primitive(u, 0.7).sum(), u)
    torch.testing.assert_close(sg.grad(u.detach(), 0.7), auto, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    x = (torch.randn(4, 2, 33) * 0.8).to(dtype)
    s, v = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="atan")
    rs, rv = run_reference(x.float(), None, return_membrane=False, decay=0.25, v_threshold=0.5, surrogate="atan")
    assert s.dtype == dtype and v.dtype == dtype
    assert torch.equal(s.float(), rs)
    torch.testing.assert_close(v.float(), rv.to(dtype).float())
    xg = x.clone().requires_grad_()
    snnops.lif(xg, decay=0.25, v_threshold=0.5, surrogate="atan")[0].sum().backward()
    assert xg.grad.dtype == dtype


def test_non_contiguous_input():
    base = torch.randn(3, 6, 10, 5) * 0.8
    x = base.permute(0, 2, 1, 3)[:, ::2]  # [3, 5, 6, 5], strided
    assert not x.is_contiguous()
    compare(x, None, decay=0.25, v_threshold=0.5, surrogate="sigmoid")
    compare(x, None, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)


@pytest.mark.parametrize("shape", [(0, 4, 3), (3, 0, 5), (2, 0)])
def test_empty(shape):
    x = torch.randn(shape, requires_grad=True)
    s, v = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)
    assert s.shape == x.shape and v.shape == x.shape[1:]
    (s.sum() + v.sum()).backward()
    assert x.grad.shape == x.shape


def test_zero_timesteps_keeps_state():
    v0 = torch.randn(4)
    s, v = snnops.lif(torch.empty(0, 4), v0, decay=0.25)
    assert s.shape == (0, 4) and torch.equal(v, v0)


def test_long_sequence_saves_only_bits():
    """T in the hundreds: the rectangular/detached configuration keeps 2 bits per
    neuron-step and nothing that grows with T besides them."""
    x = (torch.randn(300, 4, 50) * 0.6).requires_grad_()
    compare(x.detach(), None, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        s, v = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)
    nbytes = sum(t.numel() * t.element_size() for t in saved)
    assert nbytes == 2 * 300 * math.ceil(4 * 50 / 32) * 4  # two bit planes, int32 words
    assert saved_bits_per_neuron_step("rect", True, True) == 2


@pytest.mark.parametrize("surrogate,detach,v_reset,bits", [
    ("rect", True, 0.0, 2), ("rect", True, None, 1), ("rect", False, 0.0, 32), ("atan", True, 0.0, 32)])
def test_saved_state_size(surrogate, detach, v_reset, bits):
    x = torch.randn(4, 8, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        snnops.lif(x, decay=0.25, v_threshold=0.5, v_reset=v_reset, surrogate=surrogate, detach_reset=detach)
    nbytes = sum(t.numel() * t.element_size() for t in saved if t.numel())
    assert nbytes * 8 == bits * x.numel()
    assert saved_bits_per_neuron_step(surrogate, detach, v_reset is not None) == bits


@pytest.mark.parametrize("shape,dim", [((4, 3, 70), 2), ((4, 3, 70), -1), ((3, 2, 40, 5, 3), 2),
                                       ((3, 2, 33, 4), 1), ((2, 5, 64), 2), ((2, 0, 8), 2),
                                       ((2, 2, 40, 17, 17), 2)])
def test_packed_spikes_output(cpu_isa, shape, dim):
    x = (torch.randn(shape) * 0.8).requires_grad_()
    s, v, packed = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True, pack_dim=dim)
    assert packed.dtype == torch.int32
    assert torch.equal(packed, reference.pack_spikes(s.detach(), dim))
    s2, v2 = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)
    assert torch.equal(s, s2) and torch.equal(v, v2)
    s.sum().backward()  # the packed output does not break autograd of the float spikes
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("surrogate,v_reset,detach", [("rect", 0.0, True), ("atan", 0.0, False), ("rect", None, True),
                                                       ("sigmoid", None, False)])
@pytest.mark.parametrize("dtype,grad", [(torch.float32, True), (torch.float32, False), (torch.float64, True)])
def test_packed_spikes_written_by_the_kernel(cpu_isa, surrogate, v_reset, detach, dtype, grad):
    # Packing along the last dim of a size divisible by 32: the kernels write the words as
    # the neurons fire (flat bit order), in every configuration, across several blocks
    # and both threads' ranges (3 * 50 * 96 = 14400 neurons per step).
    x = (torch.randn(4, 3, 50, 96, dtype=dtype) * 0.8).requires_grad_(grad)
    s, _, packed = snnops.lif(x, decay=0.25, v_threshold=0.5, v_reset=v_reset, surrogate=surrogate,
                              detach_reset=detach, pack_dim=-1)
    assert torch.equal(packed, reference.pack_spikes(s.detach(), 3))
    expect, _ = reference.lif(x.detach(), decay=0.25, input_scale=1.0, v_threshold=0.5, v_reset=v_reset,
                              surrogate=snnops.surrogate.get(surrogate), detach_reset=detach)
    assert torch.equal(s.detach(), expect)


@pytest.mark.parametrize("surrogate,v_reset,detach", [("rect", 0.0, True), ("atan", 0.0, False)])
@pytest.mark.parametrize("steps", [4, 12])
@pytest.mark.parametrize("hw,grad", [((8, 8), True), ((8, 8), False), ((7, 7), True), ((7, 7), False)])
def test_packed_spikes_along_channels(cpu_isa, surrogate, v_reset, detach, steps, hw, grad):
    # Packing along the channels of [T, B, C, H, W]: the forward runs units of 32 channels
    # through every step and packs them from cache when each unit starts on a whole
    # saved-bit group (8x8 images, or nothing saved); 7x7 with a gradient takes a separate
    # pass. 70 channels: a partial last word; T = 12: chunks of a few units per thread.
    kw = dict(decay=0.25, v_threshold=0.5, v_reset=v_reset, surrogate=surrogate, detach_reset=detach)
    x = (torch.randn(steps, 3, 70, *hw) * 0.8).requires_grad_(grad)
    s, v, packed = snnops.lif(x, pack_dim=2, **kw)
    assert torch.equal(packed, reference.pack_spikes(s.detach(), 2))
    rs, rv, _ = run_reference(x.detach(), None, **kw)
    assert torch.equal(s.detach(), rs) and torch.equal(v.detach(), rv)
    if grad:
        g = torch.randn_like(x)
        xr = x.detach().clone().requires_grad_()
        expect, = torch.autograd.grad(run_reference(xr, None, return_membrane=False, **kw)[0], xr, g)
        torch.testing.assert_close(torch.autograd.grad(s, x, g)[0], expect, rtol=1e-5, atol=1e-5)


def test_packed_spikes_feed_a_spike_layer():
    x = (torch.randn(3, 4, 40) * 0.8).requires_grad_()
    w = torch.randn(7, 40, requires_grad=True)
    s, _, packed = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True, pack_dim=-1)
    y = snnops.spike_linear(packed, w, spikes_float=s)
    torch.testing.assert_close(y, s @ w.t())
    gx_packed, gw_packed = torch.autograd.grad(y.square().sum(), [x, w])
    s2, _ = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)
    gx, gw = torch.autograd.grad((s2 @ w.t()).square().sum(), [x, w])
    torch.testing.assert_close(gx_packed, gx)
    torch.testing.assert_close(gw_packed, gw)


@pytest.mark.parametrize("dim", [0, 3, -3, 1.5])
def test_bad_pack_dim(dim):
    with pytest.raises(ValueError, match="pack_dim"):
        snnops.lif(torch.randn(3, 4, 5), pack_dim=dim)


def test_no_saved_state_without_grad():
    x = torch.randn(4, 100)
    out = torch.ops.snnops.lif_fwd(x, None, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True, False, False, None)
    assert out[3].numel() == 0


def test_threads_give_identical_results():
    x = torch.randn(6, 64, 1000) * 0.8
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="sigmoid")
        torch.set_num_threads(2)
        two = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="sigmoid")
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 12), shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       surrogate=st.sampled_from(SURROGATES), detach=st.booleans(),
       v_reset=st.sampled_from(RESETS), form=st.sampled_from(FORMS),
       v_threshold=st.floats(0.1, 2.0), scale=st.floats(0.1, 3.0), with_v=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_property_random_shapes_and_parameters(steps, shape, surrogate, detach, v_reset, form, v_threshold,
                                                scale, with_v, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([steps] + shape, generator=g) * scale
    v0 = torch.randn(shape, generator=g) * scale if with_v else None
    compare(x, v0, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach, surrogate=surrogate, **form)


def test_module_keeps_state_until_reset():
    x1, x2 = torch.randn(3, 2, 7) * 0.8, torch.randn(4, 2, 7) * 0.8
    m = snnops.nn.LIF(decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True, store_v_seq=True)
    s1, s2 = m(x1), m(x2)
    ref_s, ref_v = run_reference(torch.cat([x1, x2]), None, return_membrane=False, decay=0.25, v_threshold=0.5,
                                 surrogate="rect", detach_reset=True)
    assert torch.equal(torch.cat([s1, s2]), ref_s) and torch.equal(m.v, ref_v)
    assert m.v_seq.shape == x2.shape
    m.reset()
    assert m.v is None
    assert torch.equal(m(x1), s1)
    with pytest.raises(ValueError, match="reset"):
        m(torch.randn(3, 5, 7))


def test_module_packed_output():
    m = snnops.nn.LIF(decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True, pack_dim=2)
    x = torch.randn(2, 3, 40, 4, 4)
    spikes, packed = m(x)
    assert torch.equal(packed, reference.pack_spikes(spikes, 2))


def test_spikingjelly_defaults_and_forms():
    # tau = 2, decay_input, v_threshold = 1, hard reset to 0, sigmoid surrogate
    x = torch.randn(5, 10) * 2
    s, v = snnops.lif(x)
    v_ref = torch.zeros(10)
    spikes = []
    for t in range(5):
        h = v_ref + (x[t] - (v_ref - 0.0)) / 2.0
        st_ = (h >= 1.0).float()
        spikes.append(st_)
        v_ref = h * (1 - st_)
    assert torch.equal(s, torch.stack(spikes))
    torch.testing.assert_close(v, v_ref)
    assert snnops.surrogate.get("sigmoid") == S.Sigmoid(4.0)


class _FakeSJSigmoid:  # stands in for spikingjelly.activation_based.surrogate.Sigmoid
    def __init__(self, alpha):
        self.alpha = alpha


def test_numbers_of_other_types_are_the_same_parameters():
    np = pytest.importorskip("numpy")
    x = torch.randn(5, 10)
    want = snnops.lif(x, tau=2.0, v_threshold=0.5, decay_input=True)[0]
    for tau, vth, flag in ((2, np.float32(0.5), 1), (np.float64(2.0), torch.tensor(0.5), np.bool_(True))):
        assert torch.equal(snnops.lif(x, tau=tau, v_threshold=vth, decay_input=flag)[0], want)


def test_spikingjelly_surrogate_object_is_accepted():
    _FakeSJSigmoid.__name__ = "Sigmoid"
    assert S.get(_FakeSJSigmoid(2.5)) == S.Sigmoid(2.5)


@pytest.mark.parametrize("call,match", [
    (lambda: snnops.lif(torch.tensor(1.0)), "x_seq.*time dimension"),
    (lambda: snnops.lif(torch.ones(3, 4, dtype=torch.int32)), "x_seq.*floating point"),
    (lambda: snnops.lif(torch.ones(3, 4), torch.zeros(5)), "v must have the shape"),
    (lambda: snnops.lif(torch.ones(3, 4), tau=1.0), "tau must be"),
    (lambda: snnops.lif(torch.ones(3, 4), tau=0.5), "tau must be"),
    (lambda: snnops.lif(torch.ones(3, 4), surrogate="nope"), "unknown name 'nope'"),
    (lambda: snnops.lif(torch.ones(3, 4), surrogate=S.Rectangular(0.0)), "width must be a positive"),
    (lambda: snnops.lif(torch.ones(3, 4), surrogate=S.ATan(-1.0)), "alpha must be a positive"),
    (lambda: snnops.lif(torch.ones(3, 4), decay=1.5), "decay must be in"),
    (lambda: snnops.lif(torch.ones(3, 4), decay=0.5, tau=2.0), "either tau"),
    (lambda: snnops.nn.LIF(tau=1.0), "tau must be"),
    (lambda: snnops.lif(torch.ones(3, 4), surrogate="triangle", v_threshold=0.0), "v_threshold > 0"),
    (lambda: snnops.lif(torch.ones(3, 4), tau="2"), "tau must be a number, got str"),
    (lambda: snnops.lif(torch.ones(3, 4), decay=True), "decay must be a number, got bool"),
    (lambda: snnops.lif(torch.ones(3, 4), v_threshold=torch.tensor(0.5, requires_grad=True)),
     "v_threshold is a tensor that requires grad"),
    (lambda: snnops.lif(torch.ones(3, 4), v_reset=torch.zeros(2)), "v_reset must be a number"),
    (lambda: snnops.lif(torch.ones(3, 4), decay_input="yes"), "decay_input must be True or False"),
    (lambda: snnops.lif(torch.ones(3, 4), detach_reset=None), "detach_reset must be True or False"),
    (lambda: snnops.nn.LIF(store_v_seq="no"), "store_v_seq must be True or False"),
    (lambda: snnops.nn.LIF(pack_dim=2.0), "pack_dim must be an integer"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(12, 16)
            self.fc2 = torch.nn.Linear(16, 3)

        def forward(self, x):  # x: [T, B, 12]
            s, _ = snnops.lif(self.fc1(x), decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)
            s2, _ = snnops.lif(s * 2.0, tau=2.0, surrogate="atan")
            return self.fc2(s2).mean(0)

    net = Net()
    x = torch.randn(4, 5, 12)
    compiled = torch.compile(net, fullgraph=True)
    out_c = compiled(x)
    out_e = net(x)
    torch.testing.assert_close(out_c, out_e)
    gc = torch.autograd.grad(out_c.sum(), list(net.parameters()))
    ge = torch.autograd.grad(out_e.sum(), list(net.parameters()))
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def _past_2_31_input(steps):
    """[steps, 2^31 // steps + 3]: more than 2^31 elements, a pattern whose spikes differ
    along both axes."""
    n = 2**31 // steps + 3
    x = torch.empty(steps, n)
    assert x.numel() > 2**31
    x.copy_(torch.linspace(0.0, 1.0, 997).repeat(n // 997 + 1)[:n].expand(steps, n))
    x[::3] *= 0.4
    return x


_TT = dict(decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)


@pytest.mark.slow
@pytest.mark.parametrize("steps", [64, 4], ids=["blocked-walk", "register-walk"])
def test_more_than_2_31_elements(steps, large):
    """64 x (2^25 + 3) = 2^31 + 192 elements (or 4 x (2^29 + 3)): every index is 64-bit.
    Forward only (no grad): about 17 GiB for input and spikes."""
    large.need(18)
    x = _past_2_31_input(steps)
    n = x.shape[1]
    with torch.no_grad():
        s, v = snnops.lif(x, **_TT)
    for sl in (slice(0, 100), slice(n - 100, n)):
        rs, rv = run_reference(x[:, sl].clone(), None, return_membrane=False, **_TT)
        assert torch.equal(s[:, sl], rs) and torch.equal(v[sl], rv)


@pytest.mark.slow
def test_backward_past_2_31_elements(large):
    """The 2-bit backward over 2^31 + 192 elements. The saved bits are all it reads, so x
    and the spikes are freed first: about 17 GiB for the incoming and outgoing gradient."""
    large.need(18)
    x = _past_2_31_input(64)
    steps, n = x.shape
    p = (0.25, 1.0, 0.5, 0.0, 0, 1.0, True)   # the canonical form of _TT
    saved = torch.ops.snnops.lif_fwd(x, None, *p, False, True, None)[3]
    ends = [(sl, x[:, sl].clone()) for sl in (slice(0, 100), slice(n - 100, n))]
    del x
    g = torch.empty(steps, n)
    g.copy_(torch.linspace(-1.0, 1.0, 991).repeat(n // 991 + 1)[:n].expand(steps, n))
    gx = torch.ops.snnops.lif_bwd(g, None, None, None, None, saved, [steps, n], torch.float32, False, *p)[0]
    for sl, xe in ends:
        xe.requires_grad_()
        s = reference.lif(xe, decay=0.25, input_scale=1.0, v_threshold=0.5, v_reset=0.0, surrogate="rect",
                          detach_reset=True)[0]
        # as the other gradient checks: the kernel's fused multiply-adds round once
        torch.testing.assert_close(gx[:, sl], torch.autograd.grad(s, xe, g[:, sl])[0], rtol=1e-5, atol=1e-5)


def opcheck_samples():
    x = torch.randn(4, 3, 37) * 0.8
    v = torch.randn(3, 37) * 0.3
    for (sg, detach, v_reset, with_v, membrane) in itertools.product(
            [0, 2], [True, False], [0.0, None], [False, True], [False, True]):
        args = (x.clone().requires_grad_(), v.clone().requires_grad_() if with_v else None,
                0.25, 1.0, 0.5, v_reset, sg, 1.0, detach, membrane, True, None)
        yield "lif_fwd", args, {}
    for pack_dim in (1, 2):
        yield "lif_fwd", (x.clone().requires_grad_(), None, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True, False, True,
                          pack_dim), {}
    saved = torch.ops.snnops.lif_fwd(x, None, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True, False, True, None)[3]
    yield "lif_bwd", (torch.randn_like(x), torch.randn(3, 37), None, None, None, saved, [4, 3, 37],
                      torch.float32, False, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True), {}
    yield "lif_bwd", (torch.randn_like(x), None, torch.randn_like(x), x, v, torch.empty(0, dtype=torch.int32),
                      [4, 3, 37], torch.float32, True, 0.5, 0.5, 0.5, None, 3, 4.0, False), {}
