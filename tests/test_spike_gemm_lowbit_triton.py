"""The Triton kernel of spike_gemm_lowbit (the CUDA implementation), run on CPU tensors by
Triton's interpreter (TRITON_INTERPRET=1, conftest.py) against the float64 reference.
With a float32 scale every result is compared with ``torch.equal``: the integer sum is
exact, and both sides round ``acc * scale + bias`` from float64 once."""
import pytest
import torch

import snnops
from snnops import reference
from snnops.ops.spike_gemm import lowbit_weight

k = pytest.importorskip("snnops.kernels.spike_gemm_lowbit", reason="triton is not installed")


def _qweight(n, kf, bits, per_channel, masked, seed=0, scale_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2 ** bits, (n, kf), generator=g)
    scale = (torch.rand(n if per_channel else (), generator=g, dtype=torch.float64) + 0.01).to(scale_dtype)
    mask = torch.rand(n, kf, generator=g) > 0.25 if masked else None
    return lowbit_weight(codes, scale, bits, mask)


def _spikes(shape, density=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).float()


def _run(packed, q, bias):
    return (k.spike_gemm_lowbit(packed, q.planes, q.scale, bias, q.bits),
            reference.spike_gemm_lowbit(packed, q.planes, q.scale, bias, q.bits))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("m,n,kf", [(5, 7, 40), (33, 40, 100), (3, 1, 1)])
def test_triton_lowbit_exact(bits, m, n, kf):
    """Odd sizes: partial row / channel tiles, partial words, an odd word count (no
    whole KW step), one feature; scalar and per-channel scale; with and without mask."""
    q = _qweight(n, kf, bits, per_channel=bits % 2 == 0, masked=bits != 3, seed=bits)
    packed = snnops.pack_spikes(_spikes((m, kf)), -1)
    for bias in (None, torch.randn(n)):
        got, want = _run(packed, q, bias)
        assert got.dtype == want.dtype == torch.float32 and got.shape == (m, n)
        assert torch.equal(got, want)


def test_triton_lowbit_is_the_registered_cuda_implementation():
    from snnops.ops import spike_gemm as ops
    assert snnops.backends()["spike_gemm_lowbit"]["cuda"] == "triton"
    q = _qweight(10, 50, 2, per_channel=True, masked=True)
    packed = snnops.pack_spikes(_spikes((4, 50)), -1)
    got = ops._triton_lowbit(packed, q.planes, q.scale, None, 2)
    assert torch.equal(got, reference.spike_gemm_lowbit(packed, q.planes, q.scale, None, 2))


def test_triton_lowbit_flushes_accumulator(monkeypatch):
    """The fp32 partial sums are moved to the integer accumulator every FLUSH words;
    with FLUSH = one dot step the loop runs many segments, the last one partial."""
    monkeypatch.setattr(k, "_flush_words", lambda bits: k.KW)
    q = _qweight(20, 220, 4, per_channel=True, masked=True)
    packed = snnops.pack_spikes(_spikes((9, 220), density=0.9), -1)
    got, want = _run(packed, q, torch.randn(20))
    assert torch.equal(got, want)
    assert float(got.abs().max()) > 100 * float(q.scale.max())   # sums far beyond one word's


def test_triton_lowbit_layouts_empty_float64_and_errors():
    q = _qweight(12, 70, 2, per_channel=True, masked=True)
    # leading dims, non-contiguous packed rows
    packed = snnops.pack_spikes(_spikes((2, 5, 70)), -1)
    got, want = _run(packed, q, None)
    assert got.shape == (2, 5, 12) and torch.equal(got, want)
    got, want = _run(packed.transpose(0, 1), q, None)
    assert torch.equal(got, want)
    # no rows; no features (zero words): the bias alone
    got, want = _run(packed[:, :0], q, None)
    assert got.shape == (2, 0, 12)
    q0 = _qweight(12, 0, 2, per_channel=True, masked=False)
    bias = torch.randn(12)
    got, want = _run(torch.zeros(3, 0, dtype=torch.int32), q0, bias)
    assert torch.equal(got, want) and torch.equal(got, bias.expand(3, 12))
    # float64 scale: float64 output; the reference sums rounded products, the kernel
    # rounds acc * scale once, so they agree to float64 rounding
    q64 = _qweight(12, 70, 3, per_channel=False, masked=False, scale_dtype=torch.float64)
    got, want = _run(packed, q64, None)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="bits must be 1, 2, 3 or 4"):
        k.spike_gemm_lowbit(packed, q.planes, q.scale, None, 5)
    with pytest.raises(ValueError, match=r"planes must be int32 \[out_features, bits \+ 1 = 4"):
        k.spike_gemm_lowbit(packed, q.planes, q.scale, None, 3)
    with pytest.raises(ValueError, match="2 words per row but planes have 3"):
        k.spike_gemm_lowbit(packed[..., :2], q.planes, q.scale, None, 2)
    with pytest.raises(ValueError, match=r"scale must be a floating-point scalar or \[12\]"):
        k.spike_gemm_lowbit(packed, q.planes, torch.ones(3), None, 2)
    with pytest.raises(ValueError, match=r"bias must have shape \[12\]"):
        k.spike_gemm_lowbit(packed, q.planes, q.scale, torch.ones(5), 2)


_PTX_SCRIPT = r"""
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from snnops.kernels import spike_gemm_lowbit as k

sig = dict(p_ptr="*i32", pl_ptr="*i32", sc_ptr="*fp32", b_ptr="*fp32", y_ptr="*fp32", R="i32", N="i32", NW="i32",
           FLUSH="i32")
consts = dict(BITS=4, PER_CHANNEL=True, HAS_BIAS=True, BM=k.BLOCK_M, BN=k.BLOCK_N, KW=k.KW)
src = ASTSource(k._lowbit_kernel, {**sig, **{name: "constexpr" for name in consts}}, consts)
ptx = triton.compile(src, target=GPUTarget("cuda", 80, 32), options=k._LAUNCH).asm["ptx"]
print(json.dumps(dict(fma=len(re.findall(r"\bfma\.", ptx)), mma=len(re.findall(r"\bmma\.sync\.[a-z0-9.]*f16", ptx)),
                      mul64=len(re.findall(r"\bmul\.rn\.f64", ptx)), add64=len(re.findall(r"\badd\.rn\.f64", ptx)))))
"""


def test_triton_lowbit_gpu_code_is_exact(gpu_code_stats):
    """Compiled for sm_80 (no GPU needed): the dot runs on fp16 tensor cores (mma), and
    the float64 epilogue is a separate multiply and add (no FMA, which would round
    ``acc * scale + bias`` once instead of twice as the reference does)."""
    got = gpu_code_stats(_PTX_SCRIPT)
    assert got["fma"] == 0 and got["mma"] > 0 and got["mul64"] > 0 and got["add64"] > 0
