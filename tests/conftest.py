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


@pytest.fixture
def one_thread():
    """Small networks on one thread: on a loaded 2-core machine two OpenMP threads made
    a width-4 ResNet-18 forward 50x slower (2.8 s against 0.06 s, measured) waiting at
    barriers, and one thread keeps results independent of the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


class _Large:
    """For the tests past 2^31 elements: a memory gate and the rows worth comparing."""

    @staticmethod
    def need(gib):
        with open("/proc/meminfo") as f:
            avail = next((int(line.split()[1]) / 2**20 for line in f if line.startswith("MemAvailable:")), 0.0)
        if avail < gib:
            pytest.skip(f"needs about {gib} GiB free, this machine has {avail:.1f} GiB available")

    @staticmethod
    def rows(n_rows, per_row):
        """Row slices of a [n_rows, per_row...] layout: the first rows, the rows around
        flat element 2^31 (where a 32-bit index would wrap) and the last rows."""
        assert n_rows * per_row > 2**31
        mid = 2**31 // per_row
        return [slice(0, 2), slice(mid - 1, min(mid + 2, n_rows)), slice(n_rows - 2, n_rows)]

    @staticmethod
    def tile(block, n_rows):
        """[n_rows, ...] repeating ``block`` along dim 0. Give the block an odd number of
        rows (997): a row index wrapped by 2^32 then lands on a different row."""
        out = block.new_empty((n_rows, *block.shape[1:]))
        reps = max(1, 2**24 // max(1, block.numel()))  # copy 16M elements at a time
        big = block.repeat(reps, *([1] * (block.dim() - 1)))
        for a in range(0, n_rows, big.shape[0]):
            n = min(big.shape[0], n_rows - a)
            out[a:a + n] = big[:n]
        return out


@pytest.fixture
def large():
    import gc

    import snnops
    yield _Large
    gc.collect()
    snnops.empty_cache()  # the CPU block cache would otherwise keep the last large outputs
