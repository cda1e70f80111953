"""The CPU kernels' output block cache (csrc/cpu/cached_alloc.cpp)."""
import os
import subprocess
import sys

import pytest
import torch

import snnops
from snnops import _native

pytestmark = pytest.mark.skipif(not _native.HAS_NATIVE, reason="the cache belongs to the native kernels")

SHAPE = (4, 8, 32, 16, 16)  # 2 MiB of float32: above the 256 KiB caching threshold


def test_large_outputs_reuse_cached_blocks():
    x = torch.randn(SHAPE)
    snnops.lif(x)  # warm: the blocks of this size exist now
    before = snnops.cpu_cache_stats()
    for _ in range(3):
        spikes, v = snnops.lif(x)
        del spikes, v
    after = snnops.cpu_cache_stats()
    assert after["hits"] - before["hits"] >= 3
    assert after["misses"] == before["misses"]
    assert after["cached_bytes"] >= x.numel() * 4


def test_cached_outputs_are_correct_and_independent():
    x = torch.randn(SHAPE)
    neg = snnops.lif(-x)[0].clone()
    a, _ = snnops.lif(x)
    keep = a.clone()
    del a
    b, _ = snnops.lif(-x)  # may reuse a's block: a's values must not leak into b
    c, _ = snnops.lif(x)
    assert torch.equal(c, keep)
    assert torch.equal(b, neg) and not torch.equal(b, keep)
    assert b.data_ptr() != c.data_ptr()


def test_alive_bytes_counted_and_empty_cache_frees():
    x = torch.randn(SHAPE)
    base = snnops.cpu_cache_stats()["allocated_bytes"]
    s, v = snnops.lif(x)
    assert snnops.cpu_cache_stats()["allocated_bytes"] >= base + s.numel() * 4
    del s, v
    assert snnops.cpu_cache_stats()["allocated_bytes"] == base
    assert snnops.empty_cache() > 0
    assert snnops.cpu_cache_stats()["cached_bytes"] == 0


def test_cached_tensors_resize_and_profile_like_ordinary_ones():
    x = torch.randn(SHAPE)
    s, _ = snnops.lif(x)
    s.resize_(2 * s.numel())  # storage stays resizable through the cache's allocator
    assert s.numel() == 2 * x.numel()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out, _ = snnops.lif(x)
        del out
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert x.numel() * 4 in sizes and -x.numel() * 4 in sizes


def test_cap_zero_disables_the_cache():
    code = ("import torch, snnops; x = torch.randn(%r)\n"
            "for _ in range(3): snnops.lif(x)\n"
            "s = snnops.cpu_cache_stats(); print(s['hits'], s['cached_bytes'], s['cap_bytes'])" % (SHAPE,))
    env = dict(os.environ, SNNOPS_CPU_CACHE_MB="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0", "0"]


def test_bad_cap_is_named():
    env = dict(os.environ, SNNOPS_CPU_CACHE_MB="lots")
    out = subprocess.run([sys.executable, "-c", "import torch, snnops; snnops.lif(torch.randn(%r))" % (SHAPE,)],
                         env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "SNNOPS_CPU_CACHE_MB" in out.stderr


def test_cache_can_serve_every_cpu_tensor():
    x = torch.randn(16, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, requires_grad=True)
    expected = torch.nn.functional.conv2d(x, w, padding=1)
    expected.sum().backward()
    grad = w.grad.clone()
    w.grad = None
    snnops.cache_all_cpu_tensors(True)
    try:
        assert _native.caches_all_cpu_tensors()
        before = snnops.cpu_cache_stats()
        plain = torch.empty(1 << 20)  # a torch op's own output
        assert snnops.cpu_cache_stats()["allocated_bytes"] >= before["allocated_bytes"] + plain.numel() * 4
        del plain
        # oneDNN takes its scratch memory through raw_allocate / raw_deallocate
        for _ in range(2):
            y = torch.nn.functional.conv2d(x, w, padding=1)
            y.sum().backward()
            assert torch.equal(y, expected)
            torch.testing.assert_close(w.grad, grad)
            w.grad = None
    finally:
        snnops.cache_all_cpu_tensors(False)
    assert not _native.caches_all_cpu_tensors()
    del y  # made under the cache, freed after it is no longer the allocator


def _child_lif(q):
    torch.set_num_threads(1)  # as DataLoader workers do: libgomp's pool does not survive fork
    x = torch.randn(SHAPE)
    s, _ = snnops.lif(x)
    del s
    s, _ = snnops.lif(x)  # a block the child freed, taken again
    q.put(float(s.sum()))


def test_forked_child_uses_the_cache():
    import multiprocessing as mp
    x = torch.randn(SHAPE)
    s, _ = snnops.lif(x)  # the parent's cache holds blocks before the fork
    del s
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_lif, args=(q,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert q.get(timeout=5) >= 0
