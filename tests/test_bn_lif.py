"""Fused tdBN + LIF (``snnops.bn_lif``): the C++ kernels (AVX2 and portable) and the
Triton kernels (under the interpreter, and their compiled GPU code) against the
reference, the reference against ``F.batch_norm`` + the LIF loop, autograd, running
statistics, layouts and errors."""
import importlib

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


@pytest.mark.parametrize("dtype,c", [(torch.float32, 64), (torch.float32, 20), (torch.float64, 24)])
def test_weight_gradients_alone(cpu_isa, dtype, c):
    """Without the input gradient the backward keeps no dy buffer: the weight gradients
    are those of the full backward, bit for bit (the same sums in the same order)."""
    z = _z(3, 11, c, dtype)
    w, b, rm, rv = _bn_params(c, dtype)
    got = torch.ops.snnops.bn_lif_fwd(*_fwd_args(z, w, b, rm, rv, True))
    bargs = (torch.randn(3, 11, c, dtype=dtype), z, w, got[3], got[4], got[1], got[2], True, 0.25, 1.0)
    gz, gw, gb = torch.ops.snnops.bn_lif_bwd(*bargs, [False, True, True])
    _, fw, fb = torch.ops.snnops.bn_lif_bwd(*bargs, [True, True, True])
    assert gz.numel() == 0 and torch.equal(gw, fw) and torch.equal(gb, fb)


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
    with pytest.raises(ValueError, match="running_var must be a \\[4\\] tensor or None"):
        bn_lif(torch.randn(2, 1, 4, 3, 3), w, b, rm, torch.ones(3), True)
    nan = float("nan")
    for kw, match in ((dict(momentum=1.5), "momentum must be in"), (dict(momentum=nan), "momentum must be in"),
                      (dict(eps=-1e-5), "eps must be >= 0"), (dict(decay=-0.5), "decay must be in"),
                      (dict(decay=nan), "decay must be in"), (dict(v_threshold=nan), "v_threshold must be finite"),
                      (dict(v_reset=float("inf")), "v_reset must be finite"), (dict(width=nan), "width must be > 0"),
                      (dict(momentum=None), "None \\(a cumulative average\\) is not supported")):
        with pytest.raises(ValueError, match=match):
            bn_lif(torch.randn(2, 1, 4, 3, 3), w, b, rm.clone(), rv.clone(), True, **kw)
    for kw, match in ((dict(decay="0.25"), "decay must be a number, got str"),
                      (dict(eps=True), "eps must be a number, got bool"),
                      (dict(v_threshold=torch.tensor(0.5, requires_grad=True)), "v_threshold is a tensor that")):
        with pytest.raises(TypeError, match=match):
            bn_lif(torch.randn(2, 1, 4, 3, 3), w, b, rm.clone(), rv.clone(), True, **kw)
    with pytest.raises(TypeError, match="training must be True or False"):
        bn_lif(torch.randn(2, 1, 4, 3, 3), w, b, rm, rv, "no")


# ---------------------------------------------------------------------------- Triton kernels
# The CUDA implementation (kernels/bn_lif.py), run on CPU tensors by Triton's interpreter
# (TRITON_INTERPRET=1, conftest.py). Tolerances: mean / var come from float32 Chan
# partials merged in float64 (reference: double sums), a few float32 ulps apart; dy
# is computed with the reference's float32 operations (bit-exact), its per-channel sums
# are float32 partials over at most T * 32 rows merged in float64, so grad_weight /
# grad_bias and dz (through k1 = sum/N, k2) differ from the double sums by float32
# rounding of those partials.

def _triton():
    return pytest.importorskip("snnops.kernels.bn_lif", reason="triton is not installed")


def _assert_triton_matches(k, z, w, b, rm, rv, training):
    args = _fwd_args(z, w, b, rm, rv, training)
    got, want = k.bn_lif_fwd(*args), reference.bn_lif_fwd(*args)
    for g, r in zip(got, want):
        assert g.dtype == r.dtype and g.shape == r.shape
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    for g, r in zip(got[3:], want[3:]):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    if training:
        # the spikes are exactly eval mode's with the returned statistics as running ones
        # (the kernel rounds its mean / var to float32 before deriving scale and shift)
        ev = reference.bn_lif_fwd(*_fwd_args(z, w, b, got[3], got[5], False))
        assert torch.equal(got[0], ev[0]) and torch.equal(got[1], ev[1]) and torch.equal(got[2], ev[2])
        torch.testing.assert_close(got[4], ev[4], rtol=0, atol=0)
    gs = torch.randn(z.shape)
    bargs = (gs, z, w, got[3], got[4], got[1], got[2], training, NEURON["decay"], NEURON["width"], [True] * 3)
    for g, r in zip(k.bn_lif_bwd(*bargs), reference.bn_lif_bwd(*bargs)):
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    return got


