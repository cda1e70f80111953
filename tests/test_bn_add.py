"""Fused tdBN + residual add (``snnops.bn_add``): the C++ kernels (AVX-512, AVX2 and
portable) and the Triton kernels (under the interpreter) against the reference, the
reference against ``F.batch_norm`` + add, autograd (gradcheck, the residual's gradient
handed on as is), running statistics, layouts, determinism and errors."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import snnops
from snnops import reference
from snnops.ops.bn_add import bn_add


def _frames(shape, dtype=torch.float32, seed=0, channels_last=True):
    """[..., C, H, W] frames (channels-last unless told) or [M, C] rows, off-centre."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 1.5 + 0.3
    if len(shape) >= 4 and channels_last:
        d = len(shape)
        x = x.permute(*range(d - 3), d - 2, d - 1, d - 3).contiguous().permute(*range(d - 3), d - 1, d - 3, d - 2)
    return x


def _bn_params(c, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + torch.rand(c, generator=g, dtype=dtype), 0.3 * torch.randn(c, generator=g, dtype=dtype),
            0.1 * torch.randn(c, generator=g, dtype=dtype), 0.5 + torch.rand(c, generator=g, dtype=dtype))


def _channels(shape):
    return shape[1] if len(shape) == 2 else shape[-3]


def _is_channels_last_rows(t):
    """t's frames are channels-last and the frames follow each other densely."""
    if t.dim() == 2:
        return t.is_contiguous()
    d = t.dim()
    return t.permute(*range(d - 3), d - 2, d - 1, d - 3).is_contiguous()


# (T, B, C, H, W) frames with C a multiple of 16, odd, not a multiple of 16, tiny;
# [M, C] rows; rows over several statistics blocks (256 rows each) with a partial one.
SHAPES = [(3, 2, 64, 5, 7), (2, 3, 37, 4, 4), (2, 2, 20, 3, 5), (1, 2, 3, 3, 3), (300, 13), (2, 3, 80, 11, 10)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_kernel_matches_reference(cpu_isa, shape, with_residual, training):
    """float32: the same operations in the same order; only the double statistics sums
    are added in another order (blocks vs torch.sum), which can move a float32 mean,
    invstd, scale or k-coefficient by one rounding: tolerances of a few float32 ulps."""
    z = _frames(shape)
    r = _frames(shape, seed=7) if with_residual else None
    w, b, rm, rv = _bn_params(_channels(shape))
    got = torch.ops.snnops.bn_add_fwd(z, r, w, b, rm, rv, training, 1e-5)
    want = reference.bn_add_fwd(z, r, w, b, rm, rv, training, 1e-5)
    assert got[0].shape == z.shape and got[0].stride() == want[0].stride() and _is_channels_last_rows(got[0])
    for g, e in zip(got, want):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=2e-6, atol=2e-6)
    gy = _frames(shape, seed=3)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        out = torch.ops.snnops.bn_add_bwd(gy, z, w, got[1], got[2], training, mask)
        ref = reference.bn_add_bwd(gy, z, w, got[1], got[2], training, mask)
        for m, g, e in zip(mask, out, ref):
            assert g.shape == e.shape and (m or g.numel() == 0)
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        if mask[0]:
            assert out[0].stride() == ref[0].stride()


def test_same_bits_on_every_code_path_and_thread_count(monkeypatch):
    """Deterministic: fixed blocks of rows, double sums combined in block order; the
    AVX-512, AVX2 and portable kernels add the same values in the same order."""
    shape = (4, 3, 80, 13, 11)   # 1716 rows: 7 statistics blocks, the last partial
    z, r, gy = _frames(shape), _frames(shape, seed=5), _frames(shape, seed=6)
    w, b, _, _ = _bn_params(80)
    results = []
    threads = torch.get_num_threads()
    try:
        for isa in [None, "avx2", "generic"]:
            if isa is None:
                monkeypatch.delenv("SNNOPS_CPU_ISA", raising=False)
            else:
                monkeypatch.setenv("SNNOPS_CPU_ISA", isa)
            for n in (1, 2):
                torch.set_num_threads(n)
                y, mean, invstd, var = torch.ops.snnops.bn_add_fwd(z, r, w, b, None, None, True, 1e-5)
                results.append((y, mean, invstd, var,
                                *torch.ops.snnops.bn_add_bwd(gy, z, w, mean, invstd, True, [True, True, True])))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, o in zip(results[0], other):
            assert torch.equal(a, o)


