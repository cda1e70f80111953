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


@pytest.fixture(params=["avx512", "avx2", "generic"])
def cpu_isa(request, monkeypatch):
    """Run a test on every C++ code path this CPU has (SNNOPS_CPU_ISA selects a lower one;
    the AVX-512 and AVX2 paths are skipped on CPUs without them)."""
    import snnops
    if request.param == "avx512":
        monkeypatch.delenv("SNNOPS_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("SNNOPS_CPU_ISA", request.param)
    if snnops.cpu_isa() != request.param:
        pytest.skip(f"this CPU (or build) has no {request.param} path")
    return request.param
