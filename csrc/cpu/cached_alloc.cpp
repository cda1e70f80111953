// The block cache behind cached_empty (see cached_alloc.h for why it exists).
#include "cached_alloc.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>
#include <pthread.h>
#include <sys/mman.h>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace snnops {
namespace {

// Below this, glibc serves requests from its heap without fresh pages, and a block per
// size class would waste more than it saves.
constexpr size_t kMinCached = size_t(256) << 10;
constexpr size_t kHuge = size_t(2) << 20, kHugeFrom = size_t(4) << 20;

// Size classes: 8 per power of two (at most 12.5% rounding waste), so tensors whose
// sizes differ slightly (a last partial batch) still share blocks.
size_t size_class(size_t n) {
  size_t p = size_t(1) << (63 - __builtin_clzll(n));  // highest power of two <= n
  const size_t step = p / 8;
  return (n + step - 1) / step * step;
}

size_t cap_from_env() {
  const char* v = std::getenv("SNNOPS_CPU_CACHE_MB");
  if (v == nullptr || *v == '\0') return size_t(2048) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && mb >= 0,
              "SNNOPS_CPU_CACHE_MB must be a non-negative integer (MiB), got '", v, "'");
  return size_t(mb) << 20;
}

struct Block {
  size_t bytes;      // size class actually allocated
  size_t requested;  // what the tensor asked for (reported to the profiler)
};

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCached || cap_ == 0) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t bytes = size_class(n);
    void* ptr = nullptr;
    size_t allocated = 0, reserved = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        ptr = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        ++hits_;
        allocated = track(ptr, bytes, n, &reserved);
      } else {
        ++misses_;
      }
    }
    if (ptr == nullptr) {
      // Page-aligned (c10's allocator aligns to 64 bytes); blocks of several MiB on 2 MiB
      // boundaries with transparent huge pages asked for.
      const bool huge = huge_ && bytes >= kHugeFrom;
      const size_t align = huge ? kHuge : 4096;
      if (posix_memalign(&ptr, align, bytes) != 0 || ptr == nullptr) {
        // Give the cached blocks back and try once more before reporting out of memory.
        release();
        TORCH_CHECK(posix_memalign(&ptr, align, bytes) == 0 && ptr != nullptr,
                    "snnops: out of CPU memory allocating ", bytes, " bytes");
      }
#ifdef MADV_HUGEPAGE
      if (huge) madvise(ptr, bytes, MADV_HUGEPAGE);
#endif
      std::lock_guard<std::mutex> lock(mu_);
      allocated = track(ptr, bytes, n, &reserved);
    }
    report(ptr, static_cast<int64_t>(n), allocated, reserved);
    // The context is the pointer itself, so raw_allocate / raw_deallocate (oneDNN's
    // scratch memory, when the cache serves every CPU tensor) work too.
    return {ptr, ptr, &BlockCache::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &BlockCache::deleter; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Frees every cached block; returns the bytes given back.
  size_t release() {
    std::map<size_t, std::vector<void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      cached_ = 0;
    }
    size_t freed = 0;
    for (auto& [bytes, ptrs] : drop) {
      for (void* p : ptrs) std::free(p);
      freed += bytes * ptrs.size();
    }
    return freed;
  }

  void stats(size_t* allocated, size_t* cached, size_t* hits, size_t* misses, size_t* cap) {
    std::lock_guard<std::mutex> lock(mu_);
    *allocated = allocated_;
    *cached = cached_;
    *hits = hits_;
    *misses = misses_;
    *cap = cap_;
  }

  static BlockCache& get() {
    // Never destroyed: tensors may die after static destructors have run at exit.
    static BlockCache* cache = [] {
      auto* c = new BlockCache();
      // A fork (DataLoader workers) while another thread holds the lock would leave the
      // child's copy locked forever: hold it across fork, release it on both sides.
      pthread_atfork([] { get().mu_.lock(); }, [] { get().mu_.unlock(); }, [] { get().mu_.unlock(); });
      return c;
    }();
    return *cache;
  }

 private:
  BlockCache() : cap_(cap_from_env()) {
    const char* v = std::getenv("SNNOPS_CPU_CACHE_HUGEPAGES");
    huge_ = v == nullptr || std::strcmp(v, "0") != 0;
  }

  static void deleter(void* ptr) { get().give_back(ptr); }

  // With mu_ held: ptr is handed out for a tensor of n bytes. Returns the bytes alive.
  size_t track(void* ptr, size_t bytes, size_t n, size_t* reserved) {
    live_[ptr] = Block{bytes, n};
    allocated_ += n;
    *reserved = allocated_ + cached_;
    return allocated_;
  }

  void give_back(void* ptr) {
    Block block{0, 0};
    bool ours = false, keep = false;
    size_t allocated = 0, reserved = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(ptr);
      if (it != live_.end()) {
        ours = true;
        block = it->second;
        live_.erase(it);
        allocated_ -= block.requested;
        allocated = allocated_;
        keep = cached_ + block.bytes <= cap_;
        if (keep) {
          free_[block.bytes].push_back(ptr);
          cached_ += block.bytes;
        }
        reserved = allocated_ + cached_;
      }
    }
    if (!ours) {
      // A small block of the default allocator freed through raw_deallocate
      // (allocate() hands those out with the default allocator's own deleter).
      c10::GetDefaultCPUAllocator()->raw_deleter()(ptr);
      return;
    }
    report(ptr, -static_cast<int64_t>(block.requested), allocated, reserved);
    if (!keep) std::free(ptr);
  }

  static void report(void* ptr, int64_t delta, size_t allocated, size_t reserved) {
    if (c10::memoryProfilingEnabled())
      c10::reportMemoryUsageToProfiler(ptr, delta, allocated, reserved,
                                       c10::Device(c10::DeviceType::CPU));
  }

  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, Block> live_;
  size_t cached_ = 0, allocated_ = 0, hits_ = 0, misses_ = 0;
  const size_t cap_;
  bool huge_ = true;  // SNNOPS_CPU_CACHE_HUGEPAGES=0: 4 KiB pages only
};

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& opts,
                        std::optional<at::MemoryFormat> memory_format) {
  TORCH_INTERNAL_ASSERT(opts.device().is_cpu());
  return at::detail::empty_generic(sizes, &BlockCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(opts.dtype()),
                                   memory_format.has_value() ? memory_format : opts.memory_format_opt());
}