def test_float64(cpu_isa):
    shape = (2, 3, 24, 4, 5)
    z, r = _frames(shape, torch.float64), _frames(shape, torch.float64, seed=2)
    w, b, rm, rv = _bn_params(24, torch.float64)
    got = torch.ops.snnops.bn_add_fwd(z, r, w, b, rm, rv, True, 1e-5)
    want = reference.bn_add_fwd(z, r, w, b, rm, rv, True, 1e-5)
    for g, e in zip(got, want):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    gy = torch.randn(shape, dtype=torch.float64)
    for g, e in zip(torch.ops.snnops.bn_add_bwd(gy, z, w, got[1], got[2], True, [True, True, True]),
                    reference.bn_add_bwd(gy, z, w, got[1], got[2], True, [True, True, True])):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_residual", [True, False])
def test_equals_batch_norm_plus_add(with_residual):
    """The public op is F.batch_norm (statistics over T, B, H, W) plus the residual: in
    float64 outputs, all four gradients and the running statistics agree to rounding."""
    steps, batch, c, h, w = 3, 2, 12, 5, 4
    z = _frames((steps, batch, c, h, w), torch.float64).requires_grad_()
    res = _frames((steps, batch, c, h, w), torch.float64, seed=4).requires_grad_() if with_residual else None
    weight, bias, _, _ = (t.requires_grad_() for t in _bn_params(c, torch.float64))
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    y = bn_add(z, res, weight, bias, rm, rv, True, 0.1, 1e-5)
    rm2, rv2 = torch.zeros_like(rm), torch.ones_like(rv)
    ref = F.batch_norm(z.flatten(0, 1), rm2, rv2, weight, bias, True, 0.1, 1e-5).unflatten(0, (steps, batch))
    if with_residual:
        ref = ref + res
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm, rm2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rv, rv2, rtol=1e-12, atol=1e-14)
    g = torch.randn_like(ref)
    inputs = [z, weight, bias] + ([res] if with_residual else [])
    for a, e in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    # eval: the running statistics, unchanged by the call
    before = rm.clone()
    y = bn_add(z, res, weight, bias, rm, rv, False)
    ref = F.batch_norm(z.flatten(0, 1), rm, rv, weight, bias, False, 0.1, 1e-5).unflatten(0, (steps, batch))
    torch.testing.assert_close(y, ref + res if with_residual else ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(rm, before)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(training):
    shape = (2, 2, 5, 3, 2)
    z = _frames(shape, torch.float64).requires_grad_()
    res = _frames(shape, torch.float64, seed=3).requires_grad_()
    w, b, rm, rv = (t.requires_grad_(i < 2) for i, t in enumerate(_bn_params(5, torch.float64)))
    assert torch.autograd.gradcheck(lambda *a: bn_add(*a, rm.clone(), rv.clone(), training), (z, res, w, b))
    assert torch.autograd.gradcheck(lambda *a: bn_add(a[0], None, *a[1:], rm.clone(), rv.clone(), training),
                                    (z, w, b))
    # rows [M, C] through the op itself
    zr = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z_, w_, b_: torch.ops.snnops.bn_add_fwd(z_, None, w_, b_, rm[:3], rv[:3], training, 1e-5)[0],
        (zr, w[:3].detach().requires_grad_(), b[:3].detach().requires_grad_()))


