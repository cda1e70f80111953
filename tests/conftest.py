import os

# The Triton kernels are tested on CPU tensors through Triton's interpreter; the
# variable must be set before anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["avx2", "generic"])
def cpu_isa(request, monkeypatch):
    """Run a test on both C++ code paths (the AVX2 one is skipped on CPUs without it)."""
    import snnops
    if request.param == "avx2":
        monkeypatch.delenv("SNNOPS_CPU_ISA", raising=False)
        if snnops.cpu_isa() != "avx2":
            pytest.skip("this CPU (or build) has no AVX2+FMA path")
    else:
        monkeypatch.setenv("SNNOPS_CPU_ISA", "generic")
    return request.param
