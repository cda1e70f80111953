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


@pytest.fixture
def gpu_code_stats():
    """Runs a script that compiles Triton kernels for an NVIDIA target (no GPU needed) in
    a fresh process without TRITON_INTERPRET, and returns the JSON object it prints last
    (the tests count instructions in the PTX). Skips where this triton build has no
    NVIDIA backend to compile with."""
    import json
    import pathlib
    import subprocess
    import sys

    import triton.backends
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton build has no NVIDIA backend to compile with")

    def run(script: str) -> dict:
        env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              cwd=pathlib.Path(__file__).resolve().parents[1], timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])
    return run