def test_residual_gradient_is_the_output_gradient_itself():
    """No copy, no view: the residual receives the very tensor that arrived as y's
    gradient, so autograd can add the block input's other gradient into it in place."""
    shape = (2, 2, 16, 4, 4)
    z, res = _frames(shape).requires_grad_(), _frames(shape, seed=2).requires_grad_()
    w, b, rm, rv = _bn_params(16)
    seen = {}
    mid = res * 1.0
    mid.register_hook(lambda g: seen.setdefault("residual", g))
    y = bn_add(z, mid, w, b, rm, rv, True)
    out = y * 1.0
    y.register_hook(lambda g: seen.setdefault("y", g))
    out.backward(_frames(shape, seed=9))
    assert seen["residual"] is seen["y"] or (seen["residual"].data_ptr() == seen["y"].data_ptr()
                                             and seen["residual"].stride() == seen["y"].stride())
    assert seen["residual"]._base is None


def test_layouts_empty_and_non_contiguous():
    w, b, rm, rv = _bn_params(6)
    # frames in NCHW order: copied once, the output still channels-last, same values
    z_nchw = _frames((2, 3, 6, 4, 5), channels_last=False)
    z_cl = _frames((2, 3, 6, 4, 5))
    assert torch.equal(z_nchw, z_cl)
    r = _frames((2, 3, 6, 4, 5), seed=3, channels_last=False)
    a = bn_add(z_nchw, r, w, b, rm.clone(), rv.clone(), True)
    c = bn_add(z_cl, r.contiguous(memory_format=torch.contiguous_format), w, b, rm.clone(), rv.clone(), True)
    assert torch.equal(a, c) and _is_channels_last_rows(a)
    # a residual broadcast over T (read in place, each step's rows again) or over B (copied)
    one = _frames((1, 3, 6, 4, 5), seed=4)
    for res in (one.expand(2, -1, -1, -1, -1), one[:, :1].expand(2, 3, -1, -1, -1)):
        got = bn_add(z_cl, res, w, b, rm.clone(), rv.clone(), True)
        assert torch.equal(got, bn_add(z_cl, res.contiguous(memory_format=torch.contiguous_format), w, b, rm.clone(),
                                       rv.clone(), True))
    # a strided view (every other row of a bigger tensor) as [M, C] rows
    big = torch.randn(40, 6)
    y = torch.ops.snnops.bn_add_fwd(big[::2], None, w, b, rm, rv, True, 1e-5)
    want = reference.bn_add_fwd(big[::2].contiguous(), None, w, b, rm, rv, True, 1e-5)
    torch.testing.assert_close(y[0], want[0], rtol=2e-6, atol=2e-6)
    # empty M in eval mode: empty output; its backward gives zero weight / bias gradients
    empty = torch.zeros(2, 0, 6, 3, 3)
    y, mean, invstd, _ = torch.ops.snnops.bn_add_fwd(empty, empty, w, b, rm, rv, False, 1e-5)
    assert y.shape == empty.shape
    torch.testing.assert_close(invstd, 1 / torch.sqrt(rv + 1e-5))
    gz, gw, gb = torch.ops.snnops.bn_add_bwd(empty, empty, w, mean, invstd, False, [True, True, True])
    assert gz.shape == empty.shape and torch.equal(gw, torch.zeros(6)) and torch.equal(gb, torch.zeros(6))


