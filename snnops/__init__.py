"""snnops: fused kernels for training spiking neural networks fast and in little memory.

Ops are registered as ``torch.ops.snnops.*`` (C++ on CPU, Triton on CUDA, fake
kernels for torch.compile, autograd); the functions here are their public forms.
"""
from . import _native
from . import surrogate
from .ops import backends, lif
from .ops.spike_gemm import QuantizedWeight, lowbit_weight, pack_spikes, quantize_weight, spike_conv1x1, spike_linear, spike_linear_lowbit, unpack_spikes
from . import nn
from . import tt
from .ops.tt_conv import ptt_conv, tt_conv
from .ops.bn_lif import bn_lif
from .ops.bn_add import bn_add

__version__ = "0.1.0"


def cpu_isa() -> str:
    """The CPU code path: 'avx512', 'avx2', 'generic', or 'reference' (no native extension)."""
    return _native.cpu_isa()


def cpu_cache_stats() -> dict:
    """The CPU kernels keep the memory blocks of their large outputs (>= 256 KiB) after
    the tensors die and reuse them, so a training step does not pay fresh page faults
    every iteration. Returns ``allocated_bytes`` (alive), ``cached_bytes`` (kept free),
    ``hits``, ``misses`` and ``cap_bytes`` (``SNNOPS_CPU_CACHE_MB``, default 2048)."""
    return _native.cpu_cache_stats()


def cache_all_cpu_tensors(enabled: bool = True) -> None:
    """Let every CPU tensor of the process (torch's own ops too: convolutions, BatchNorm,
    gradient sums) allocate through the same block cache, as jemalloc or tcmalloc would
    when preloaded; ``False`` restores torch's default allocator. Tensors keep the
    allocator they were made with, so switching is safe at any time."""
    _native.cache_all_cpu_tensors(enabled)


def empty_cache() -> int:
    """Free the CPU block cache (like ``torch.cuda.empty_cache``); returns bytes freed."""
    return _native.empty_cache()


__all__ = ["lif", "pack_spikes", "unpack_spikes", "spike_linear", "spike_conv1x1", "spike_linear_lowbit",
           "quantize_weight", "lowbit_weight", "QuantizedWeight", "ptt_conv", "tt_conv", "bn_lif", "bn_add",
           "backends", "cpu_isa", "cpu_cache_stats", "cache_all_cpu_tensors", "empty_cache",
           "nn", "surrogate", "tt", "__version__"]