@pytest.mark.parametrize("shape", [(4, 37, 64), (3, 19, 20), (2, 3, 33), (1, 5, 100)])
@pytest.mark.parametrize("training", [True, False])
def test_triton_matches_reference(shape, training):
    """Odd sizes: partial row blocks, partial words (20, 33), two channel blocks (100)."""
    k = _triton()
    z = _z(*shape)
    w, b, rm, rv = _bn_params(shape[2])
    got = _assert_triton_matches(k, z, w, b, rm, rv, training)
    assert 0.05 < float(got[0].mean()) < 0.95


def test_triton_statistics_merge_across_programs_and_tiles(monkeypatch):
    """Several statistics programs, several tiles each, a partial last one, and data far
    from zero (mean 1000, std 1): the float32 E[z^2] - mean^2 formula loses the variance
    entirely here; the Chan merge keeps it to float32 rounding."""
    k = _triton()
    monkeypatch.setattr(k, "STAT_ROWS", 16)
    monkeypatch.setattr(k, "MAX_PARTIALS", 3)   # 154 rows -> 3 programs of 64, 64, 26 rows
    z = _z(2, 77, 40) / 1.5 + 1000.0
    w, b, rm, rv = _bn_params(40)
    got = k.bn_lif_fwd(*_fwd_args(z, w, b, rm, rv, True))
    want = reference.bn_lif_fwd(*_fwd_args(z, w, b, rm, rv, True))
    torch.testing.assert_close(got[3], want[3], rtol=1e-7, atol=0)
    torch.testing.assert_close(got[5], want[5], rtol=1e-6, atol=0)
    zf = z.reshape(-1, 40)
    naive = (zf * zf).mean(0) - zf.mean(0) ** 2
    assert float(((naive - want[5]).abs() / want[5]).max()) > 1e-2   # the test would catch that formula
    _assert_triton_matches(k, z, w, b, rm, rv, True)


def test_triton_half_input_output_mask_and_layouts():
    k = _triton()
    w, b, rm, rv = _bn_params(24)
    z = _z(3, 10, 24).half()
    args = _fwd_args(z, w, b, rm, rv, True)
    got, want = k.bn_lif_fwd(*args), reference.bn_lif_fwd(*args)
    assert got[0].dtype == torch.float16 and got[3].dtype == torch.float32
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    gs = torch.randn(3, 10, 24).half()
    bargs = (gs, z, w, got[3], got[4], got[1], got[2], True, 0.25, 1.0)
    rz, rw, rb = reference.bn_lif_bwd(*bargs, [True, True, True])
    gz, gw, gb = k.bn_lif_bwd(*bargs, [True, False, True])
    assert gz.dtype == torch.float16 and gw.numel() == 0
    torch.testing.assert_close(gz, rz, rtol=1e-3, atol=1e-3)   # float16 output rounding
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-5)
    gz, gw, gb = k.bn_lif_bwd(*bargs, [False, True, False])
    assert gz.numel() == 0 and gb.numel() == 0
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)
    # a non-contiguous z (channels not innermost in memory) is read through a copy
    zt = _z(3, 24, 10).transpose(1, 2)
    _assert_triton_matches(k, zt, w, b, rm, rv, True)