def test_errors():
    w, b, rm, rv = _bn_params(4)
    z = torch.randn(2, 1, 4, 3, 3)
    with pytest.raises(ValueError, match=r"z must be a \[T, B, C, H, W\]"):
        bn_add(torch.randn(2, 4, 3, 3), None, w, b, rm, rv, True)
    with pytest.raises(TypeError, match="float32 or float64"):
        bn_add(z.long(), None, w, b, rm, rv, True)
    with pytest.raises(ValueError, match=r"residual must have z's shape"):
        bn_add(z, torch.randn(2, 1, 4, 3, 2), w, b, rm, rv, True)
    with pytest.raises(TypeError, match="residual must have z's dtype"):
        bn_add(z, z.double(), w, b, rm, rv, True)
    with pytest.raises(ValueError, match=r"weight must be a \[5\]"):
        bn_add(torch.randn(2, 1, 5, 3, 3), None, w, b, rm, rv, True)
    with pytest.raises(ValueError, match=r"running_var must be a \[4\] tensor or None"):
        bn_add(z, None, w, b, rm, torch.ones(3), True)
    with pytest.raises(ValueError, match="eval mode needs running_mean"):
        bn_add(z, None, w, b, None, None, False)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn_add(torch.randn(1, 1, 4, 1, 1), None, w, b, rm, rv, True)
    with pytest.raises(ValueError, match="momentum must be in"):
        bn_add(z, None, w, b, rm, rv, True, momentum=2.0)
    with pytest.raises(ValueError, match="None \\(a cumulative average\\) is not supported"):
        bn_add(z, None, w, b, rm, rv, True, momentum=None)
    with pytest.raises(TypeError, match="eps must be a number, got str"):
        bn_add(z, None, w, b, rm, rv, True, eps="1e-5")
    with pytest.raises(TypeError, match="training must be True or False"):
        bn_add(z, None, w, b, rm, rv, "no")
    # the op itself (C++: RuntimeError; the reference, without the extension: ValueError)
    errors = (RuntimeError, ValueError)
    with pytest.raises(errors, match="training-mode statistics need at least one value"):
        torch.ops.snnops.bn_add_fwd(torch.zeros(0, 4), None, w, b, rm, rv, True, 1e-5)
    with pytest.raises(errors, match="z must be rows"):
        torch.ops.snnops.bn_add_fwd(torch.zeros(4), None, w, b, rm, rv, True, 1e-5)
    with pytest.raises(errors, match="need.? 5 entries"):
        torch.ops.snnops.bn_add_fwd(torch.zeros(3, 5), None, w, b, rm, rv, True, 1e-5)
    with pytest.raises(errors, match="residual must have z's shape"):
        torch.ops.snnops.bn_add_fwd(torch.zeros(3, 4), torch.zeros(2, 4), w, b, rm, rv, True, 1e-5)
    with pytest.raises(errors, match="eval mode needs running_mean and running_var"):
        torch.ops.snnops.bn_add_fwd(torch.zeros(3, 4), None, w, b, None, None, False, 1e-5)
    with pytest.raises(errors, match="grad_y must have z's shape"):
        torch.ops.snnops.bn_add_bwd(torch.zeros(3, 5), torch.zeros(3, 4), w, rm, rv, True, [True, True, True])


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(8)

        def forward(self, x):  # [T, B, C, H, W]
            z = self.conv(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            return bn_add(z, x, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var,
                          self.training).sum((2, 3, 4))

    net = Block()
    x = _frames((2, 3, 8, 5, 5))
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out_c = compiled(x)
    rm_c = net.bn.running_mean.clone()
    net.bn.running_mean.zero_()
    net.bn.running_var.fill_(1.0)
    out_e = net(x)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(rm_c, net.bn.running_mean)
    params = list(net.parameters())
    for a, e in zip(torch.autograd.grad(out_c.sum(), params), torch.autograd.grad(out_e.sum(), params)):
        torch.testing.assert_close(a, e)


# ---------------------------------------------------------------------------- Triton kernels
# The CUDA implementation (kernels/bn_add.py) on CPU tensors through Triton's interpreter.
# Tolerances: mean / var come from float32 Chan partials merged in float64, rounded to
# float32 before scale and shift (the reference: double sums, scale from the double
# statistics): y differs by a few float32 ulps of its terms. Gradient sums are float32
# tile sums merged in float64 (reference: double over all rows).

def _triton():
    return pytest.importorskip("snnops.kernels.bn_add", reason="triton is not installed")


@pytest.mark.parametrize("shape,with_residual,training", [
    ((2, 3, 20, 3, 3), True, True), ((2, 2, 37, 2, 3), False, True), ((40, 70), True, False)])
def test_triton_matches_reference(shape, with_residual, training):
    """Odd C (37), C not a multiple of 16 (20), two channel blocks (70)."""
    k = _triton()
    z = _frames(shape)
    r = _frames(shape, seed=2) if with_residual else None
    w, b, rm, rv = _bn_params(_channels(shape))
    got = k.bn_add_fwd(z, r, w, b, rm, rv, training, 1e-5)
    want = reference.bn_add_fwd(z, r, w, b, rm, rv, training, 1e-5)
    for g, e in zip(got, want):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert got[0].stride() == want[0].stride()
    gy = _frames(shape, seed=3)
    for mask in ([True, True, True], [False, True, False]):
        out = k.bn_add_bwd(gy, z, w, got[1], got[2], training, mask)
        for g, e in zip(out, reference.bn_add_bwd(gy, z, w, got[1], got[2], training, mask)):
            assert g.dtype == e.dtype and g.shape == e.shape
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_triton_half_empty_float64_and_errors():
    k = _triton()
    w, b, rm, rv = _bn_params(8)
    zh = _frames((2, 2, 8, 3, 3)).half()
    got = k.bn_add_fwd(zh, zh, w, b, None, None, True, 1e-5)
    want = reference.bn_add_fwd(zh, zh, w, b, None, None, True, 1e-5)
    assert got[0].dtype == torch.float16 and got[1].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=2e-3)   # float16 output rounding
    empty = torch.zeros(0, 8)
    y, mean, invstd, _ = k.bn_add_fwd(empty, None, w, b, rm, rv, False, 1e-5)
    assert y.shape == (0, 8)
    gz, gw, gb = k.bn_add_bwd(empty, empty, w, mean, invstd, False, [True, True, True])
    assert gz.shape == (0, 8) and torch.equal(gw, torch.zeros(8)) and torch.equal(gb, torch.zeros(8))
    z64 = _frames((2, 5, 8), torch.float64).flatten(0, 1)
    w64, b64, rm64, rv64 = _bn_params(8, torch.float64)
    assert k.bn_add_fwd(z64, None, w64, b64, rm64, rv64, True, 1e-5)[0].dtype == torch.float64
    with pytest.raises(ValueError, match="at least one value per channel"):
        k.bn_add_fwd(empty, None, w, b, rm, rv, True, 1e-5)
    with pytest.raises(ValueError, match="weight and bias need 9 entries"):
        k.bn_add_fwd(torch.zeros(3, 9), None, w, b, rm, rv, True, 1e-5)
    with pytest.raises(ValueError, match="residual must have z's shape"):
        k.bn_add_fwd(torch.zeros(3, 8), torch.zeros(2, 8), w, b, rm, rv, True, 1e-5)
    with pytest.raises(ValueError, match="eval mode needs running_mean"):
        k.bn_add_fwd(torch.zeros(3, 8), None, w, b, None, None, False, 1e-5)


