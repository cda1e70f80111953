"""Spike GEMMs against the dense reference: forward, dS / dW / db, conv1x1, modules,
low-bit weights, compile, Triton under the interpreter, bad input.

Tolerance for float32 results. Y = sum of n terms (the weights selected by the
spikes, plus the bias) in some order; any order of float32 summation is within
n * 2^-24 * sum|terms| of the exact sum (first-order bound), and so is PyTorch's own
dense result. The tests compare against the float64 product with that bound,
n = K + 1 (forward) or M + 1 (dW); a wrong bit or a missed row is off by a whole
weight, far outside it.
"""
import pytest
import torch

import snnops
from snnops import reference
from snnops.reference.spike_gemm import lowbit_dequantize

EPS32 = 2.0 ** -24

SHAPES = [  # (M, K, N)
    (1, 1, 1), (1, 33, 7), (5, 31, 65), (37, 100, 129), (130, 257, 64), (3, 1500, 70),
    (700, 130, 20),  # several row blocks in the dense paths
    (4500, 33, 65),  # two row blocks and a partial column chunk in the outer-product dW
    (0, 40, 5), (6, 0, 5), (6, 40, 0),
]
DENSITIES = (0.0, 0.05, 0.3, 0.7, 1.0)


def _spikes(shape, density):
    return (torch.rand(shape) < density).float()


def _bound(s, w, b, n_terms):
    """Elementwise first-order bound of float32 summation error for s @ w.T + b."""
    mag = s.double() @ w.double().abs().t()
    if b is not None:
        mag = mag + b.double().abs()
    return n_terms * EPS32 * mag + 1e-30


def _assert_close_bound(got, exact, bound):
    err = (got.double() - exact).abs()
    assert bool((err <= bound).all()), f"max err {err.max().item():.3e}, bound there {bound.flatten()[err.argmax()]:.3e}"