def test_triton_is_the_registered_cuda_implementation():
    """The callables registered for CUDA run these kernels (called here on CPU tensors)."""
    _triton()
    ops = importlib.import_module("snnops.ops.bn_lif")   # the package re-exports the function bn_lif
    assert snnops.backends()["bn_lif_fwd"]["cuda"] == "triton" and snnops.backends()["bn_lif_bwd"]["cuda"] == "triton"
    z = _z(2, 9, 40)
    w, b, rm, rv = _bn_params(40)
    got = ops._triton_fwd(*_fwd_args(z, w, b, rm, rv, True))
    want = reference.bn_lif_fwd(*_fwd_args(z, w, b, rm, rv, True))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    bargs = (torch.randn(2, 9, 40), z, w, got[3], got[4], got[1], got[2], True, 0.25, 1.0, [True, True, True])
    for g, r in zip(ops._triton_bwd(*bargs), reference.bn_lif_bwd(*bargs)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_triton_empty_float64_and_errors():
    k = _triton()
    w, b, rm, rv = _bn_params(8)
    out = k.bn_lif_fwd(*_fwd_args(torch.zeros(2, 0, 8), w, b, rm, rv, False))
    want = reference.bn_lif_fwd(*_fwd_args(torch.zeros(2, 0, 8), w, b, rm, rv, False))
    assert [tuple(o.shape) for o in out] == [tuple(o.shape) for o in want]
    torch.testing.assert_close(out[4], want[4], rtol=0, atol=0)
    gz, gw, gb = k.bn_lif_bwd(torch.zeros(2, 0, 8), torch.zeros(2, 0, 8), w, out[3], out[4], out[1], out[2], False,
                              0.25, 1.0, [True, True, True])
    assert gz.shape == (2, 0, 8) and torch.equal(gw, torch.zeros(8)) and torch.equal(gb, torch.zeros(8))
    # training without running statistics; bfloat16 input (float32 math, bfloat16 spikes)
    zb = _z(2, 5, 8).bfloat16()
    got = k.bn_lif_fwd(*_fwd_args(zb, w, b, None, None, True))
    want = reference.bn_lif_fwd(*_fwd_args(zb, w, b, None, None, True))
    assert got[0].dtype == torch.bfloat16 and torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    z64 = _z(2, 5, 8, torch.float64)
    w64, b64, rm64, rv64 = _bn_params(8, torch.float64)
    got = k.bn_lif_fwd(*_fwd_args(z64, w64, b64, rm64, rv64, True))
    assert got[0].dtype == torch.float64 and got[3].dtype == torch.float64
    with pytest.raises(ValueError, match="at least one value per channel"):
        k.bn_lif_fwd(*_fwd_args(torch.zeros(2, 0, 8), w, b, rm, rv, True))
    with pytest.raises(ValueError, match="weight and bias need 9 entries"):
        k.bn_lif_fwd(*_fwd_args(torch.zeros(2, 3, 9), w, b, rm, rv, True))
    with pytest.raises(ValueError, match="eval mode needs running_mean"):
        k.bn_lif_fwd(*_fwd_args(torch.zeros(2, 3, 8), w, b, None, None, False))


_PTX_SCRIPT = r"""
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from snnops.kernels import bn_lif as k

F, I = "*fp32", "*i32"
def ptx(fn, sig, consts):
    sig = {**sig, **{name: "constexpr" for name in consts}}
    src = ASTSource(fn, sig, consts)
    return triton.compile(src, target=GPUTarget("cuda", 80, 32), options=k._LAUNCH).asm["ptx"]
fwd = ptx(k._fwd_kernel, dict(z_ptr=F, scale_ptr=F, shift_ptr=F, spk_ptr=F, packed_ptr=I, window_ptr=I, T="i32",
          M="i32", C="i32", W="i32", decay="fp32", vth="fp32", vreset="fp32", bias="fp32", half_width="fp32"),
          dict(BLOCK_R=32, BLOCK_C=64))
bwd = ptx(k._bwd_dy_kernel, dict(gs_ptr=F, z_ptr=F, mean_ptr=F, invstd_ptr=F, a_ptr=F, packed_ptr=I, window_ptr=I,
          dz_ptr=F, ps1_ptr=F, ps2_ptr=F, T="i32", M="i32", C="i32", W="i32", decay="fp32", width="fp32"),
          dict(STORE=True, SCALE=True, BLOCK_R=32, BLOCK_C=64))
fin = ptx(k._stats_final_kernel, dict(z_ptr=F, pmean_ptr=F, pm2_ptr=F, w_ptr=F, b_ptr=F, rm_ptr=F, rv_ptr=F,
          eps_ptr="*fp64", mean_ptr=F, invstd_ptr=F, var_ptr=F, scale_ptr=F, shift_ptr=F, P="i32", NR="i32", C="i32",
          ROWS_PER_PROG="i32"), dict(TRAINING=True, BLOCK_C=64))
count = lambda pat, text: len(re.findall(pat, text))
print(json.dumps(dict(fma=count(r"\bfma\.", fwd + bwd + fin), mul=count(r"\bmul\.(?:rn\.)?f32", fwd),
                      div=sorted(set(re.findall(r"\bdiv\.[a-z0-9.]+", bwd + fin))),
                      sqrt=sorted(set(re.findall(r"\bsqrt\.[a-z0-9.]+", fin))))))
"""


def test_triton_gpu_code_rounds_like_the_reference(gpu_code_stats):
    """Compiled for sm_80 (no GPU needed): no FMA contraction anywhere (Triton contracts
    ``v * decay + y`` by default, which could flip a spike at the threshold), IEEE
    division and square root, so the GPU arithmetic is the interpreter's."""
    _triton()
    got = gpu_code_stats(_PTX_SCRIPT)
    assert got["fma"] == 0 and got["mul"] > 0
    assert got["div"] and all(d.startswith("div.rn.") for d in got["div"])
    assert got["sqrt"] == ["sqrt.rn.f64"]


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


def _period_stats(block, n_rows):
    """Exact (float64) mean and biased variance per channel of ``block`` [997, C] tiled
    over n_rows rows."""
    whole, rest = divmod(n_rows, block.shape[0])
    b = block.double()
    mean = (whole * b.sum(0) + b[:rest].sum(0)) / n_rows
    var = (whole * ((b - mean) ** 2).sum(0) + ((b[:rest] - mean) ** 2).sum(0)) / n_rows
    return mean, var


@pytest.mark.slow
def test_past_2_31_elements(large):
    """4 x (2^23 + 16) x 64 = 2^31 + 4096 elements (about 17 GiB: two tensors of this
    size at a time). Eval mode bit for bit on the rows around the start, flat element 2^31
    and the end (the LIF recursion runs along T per row); training mode's statistics and
    weight gradients against the exact sums of the tiled input."""
    large.need(18)
    steps, rows, c = 4, 2**23 + 16, 64
    block = _z(1, 997, c)[0]
    z = large.tile(block, steps * rows).view(steps, rows, c)
    w, b, rm, rv = _bn_params(c)
    spikes, packed, window = torch.ops.snnops.bn_lif_fwd(*_fwd_args(z, w, b, rm, rv, False))[:3]
    mid = (2**31 // c) % rows
    for sl in (slice(0, 2), slice(mid - 1, mid + 2), slice(rows - 2, rows)):
        ref = reference.bn_lif_fwd(*_fwd_args(z[:, sl].contiguous(), w, b, rm, rv, False))
        assert torch.equal(spikes[:, sl], ref[0]) and torch.equal(packed[:, sl], ref[1])
        assert torch.equal(window[:, sl], ref[2])
    del spikes, packed, window
    out = torch.ops.snnops.bn_lif_fwd(*_fwd_args(z, w, b, None, None, True))
    packed, window, mean, invstd, var = out[1:]
    del out   # the spikes: the backward reads their bits
    exact_mean, exact_var = _period_stats(block, steps * rows)
    torch.testing.assert_close(mean.double(), exact_mean, rtol=1e-6, atol=1e-7)  # float32 of a double sum
    torch.testing.assert_close(var.double(), exact_var, rtol=1e-6, atol=1e-7)
    # the weight gradients (the input gradient would need a third tensor of this size);
    # z and the incoming gradient repeat along the rows with period 997 at every step, so
    # the exact sums are those of one period times the number of periods, plus the rest
    gs = large.tile(_z(1, 997, c, seed=5)[0], steps * rows).view(steps, rows, c)
    _, gw, gb = torch.ops.snnops.bn_lif_bwd(gs, z, w, mean, invstd, packed, window, True, 0.25, 1.0,
                                            [False, True, True])
    whole, rest = divmod(rows, 997)

    def sums(sl):  # float64 weight and bias gradients of the rows sl
        return reference.bn_lif_bwd(gs[:, sl], z[:, sl], w.double(), mean, invstd, packed[:, sl], window[:, sl],
                                    True, 0.25, 1.0, [False, True, True])[1:]
    (pw, pb), (qw, qb) = sums(slice(0, 997)), sums(slice(whole * 997, rows))
    for got, exact in ((gw, whole * pw + qw), (gb, whole * pb + qb)):
        # float32 of double sums; the atol for a channel whose sum nearly cancels
        torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-6 * float(exact.abs().max()))


def test_no_channels_in_training():
    """C = 0: empty spikes, packed words and gradient."""
    z = torch.zeros(2, 2, 0, 3, 3, requires_grad=True)
    w, b = torch.ones(0, requires_grad=True), torch.zeros(0, requires_grad=True)
    s, packed = bn_lif(z, w, b, torch.zeros(0), torch.ones(0), True)
    s.sum().backward()
    assert s.shape == z.shape and packed.shape == (2, 2, 3, 3, 0) and z.grad.shape == z.shape