def test_triton_is_the_registered_cuda_implementation():
    _triton()
    ops = importlib.import_module("snnops.ops.bn_add")
    assert snnops.backends()["bn_add_fwd"]["cuda"] == "triton" and snnops.backends()["bn_add_bwd"]["cuda"] == "triton"
    z = _frames((2, 2, 16, 2, 2))
    w, b, rm, rv = _bn_params(16)
    got = ops._triton_fwd(z, z, w, b, rm, rv, True, 1e-5)
    torch.testing.assert_close(got[0], reference.bn_add_fwd(z, z, w, b, rm, rv, True, 1e-5)[0], rtol=1e-5, atol=1e-5)
    out = ops._triton_bwd(z, z, w, got[1], got[2], True, [True, True, True])
    for g, e in zip(out, reference.bn_add_bwd(z, z, w, got[1], got[2], True, [True, True, True])):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def opcheck_samples():
    z = _frames((2, 3, 16, 3, 4))
    r = _frames((2, 3, 16, 3, 4), seed=2)
    w, b, rm, rv = _bn_params(16)
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    yield "bn_add_fwd", (z.clone().requires_grad_(), r.clone().requires_grad_(), wg, bg, rm, rv, True, 1e-5), {}
    yield "bn_add_fwd", (z, None, w, b, rm, rv, False, 1e-5), {}
    yield "bn_add_fwd", (torch.randn(20, 5).requires_grad_(), None, wg[:5].detach().requires_grad_(),
                         b[:5], None, None, True, 1e-5), {}
    out = reference.bn_add_fwd(z, r, w, b, rm, rv, True, 1e-5)
    yield "bn_add_bwd", (_frames((2, 3, 16, 3, 4), seed=3), z, w, out[1], out[2], True, [True, True, True]), {}
    yield "bn_add_bwd", (_frames((2, 3, 16, 3, 4), seed=3), z, w, out[1], out[2], False, [True, False, True]), {}


