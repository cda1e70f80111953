// Output tensors of the CPU kernels, from a cache of already-touched memory blocks.
//
// A training step allocates the same large activations and gradients every iteration.
// Through glibc, a block of many MiB comes from a fresh mmap (or a heap top that free()
// trimmed), so every 4 KiB page faults on first write: measured here ~3 us per page,
// which made the LIF forward+backward on 16.8 MB tensors 3-8x slower than the kernels
// themselves (docs/lif.md). Blocks of at least kMinCached bytes are therefore kept
// after their tensor dies and handed to the next request of the same size class, as
// the CUDA caching allocator does for GPU memory. The cache holds at most
// SNNOPS_CPU_CACHE_MB MiB of free blocks (default 2048; 0 disables it), and
// snnops.empty_cache() returns them to the system. Allocations are reported to the
// profiler at their requested size, like the default CPU allocator's.
#pragma once

#include <ATen/ATen.h>

namespace snnops {

// at::empty(sizes, opts) (memory_format as at::empty's) with storage from the cache.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& opts,
                        std::optional<at::MemoryFormat> memory_format = std::nullopt);

// at::zeros with the same storage.
at::Tensor cached_zeros(at::IntArrayRef sizes, const at::TensorOptions& opts);

// t.to(dtype).contiguous(), with any copy made into a cached block: a broadcast or
// permuted activation copied through glibc faulted in fresh pages (the stem LIF's
// time-expanded input, 4x16x32x32x64: 3.6 ms a training step on two threads, 0.9 ms
// from the cache).
at::Tensor cached_contiguous(const at::Tensor& t, at::ScalarType dtype);

}  // namespace snnops
