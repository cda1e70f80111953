"""The Triton LIF kernels (the CUDA implementation of lif_fwd / lif_bwd), run on CPU
tensors by Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py) and compared
with the op-level reference. Shapes are small: the interpreter runs programs serially."""
import itertools

import pytest
import torch

from snnops import reference

triton_lif = pytest.importorskip("snnops.kernels.lif", reason="triton is not installed")

CASES = list(itertools.product([0, 1, 2, 3, 4, 5], [True, False], [0.0, None]))


@pytest.mark.parametrize("surrogate,detach,v_reset", CASES)
def test_triton_lif_matches_reference(surrogate, detach, v_reset):
    steps, shape = 5, (3, 100)  # 300 neurons: two programs, a partial block, a partial word
    x = torch.randn(steps, *shape) * 0.8
    v = torch.randn(shape) * 0.3
    params = (0.25, 1.0, 0.5, v_reset, surrogate, 1.0 if surrogate == 0 else 2.0, detach)
    ours = triton_lif.lif_fwd(x, v, *params, True, True, None)
    ref = reference.lif_fwd(x, v, *params, True, True, None)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    gs, gvl, gm = torch.randn_like(x), torch.randn(shape), torch.randn_like(x)
    saved = ours[3]
    keep_x = saved.numel() == 0
    bwd_args = (gs, gvl, gm, x if keep_x else None, v if keep_x else None, saved, list(x.shape),
                torch.float32, True) + params
    gx, gv = triton_lif.lif_bwd(*bwd_args)
    rgx, rgv = reference.lif_bwd(*bwd_args)
    torch.testing.assert_close(gx, rgx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gv, rgv, rtol=1e-5, atol=1e-6)


def test_triton_lif_without_state_and_optional_grads():
    x = torch.randn(3, 70) * 0.8
    params = (0.5, 0.5, 1.0, 0.0, 3, 4.0, False)
    s, vl, m, saved, _ = triton_lif.lif_fwd(x, None, *params, False, True, None)
    rs, rvl, rm, rsaved, _ = reference.lif_fwd(x, None, *params, False, True, None)
    assert torch.equal(s, rs) and torch.equal(vl, rvl) and m.numel() == 0 and saved.numel() == 0
    gx, gv = triton_lif.lif_bwd(torch.randn_like(x), None, None, x, None, saved, [3, 70], torch.float32,
                                False, *params)
    assert gv.numel() == 0 and gx.shape == x.shape


def test_triton_lif_half_input():
    x = (torch.randn(4, 64) * 0.8).half()
    s, vl, _, _, _ = triton_lif.lif_fwd(x, None, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True, False, False, None)
    rs, rvl, _, _, _ = reference.lif_fwd(x, None, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True, False, False, None)
    assert s.dtype == torch.float16 and torch.equal(s, rs) and torch.equal(vl, rvl)


def test_triton_lif_packed_output():
    x = torch.randn(3, 2, 40, 5) * 0.8
    out = triton_lif.lif_fwd(x, None, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True, False, False, 2)
    ref = reference.lif_fwd(x, None, 0.25, 1.0, 0.5, 0.0, 0, 1.0, True, False, False, 2)
    assert out[4].shape == (3, 2, 5, 2) and torch.equal(out[4], ref[4])


_PTX_SCRIPT = r"""
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from snnops.kernels import lif as k

F, I = "*fp32", "*i32"
sig = dict(x_ptr=F, v0_ptr=F, spk_ptr=F, vlast_ptr=F, mem_ptr=F, saved_ptr=I, T="i32", N="i32", words="i32",
           decay="fp32", scale="fp32", bias="fp32", vth="fp32", vreset="fp32", half_width="fp32")
consts = dict(HAS_V0=False, HARD=True, STORE_MEM=False, SAVE_BITS=True, BLOCK=k.BLOCK)
src = ASTSource(k._lif_fwd_kernel, {**sig, **{n: "constexpr" for n in consts}}, consts)
ptx = triton.compile(src, target=GPUTarget("cuda", 80, 32), options=dict(enable_fp_fusion=False)).asm["ptx"]
print(json.dumps(dict(fma=len(re.findall(r"\bfma\.", ptx)), mul=len(re.findall(r"\bmul\.(?:rn\.)?f32", ptx)))))
"""


def test_gpu_code_has_no_fma_contraction(gpu_code_stats):
    """Compiled for sm_80 (no GPU needed) with the options the launchers pass: h is
    computed with separate multiplies and adds, as the reference rounds it (Triton
    would contract ``v * decay + x * c`` into an FMA by default and flip spikes at the
    threshold)."""
    got = gpu_code_stats(_PTX_SCRIPT)
    assert got["fma"] == 0 and got["mul"] > 0