@pytest.mark.slow
def test_past_2_31_elements(large):
    """(2^25 + 16) x 64 = 2^31 + 1024 rows' elements, tiled from 997 random rows (about
    17 GiB: two tensors of this size at a time). The forward in eval mode on the rows around
    the start, flat element 2^31 and the end; training mode's statistics, and the weight
    and bias gradients (sums over every row), against the exact sums of the tiling. The
    input gradient would need a third such tensor, more than this machine has."""
    large.need(18)
    rows, c = 2**25 + 16, 64
    zb, gb = _frames((997, c)), _frames((997, c), seed=3)
    z = large.tile(zb, rows)
    w, b, rm, rv = _bn_params(c)
    y = torch.ops.snnops.bn_add_fwd(z, None, w, b, rm, rv, False, 1e-5)[0]
    for sl in large.rows(rows, c):
        torch.testing.assert_close(y[sl], reference.bn_add_fwd(z[sl], None, w, b, rm, rv, False, 1e-5)[0],
                                   rtol=2e-6, atol=2e-6)
    del y
    mean, invstd, var = torch.ops.snnops.bn_add_fwd(z, None, w, b, None, None, True, 1e-5)[1:]
    whole, rest = divmod(rows, 997)

    def tiled_sum(v):  # v: per block row, [997, C] float64
        return whole * v.sum(0) + v[:rest].sum(0)
    zd = zb.double()
    exact_mean = tiled_sum(zd) / rows
    exact_var = tiled_sum((zd - exact_mean) ** 2) / rows
    torch.testing.assert_close(mean.double(), exact_mean, rtol=1e-6, atol=1e-7)  # float32 of double sums
    torch.testing.assert_close(var.double(), exact_var, rtol=1e-6, atol=1e-7)
    gy = large.tile(gb, rows)
    _, gw, gbias = torch.ops.snnops.bn_add_bwd(gy, z, w, mean, invstd, True, [False, True, True])
    # the reference's terms: float32 products summed in float64
    terms = (gb * (zb - mean)).double()
    ist = invstd.double()
    torch.testing.assert_close(gw.double(), tiled_sum(terms) * ist, rtol=1e-6,
                               atol=float((tiled_sum(terms.abs()) * ist).max()) * 2**-40)
    torch.testing.assert_close(gbias.double(), tiled_sum(gb.double()), rtol=1e-6,
                               atol=float(tiled_sum(gb.double().abs()).max()) * 2**-40)


def test_no_channels_in_training():
    """C = 0: an empty output and gradient, the (empty) running statistics untouched."""
    z = torch.zeros(2, 2, 0, 3, 3, requires_grad=True)
    w, b = torch.ones(0, requires_grad=True), torch.zeros(0, requires_grad=True)
    y = bn_add(z, None, w, b, torch.zeros(0), torch.ones(0), True)
    y.sum().backward()
    assert y.shape == z.shape and z.grad.shape == z.shape and w.grad.shape == (0,)