def _set_isa(monkeypatch, isa):
    # native: the best kernels of this CPU (AVX-512 accumulation where present);
    # avx2: the AVX2 kernels; generic: the portable ones.
    import snnops as _s
    if isa == "native":
        monkeypatch.delenv("SNNOPS_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("SNNOPS_CPU_ISA", isa)
    if isa == "avx2" and _s.cpu_isa() != "avx2":
        pytest.skip("this CPU (or build) has no AVX2 path")


def _set_path(monkeypatch, path):
    # The C++ op picks bit-scan or dense by density; force each path too.
    if path == "auto":
        monkeypatch.delenv("SNNOPS_SPIKE_GEMM", raising=False)
    else:
        monkeypatch.setenv("SNNOPS_SPIKE_GEMM", path)


@pytest.fixture(params=["native", "avx2", "generic"])
def isa(request, monkeypatch):
    _set_isa(monkeypatch, request.param)
    return request.param


# scan / table: the set-bit lists and the subset-sum tables (AVX-512) at every density.
COMBOS = [("native", "auto"), ("native", "scan"), ("native", "table"), ("native", "dense"), ("avx2", "bits"),
          ("generic", "bits"), ("generic", "dense")]


@pytest.mark.parametrize("isa_path", COMBOS, ids=[f"{i}-{p}" for i, p in COMBOS])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_forward_and_grads_match_reference(monkeypatch, isa_path, M, K, N):
    _set_isa(monkeypatch, isa_path[0])
    _set_path(monkeypatch, isa_path[1])
    w = torch.randn(N, K)
    b = torch.randn(N)
    for density in DENSITIES:
        s = _spikes((M, K), density)
        for bias in (None, b):
            exact = s.double() @ w.double().t() + (0 if bias is None else bias.double())
            bound = _bound(s, w, bias, K + 1)
            _assert_close_bound(snnops.spike_linear(s, w, bias), exact, bound)
            packed = snnops.pack_spikes(s)
            _assert_close_bound(snnops.spike_linear(packed, w, bias), exact, bound)
        # gradients
        sg = s.clone().requires_grad_()
        wg = w.clone().requires_grad_()
        bg = b.clone().requires_grad_()
        gy = torch.randn(M, N)
        (snnops.spike_linear(sg, wg, bg) * gy).sum().backward()
        gexact = gy.double().t() @ s.double()
        gbound = M * EPS32 * (gy.double().abs().t() @ s.double()) + 1e-30
        _assert_close_bound(wg.grad, gexact, gbound)
        torch.testing.assert_close(sg.grad, gy @ w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bg.grad, gy.sum(0))


def test_double_kernels_and_gradcheck():
    # float64 runs the portable kernel on every CPU
    torch.manual_seed(3)
    s = _spikes((6, 45), 0.3).double()
    w = torch.randn(7, 45, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(snnops.spike_linear(s, w, b), s @ w.t() + b, rtol=1e-12, atol=1e-12)
    # Spikes are 0/1, so finite differences can only move the weight and the bias;
    # dS = dY W is checked against the dense reference in the test above.
    assert torch.autograd.gradcheck(lambda w_, b_: snnops.spike_linear(s, w_, b_), (w, b))
    p = snnops.pack_spikes(s)
    assert torch.autograd.gradcheck(lambda w_, b_: snnops.spike_linear(p, w_, b_), (w, b))
    x = _spikes((2, 40, 3, 3), 0.4).double()
    wc = torch.randn(5, 40, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w_, b_: snnops.spike_conv1x1(x, w_, b_), (wc, b[:5].detach().requires_grad_()))


@pytest.mark.parametrize("M,density", [(300, 0.1), (4500, 0.5)])  # 4500: two row blocks of the dW partials
def test_same_result_with_1_and_2_threads(M, density):
    s = _spikes((M, 200), density)
    w = torch.randn(150, 200)
    g = torch.randn(M, 150)
    old = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            wg = w.clone().requires_grad_()
            y = snnops.spike_linear(s, wg)
            y.backward(g)
            outs.append((y, wg.grad))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_strided_inputs_and_batch_dims(isa):
    s = _spikes((3, 4, 70), 0.2)
    w_big = torch.randn(70, 90)
    w = w_big[:, :45].t()  # [45, 70], a non-contiguous view
    b = torch.randn(45)
    exact = s.double() @ w.double().t() + b.double()
    _assert_close_bound(snnops.spike_linear(s, w, b), exact, _bound(s.reshape(-1, 70), w, b, 71).reshape(exact.shape))
    st = _spikes((70, 12), 0.2).t()  # non-contiguous spikes
    _assert_close_bound(snnops.spike_linear(st, w), st.double() @ w.double().t(), _bound(st, w, None, 71))


def test_dtypes():
    s = _spikes((9, 50), 0.3)
    w = torch.randn(11, 50)
    for dt in (torch.float16, torch.bfloat16):
        y = snnops.spike_linear(s, w.to(dt))
        assert y.dtype == dt
        torch.testing.assert_close(y.float(), (s @ w.to(dt).float().t()).to(dt).float())
    y = snnops.spike_linear(s.bool(), w)
    torch.testing.assert_close(y, s @ w.t())
    sh = s.half().requires_grad_()
    snnops.spike_linear(sh, w).sum().backward()
    assert sh.grad.dtype == torch.float16


@pytest.mark.parametrize("shape,stride", [((2, 40, 5, 6), 1), ((3, 2, 33, 4, 4), 1), ((2, 64, 7, 7), 2),
                                          ((1, 130, 3, 5), (1, 2))])
def test_conv1x1(isa, shape, stride):
    x = _spikes(shape, 0.2)
    c = shape[-3]
    w = torch.randn(17, c, 1, 1)
    b = torch.randn(17)
    want = reference.spike_conv1x1(x, w, b, stride=stride)
    got = snnops.spike_conv1x1(x, w, b, stride=stride)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got2 = snnops.spike_conv1x1(x, w.reshape(17, c), b, stride=stride)
    torch.testing.assert_close(got2, got, rtol=0, atol=0)
    xp = snnops.pack_spikes(x, -3)
    torch.testing.assert_close(snnops.spike_conv1x1(xp, w, b, stride=stride), got, rtol=0, atol=0)
    if len(shape) == 4:
        torch.testing.assert_close(snnops.spike_conv1x1(x.to(memory_format=torch.channels_last), w, b, stride=stride),
                                   got, rtol=0, atol=0)
    # gradients against the dense convolution
    xg = x.clone().requires_grad_()
    wg = w.clone().requires_grad_()
    bg = b.clone().requires_grad_()
    gy = torch.randn_like(want)
    (snnops.spike_conv1x1(xg, wg, bg, stride=stride) * gy).sum().backward()
    xr = x.clone().requires_grad_()
    wr = w.clone().requires_grad_()
    br = b.clone().requires_grad_()
    (reference.spike_conv1x1(xr, wr, br, stride=stride) * gy).sum().backward()
    for a, r in ((xg, xr), (wg, wr), (bg, br)):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-4)


def test_packed_input_routes_gradient_to_float_spikes():
    s = _spikes((8, 70), 0.3).requires_grad_()
    w = torch.randn(20, 70, requires_grad=True)
    p = snnops.pack_spikes(s.detach())
    y = snnops.spike_linear(p, w, spikes_float=s)
    gy = torch.randn_like(y)
    y.backward(gy)
    torch.testing.assert_close(s.grad, gy @ w.detach())
    torch.testing.assert_close(w.grad, gy.t() @ s.detach(), rtol=1e-5, atol=1e-5)
    x = _spikes((2, 40, 4, 4), 0.3).requires_grad_()
    wc = torch.randn(9, 40, 1, 1)
    xp = snnops.pack_spikes(x.detach(), 1)
    snnops.spike_conv1x1(xp, wc, spikes_float=x, stride=2).sum().backward()
    xr = x.detach().clone().requires_grad_()
    reference.spike_conv1x1(xr, wc, stride=2).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_only_packed_spikes_are_saved():
    s = _spikes((64, 256), 0.1).requires_grad_()
    lin = snnops.nn.SpikeLinear(256, 32)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = lin(s)
    activations = [t for t in saved if t.data_ptr() != lin.weight.data_ptr()]
    assert len(activations) == 1 and activations[0].dtype == torch.int32
    assert activations[0].numel() * 4 * 32 == s.numel() * 4
    y.sum().backward()


def test_modules_are_drop_in():
    lin = torch.nn.Linear(70, 30)
    slin = snnops.nn.SpikeLinear(70, 30)
    slin.load_state_dict(lin.state_dict())
    s = _spikes((4, 5, 70), 0.3)
    torch.testing.assert_close(slin(s), lin(s), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(snnops.nn.SpikeLinear.from_linear(lin)(s), lin(s), rtol=1e-5, atol=1e-5)
    conv = torch.nn.Conv2d(40, 24, 1, stride=2, bias=False)
    sconv = snnops.nn.SpikeConv1x1(40, 24, bias=False, stride=2)
    sconv.load_state_dict(conv.state_dict())
    x = _spikes((2, 40, 6, 6), 0.3)
    torch.testing.assert_close(sconv(x), conv(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(snnops.nn.SpikeConv1x1.from_conv(conv)(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1x1 convolution with no padding"):
        snnops.nn.SpikeConv1x1.from_conv(torch.nn.Conv2d(4, 4, 3))


def test_compile_spiking_mlp_fullgraph():
    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(20, 48)
            self.fc2 = snnops.nn.SpikeLinear(48, 40)
            self.fc3 = snnops.nn.SpikeLinear(40, 10)

        def forward(self, x):  # x: [T, B, 20]
            s1, _ = snnops.lif(self.fc1(x), decay=0.25, v_reset=None, surrogate="atan")
            s2, _ = snnops.lif(self.fc2(s1), decay=0.25, v_reset=None, surrogate="atan")
            return self.fc3(s2).mean(0)

    model = MLP()
    x = torch.randn(4, 8, 20) * 3
    ref_out = model(x)
    ref_out.square().sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref_out)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g)


# ---------------------------------------------------------------------------- low-bit weights

@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_lowbit_equals_float_math_on_dequantized_weights(isa, bits):
    for (M, K, N) in [(5, 70, 9), (3, 300, 17), (6, 700, 5), (1, 1, 1), (0, 40, 3), (4, 33, 0)]:
        w = torch.randn(N, K)
        for per_channel in (False, True):
            mask = torch.rand(N, K) > 0.5 if per_channel else None
            if N == 0 and per_channel:
                continue
            q = snnops.quantize_weight(w, bits, per_channel=per_channel, mask=mask) if N and K > 1 else \
                snnops.lowbit_weight(torch.randint(0, 2 ** bits, (N, K)), 0.0371, bits)
            wd = q.dequantize(torch.float64)
            b = torch.randn(N)
            for density in (0.0, 0.2, 1.0):
                s = _spikes((M, K), density)
                exact = s.double() @ wd.t()
                assert torch.equal(snnops.spike_linear_lowbit(s, q), exact.float())
                assert torch.equal(snnops.spike_linear_lowbit(snnops.pack_spikes(s), q, b), (exact + b.double()).float())


def test_quantizer_follows_the_lite_snn_formula():
    w = torch.randn(12, 64)
    for bits in (1, 2, 4):
        step = snnops.ops.spike_gemm.LITE_STEP[bits] * w.std()
        q_formula = torch.clamp((torch.round(w / step + 0.5) - 0.5) * step, -(2 ** bits / 2 - 0.5) * step,
                                (2 ** bits / 2 - 0.5) * step)
        q = snnops.quantize_weight(w, bits)
        torch.testing.assert_close(q.dequantize(), q_formula, rtol=1e-6, atol=1e-7)
        assert q.codes.min() >= 0 and q.codes.max() < 2 ** bits
    qc = snnops.quantize_weight(w, 2, per_channel=True)
    assert qc.scale.shape == (12,)
    mask = torch.rand(12, 64) > 0.8
    qm = snnops.quantize_weight(w, 4, mask=mask)
    assert bool((qm.dequantize()[~mask] == 0).all())


def test_lowbit_bad_input():
    q = snnops.quantize_weight(torch.randn(4, 40), 2)
    with pytest.raises(ValueError, match="bits must be 1, 2, 3 or 4"):
        snnops.quantize_weight(torch.randn(4, 40), 8)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\]"):
        snnops.lowbit_weight(torch.full((2, 3), 4), 1.0, 2)
    with pytest.raises(ValueError, match=r"spikes must be \[..., 40\]"):
        snnops.spike_linear_lowbit(torch.zeros(3, 41), q)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        snnops.spike_linear_lowbit(torch.zeros(3, 40), torch.zeros(4, 40))
    with pytest.raises(ValueError, match="step must be finite and > 0"):
        snnops.quantize_weight(torch.ones(4, 40), 2)
    with pytest.raises(RuntimeError, match="only 0 or 1"):
        snnops.spike_linear_lowbit(torch.full((3, 40), 0.5), q)
    with pytest.raises(TypeError, match="per_channel must be True or False"):
        snnops.quantize_weight(torch.randn(4, 40), 2, per_channel="no")
    with pytest.raises(TypeError, match="step must be a number, got str"):
        snnops.quantize_weight(torch.randn(4, 40), 2, step="0.1")


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("isa_name", ["native", "avx2", "generic"])
def test_non_binary_found_while_packing_inside_the_product(monkeypatch, isa_name):
    # Sparse float32 rows with an output of one column chunk take the fused pack+multiply
    # path; a bad value there is reported like the packing op reports it.
    _set_isa(monkeypatch, isa_name)
    for path, density in (("auto", 0.05), ("auto", 0.8), ("dense", 0.8)):  # every path packs the float spikes
        _set_path(monkeypatch, path)
        s = _spikes((3000, 70), density)
        s[2570, 66] = 0.5
        for n in (5, 64, 128, 300):
            with pytest.raises(RuntimeError, match=r"only 0 or 1, found 0.5 at index \(2570, 66\)"):
                snnops.spike_linear(s, torch.randn(n, 70))
    _set_path(monkeypatch, "auto")
    x = _spikes((2, 3, 70), 0.05)
    x[1, 2, 3] = -1
    with pytest.raises(RuntimeError, match=r"found -1 at index \(1, 2, 3\)"):
        snnops.spike_linear(x, torch.randn(8, 70))


def test_bad_input_errors():
    w = torch.randn(5, 40)
    s = _spikes((3, 40), 0.5)
    s_bad = s.clone()
    s_bad[2, 17] = 0.5
    with pytest.raises(RuntimeError, match=r"only 0 or 1, found 0.5 at index \(2, 17\)"):
        snnops.spike_linear(s_bad, w)
    x_bad = _spikes((2, 40, 3, 3), 0.5)
    x_bad[1, 39, 2, 0] = 3
    with pytest.raises(RuntimeError, match=r"found 3 at index \(1, 39, 2, 0\)"):
        snnops.spike_conv1x1(x_bad, torch.randn(4, 40, 1, 1))
    with pytest.raises(ValueError, match=r"40 features.*got shape \(3, 41\)"):
        snnops.spike_linear(torch.zeros(3, 41), w)
    with pytest.raises(ValueError, match=r"ceil\(in_features/32\) = 2 words"):
        snnops.spike_linear(torch.zeros(3, 3, dtype=torch.int32), w)
    with pytest.raises(TypeError, match="weight must be floating point"):
        snnops.spike_linear(s, w.long())
    with pytest.raises(ValueError, match=r"weight must be 2-D"):
        snnops.spike_linear(s, w[0])
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        snnops.spike_linear(s, w, torch.zeros(4))
    with pytest.raises(TypeError, match="spikes must be float or bool"):
        snnops.spike_linear(s.long(), w)
    with pytest.raises(ValueError, match=r"weight must be \[Cout, C, 1, 1\]"):
        snnops.spike_conv1x1(torch.zeros(1, 40, 2, 2), torch.randn(4, 40, 3, 3))
    with pytest.raises(ValueError, match=r"spikes must be \[..., C, H, W\]"):
        snnops.spike_conv1x1(torch.zeros(40, 2), torch.randn(4, 40, 1, 1))
    with pytest.raises(ValueError, match="spikes_float must be the float spikes"):
        snnops.spike_linear(snnops.pack_spikes(s), w, spikes_float=torch.zeros(3, 39))
    with pytest.raises(ValueError, match="stride must be a positive int"):
        snnops.spike_conv1x1(torch.zeros(1, 40, 2, 2), torch.randn(4, 40, 1, 1), stride=0)
    with pytest.raises(RuntimeError, match="in_features = 40"):
        torch.ops.snnops.spike_gemm(torch.zeros(3, 41), w, None, -1)


# ---------------------------------------------------------------------------- Triton (interpreter)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_gemms_interpreter(dtype):
    pytest.importorskip("triton")
    from snnops.kernels import spike_gemm as k
    for M, K, N in [(5, 70, 33), (40, 32, 17)]:
        s = _spikes((M, K), 0.3)
        w = torch.randn(N, K).to(dtype)
        b = torch.randn(N).to(dtype)
        y, p = k.spike_gemm(s, w, b, -1)
        assert torch.equal(p, reference.pack_spikes(s, -1)) and y.dtype == dtype
        want = (s.double() @ w.double().t() + b.double())
        tol = _bound(s, w.float(), b.float(), K + 1) + (0 if dtype == torch.float32 else
                                                       want.abs() * torch.finfo(dtype).eps)
        _assert_close_bound(y, want, tol)
        gy = torch.randn(M, N).to(dtype)
        gs, gw, gb = k.spike_gemm_bwd(gy, p, w, True, True, True)
        gexact = gy.double().t() @ s.double()
        gtol = M * EPS32 * (gy.double().abs().t() @ s.double()) + (0 if dtype == torch.float32 else
                                                                   gexact.abs() * torch.finfo(dtype).eps)
        _assert_close_bound(gw, gexact, gtol + 1e-30)
        torch.testing.assert_close(gs, (gy.float() @ w.float()).to(dtype), rtol=2e-2 if dtype != torch.float32 else 1e-5,
                                   atol=2e-2 if dtype != torch.float32 else 1e-5)
    x = _spikes((2, 40, 3, 3), 0.3)
    wc = torch.randn(6, 40)
    y, _ = k.spike_gemm(x, wc, None, 1)
    torch.testing.assert_close(y.movedim(-1, 1), reference.spike_conv1x1(x, wc), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- opcheck

def opcheck_samples():
    torch.manual_seed(2)
    s = _spikes((6, 45), 0.3)
    w = torch.randn(7, 45, requires_grad=True)
    b = torch.randn(7, requires_grad=True)
    x = _spikes((2, 40, 3, 3), 0.3)
    wc = torch.randn(5, 40, requires_grad=True)
    p = reference.pack_spikes(s, -1)
    yield "spike_gemm", (s, w, b, -1), {}
    yield "spike_gemm", (s.clone().requires_grad_(), w, None, -1), {}
    yield "spike_gemm", (x, wc, None, 1), {}
    yield "spike_gemm_packed", (p, w, b, None, -1), {}
    yield "spike_gemm_packed", (p, w, None, s.clone().requires_grad_(), -1), {}
    yield "spike_gemm_bwd", (torch.randn(6, 7), p, w.detach(), True, True, True), {}
    yield "spike_gemm_bwd", (torch.randn(6, 7), p, w.detach(), False, True, False), {}
    q = snnops.quantize_weight(torch.randn(7, 45), 2, per_channel=True)
    yield "spike_gemm_lowbit", (p, q.planes, q.scale, None, 2), {}
    q4 = snnops.quantize_weight(torch.randn(7, 45), 4)
    yield "spike_gemm_lowbit", (p, q4.planes, q4.scale, torch.randn(7), 4), {}


def _packed_rows_past_2_31(rows, k, large, density=0.1):
    """Packed spikes [rows, ceil(k/32)] tiled from 997 random rows (an odd period: a row
    index wrapped by 2^32 lands on a different row) and the 997 rows as floats."""
    base = (torch.rand(997, k) < density).float()
    return large.tile(snnops.pack_spikes(base, 1), rows), base


def _check_rows(got, packed, base, w, b, large, per_row):
    for sl in large.rows(got.shape[0], per_row):
        s = base[torch.arange(sl.start, sl.stop) % 997]
        _assert_close_bound(got[sl], s.double() @ w.double().t() + (0 if b is None else b.double()),
                            _bound(s, w, b, s.shape[1] + 1))


@pytest.mark.slow
def test_spike_gemm_past_2_31_elements(large):
    """More than 2^31 spikes in (uint8, 2.1 GiB), and more than 2^31 outputs from packed
    spikes (8.3 GiB), with a bias."""
    large.need(12)
    rows, k = 2**26 + 3, 33
    packed, base = _packed_rows_past_2_31(rows, k, large)
    s = snnops.unpack_spikes(packed, k, 1, dtype=torch.uint8)
    w = torch.randn(8, k)
    y, p = torch.ops.snnops.spike_gemm(s, w, None, 1)
    del s
    _check_rows(y, packed, base, w, None, large, k)
    for sl in large.rows(rows, k):
        assert torch.equal(p[sl], packed[sl])
    del y, p
    w, b = torch.randn(33, k), torch.randn(33)
    y = torch.ops.snnops.spike_gemm_packed(packed, w, b, None, 1)
    assert y.numel() > 2**31
    _check_rows(y, packed, base, w, b, large, 33)


@pytest.mark.slow
def test_spike_gemm_backward_and_lowbit_past_2_31_elements(large):
    """dS of more than 2^31 elements (8.3 GiB) with dW and db over 2^26 rows, then
    low-bit weights with more than 2^31 outputs."""
    large.need(12)
    rows, k, n = 2**26 + 3, 33, 8
    packed, base = _packed_rows_past_2_31(rows, k, large)
    w = torch.randn(n, k)
    g = large.tile(torch.randn(997, n), rows)
    gs, gw, gb = torch.ops.snnops.spike_gemm_bwd(g, packed, w, True, True, True)
    assert gs.numel() > 2**31
    for sl in large.rows(rows, k):
        torch.testing.assert_close(gs[sl], g[sl] @ w)   # sums of n = 8 products: float32 tolerance
    del gs
    # every 997-row period contributes the same: the sums are those of one period, times the
    # number of whole periods, plus the partial period (exact in float64)
    whole, rest = divmod(rows, 997)
    gd, sd = g[:997].double(), base.double()
    exact_w = whole * (gd.t() @ sd) + gd[:rest].t() @ sd[:rest]
    exact_b = whole * gd.sum(0) + gd[:rest].sum(0)
    mag_w = whole * (gd.abs().t() @ sd) + gd[:rest].abs().t() @ sd[:rest]
    assert bool(((gw.double() - exact_w).abs() <= rows * EPS32 * mag_w + 1e-30).all())
    assert bool(((gb.double() - exact_b).abs() <= rows * EPS32 * (whole + 1) * gd.abs().sum(0)).all())
    del g
    q = snnops.quantize_weight(torch.randn(33, k), 2)
    y = torch.ops.snnops.spike_gemm_lowbit(packed, q.planes, q.scale, None, 2)
    assert y.numel() > 2**31
    _check_rows(y, packed, base, lowbit_dequantize(q.planes, q.scale, 2, k), None, large, 33)