at::Tensor cached_zeros(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return cached_empty(sizes, opts).zero_();
}

at::Tensor cached_contiguous(const at::Tensor& t, at::ScalarType dtype) {
  if (t.is_contiguous() && t.scalar_type() == dtype) return t;
  if (!t.device().is_cpu()) return t.to(dtype).contiguous();
  at::Tensor out = cached_empty(t.sizes(), t.options().dtype(dtype), at::MemoryFormat::Contiguous);
  out.copy_(t);
  return out;
}

}  // namespace snnops

// For snnops._C (module.cpp has no torch headers).
extern "C" size_t snnops_cpu_cache_release() { return snnops::BlockCache::get().release(); }

// on = 1: every CPU tensor of the process (torch's own ops too) allocates through the
// cache; on = 0: back to torch's default allocator. Blocks already handed out keep
// their own deleters, so switching is safe at any time.
extern "C" void snnops_cpu_cache_global(int on) {
  c10::SetCPUAllocator(on ? static_cast<c10::Allocator*>(&snnops::BlockCache::get()) : c10::GetDefaultCPUAllocator(),
                       /*priority=*/0);
}

extern "C" int snnops_cpu_cache_is_global() {
  return c10::GetCPUAllocator() == static_cast<c10::Allocator*>(&snnops::BlockCache::get()) ? 1 : 0;
}

extern "C" void snnops_cpu_cache_stats(size_t out[5]) {
  snnops::BlockCache::get().stats(&out[0], &out[1], &out[2], &out[3], &out[4]);
}
