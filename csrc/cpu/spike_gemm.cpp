// Spike GEMMs on bit-packed spikes (CPU): packing, Y = S W^T + b, dW = dY^T S,
// and spikes times low-bit weights computed bit-serially.
//
// This file is the torch glue (checks, dtypes, threads); the raw kernels are in
// cpu/spike_gemm_kernels.cpp. One bit-scan kernel does the work of both the forward
// and dW:   out[r, :] = init + sum over set bits c of row r of A of B[c, :]
// forward: A = packed S [M, K], B = W^T (read from W through strides), out = Y;
// dW:      A = S^T (bit-transposed, [K, M]), B = dY [M, N], out = dW [N, K] (via strides).
// Work is proportional to the set bits; each (row block, column chunk) task owns its
// outputs: no atomics. dW by outer products for small K, and on AVX-512 the subset-sum
// tables (work independent of the density) for dense spikes, forward and dW; the dense
// path (MKL on unpacked blocks) above the thresholds measured below.
#include "cpu/spike_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/spike_gemm_kernels.h"
#include "cpu/spike_pack.h"

namespace snnops {
namespace {

using spike_pack::packed_words;

// SNNOPS_SPIKE_GEMM forces a path (benchmarks measure each; tests run them): "dense"
// (MKL), "bits" (the bit paths, tables or set-bit lists by density), "scan" (set-bit
// lists only), "table" (subset-sum tables wherever they apply); unset or "auto" picks by
// density.
enum class Path { kAuto, kBits, kDense, kScan, kTable };
Path forced_path() {
  const char* v = std::getenv("SNNOPS_SPIKE_GEMM");
  if (v == nullptr) return Path::kAuto;
  if (std::strcmp(v, "bits") == 0) return Path::kBits;
  if (std::strcmp(v, "dense") == 0) return Path::kDense;
  if (std::strcmp(v, "scan") == 0) return Path::kScan;
  if (std::strcmp(v, "table") == 0) return Path::kTable;
  return Path::kAuto;
}

// Density (fraction of set bits) above which the dense MKL path (MKL plus unpacking, or
// from float spikes packing for backward, block by block in cache) takes over. On AVX-512
// the subset-sum tables cost the same at any density and measured 1.7-2.5x MKL at 0.5 and
// 0.9 where the dense path ran at 0.6-1.0x (bench/bench_spike_gemm.py --threads 1 --paths,
// docs/spike_gemm.md): the dense forward is never chosen there, and dW only above 0.95 on
// shapes the dW tables do not serve (K > 409). Without AVX-512 (the AVX2 kernels) the
// thresholds measured on the AVX2 machine hold: dense forward above 0.6 for N >= 1024
// (gemm-fc), above 0.95 otherwise.
inline double dense_forward(int64_t N) {
  if (spike_kernels::bits_avx512()) return 1.0;  // density > 1 never happens
  return N >= 1024 ? 0.6 : 0.95;
}
inline double dense_forward_float(int64_t N) { return dense_forward(N); }
inline double dense_forward_packed(int64_t N) { return dense_forward(N); }
inline double dense_grad_weight(int64_t) { return 0.95; }

// dW by subset-sum tables (spike_kernels::table_dw_task, AVX-512, dW^T partials small
// enough for outer products) from this density on: its work does not depend on the density
// (2.1x MKL on gemm-tt-in, 1.7x on gemm-conv1x1, 1 thread), the outer products' grows with
// it; measured equal at 0.15 on gemm-tt-in and at 0.2 on gemm-conv1x1.
constexpr double kTableDwDensity = 0.175;
bool table_dw_on(double density) {
  switch (forced_path()) {
    case Path::kScan: return false;
    case Path::kTable: return true;
    default: return density >= kTableDwDensity;
  }
}

// Forward by subset-sum tables (spike_kernels::table_rows_task, AVX-512) from this density
// on (bench --paths, 1 thread, from packed spikes): at 0.2 the set-bit lists were ahead on
// every shape (gemm-tt-in 4.6x MKL against 3.3x, gemm-fc 1.9x against 1.7x); at 0.3 the
// tables on gemm-tt-in (2.8x against 2.2x) and gemm-fc (1.75x against 1.4x), the lists on
// gemm-conv1x1 (2.5x against 2.1x); from 0.5 the tables or level.
constexpr double kTableFwdDensity = 0.25;
bool table_forward_on(double density) {
  switch (forced_path()) {
    case Path::kScan: return false;
    case Path::kTable: return true;
    default: return density >= kTableFwdDensity;
  }
}

// Nibble scan (BitGemm::nibbles, AVX-512) from this density on.
constexpr double kNibbleDensity = 0.3;
bool nibble_scan(double density) { return density >= kNibbleDensity; }

bool use_dense(double density, double threshold) {
  switch (forced_path()) {
    case Path::kDense: return true;
    case Path::kAuto: return density > threshold;
    default: return false;
  }
}

inline int64_t popcount_words(const uint32_t* w, int64_t n) {
  return spike_kernels::popcount_words(w, n, spike_kernels::bits_avx2());
}

int64_t count_bits(const at::Tensor& packed) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>());
  const int64_t n = packed.numel();
  std::atomic<int64_t> total{0};
  // One thread counts 16 MiB of words in about a millisecond; every parallel region
  // costs a wake-up of the pool, which on a loaded machine is worth more than that.
  parallel_pieces(n, 1 << 22, [&](int64_t a, int64_t b) { total += popcount_words(w + a, b - a); });
  return total.load();
}

// A fresh output of tens of MiB is first touched by our kernel, one 4 KiB page fault at a
// time; on this machine a fault cost about 3 us, so the 64 MiB dW of gemm-fc spent 40-50
// ms in the kernel zeroing pages, as long as MKL's whole product. Asking for transparent
// huge pages (THP is in `madvise` mode here) makes that 32 faults of 2 MiB. The advice
// covers the 2 MiB-aligned interior of the buffer and is only a hint: memory already
// faulted stays as it is, and nothing changes where THP is off.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const int64_t bytes = t.numel() * (int64_t)t.element_size();
  if (bytes < (int64_t)(16 * kHuge)) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (a + kHuge - 1) & ~(kHuge - 1), hi = (a + (uintptr_t)bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::string index_string(at::IntArrayRef sizes, int64_t flat) {
  std::vector<int64_t> idx(sizes.size());
  for (int64_t d = (int64_t)sizes.size() - 1; d >= 0; --d) {
    idx[d] = sizes[d] ? flat % sizes[d] : 0;
    flat = sizes[d] ? flat / sizes[d] : 0;
  }
  std::ostringstream os;
  os << "(";
  for (size_t d = 0; d < idx.size(); ++d) os << (d ? ", " : "") << idx[d];
  os << (idx.size() == 1 ? ",)" : ")");
  return os.str();
}

// ================================================================== packing

// Shape of `sizes` with `dim` removed and `last` appended.
std::vector<int64_t> moved_shape(at::IntArrayRef sizes, int64_t dim, int64_t last) {
  std::vector<int64_t> s;
  for (int64_t d = 0; d < (int64_t)sizes.size(); ++d)
    if (d != dim) s.push_back(sizes[d]);
  s.push_back(last);
  return s;
}

// Value (row r, feature k) of x read as rows (dim moved last) is not 0 or 1: say where,
// in the caller's indexing.
[[noreturn]] void throw_non_binary_row(const at::Tensor& x, int64_t dim, int64_t r, int64_t k, const char* op) {
  const int64_t K = x.size(dim);
  auto moved = moved_shape(x.sizes(), dim, K);
  std::vector<int64_t> rest(moved.begin(), moved.end() - 1);
  std::vector<int64_t> idx(rest.size());
  int64_t f = r;
  for (int64_t d = (int64_t)rest.size() - 1; d >= 0; --d) {
    idx[d] = f % rest[d];
    f /= rest[d];
  }
  idx.insert(idx.begin() + dim, k);
  int64_t flat = 0;
  for (int64_t d = 0; d < x.dim(); ++d) flat = flat * x.size(d) + idx[d];
  const double v = x.movedim(dim, -1).reshape({-1, K})[r][k].item<double>();
  TORCH_CHECK(false, op, ": spikes must hold only 0 or 1, found ", v, " at index ", index_string(x.sizes(), flat),
              " (feature ", k, " along dim ", dim, ")");
  abort();  // not reached
}

template <typename T>
int64_t pack_rows_block(const T* x, int64_t K, uint32_t* out, int64_t W, int64_t r0, int64_t r1,
                        bool avx2, int64_t* bad_row) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t bad;
    if constexpr (std::is_same_v<T, float>) {
      bad = spike_kernels::pack_row(x + r * K, K, out + r * W, avx2);
    } else {
      (void)avx2;
      bad = spike_pack::pack_row<T>(x + r * K, K, out + r * W);
    }
    if (bad >= 0) {
      *bad_row = r;
      return bad;
    }
  }
  return -1;
}

template <typename T>
int64_t pack_columns_block(const T* x, int64_t K, int64_t inner, uint32_t* out, int64_t W, int64_t o,
                           int64_t i0, int64_t i1, int isa) {
  const T* src = x + o * K * inner + i0;
  uint32_t* dst = out + (o * inner + i0) * W;
  const int64_t n = i1 - i0;
  const int64_t bad = spike_pack::pack_columns_isa<T>(isa, src, K, inner, n, dst, W);
  if (bad < 0) return -1;
  const int64_t k = bad / n, i = bad % n;
  return o * K * inner + k * inner + i0 + i;  // flat offset in the contiguous [outer, K, inner]
}

// Packs and (optionally) counts the set bits.
at::Tensor pack_impl(const at::Tensor& spikes_in, int64_t dim, int64_t* nnz, const char* op) {
  TORCH_CHECK(spikes_in.device().is_cpu(), op, ": spikes must be a CPU tensor here, got ", spikes_in.device());
  TORCH_CHECK(spikes_in.dim() >= 1, op, ": spikes must have at least one dimension (the features)");
  TORCH_CHECK(!spikes_in.is_complex(), op, ": spikes must be real (0/1), got ", spikes_in.scalar_type());
  dim = c10::maybe_wrap_dim(dim, spikes_in.dim());
  const int64_t K = spikes_in.size(dim);
  const int64_t W = packed_words(K);
  at::Tensor packed = at::empty(moved_shape(spikes_in.sizes(), dim, W),
                                spikes_in.options().dtype(at::kInt).memory_format(at::MemoryFormat::Contiguous));
  if (nnz) *nnz = 0;
  if (packed.numel() == 0) return packed;
  at::Tensor x = spikes_in;
  if (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16) x = x.to(at::kFloat);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  // Rows when the features of a position are contiguous (dim last, or channels-last
  // memory); otherwise the contiguous [outer, K, inner] layout read in columns.
  bool rows = x.movedim(dim, -1).is_contiguous();
  if (!rows) {
    x = x.contiguous();
    rows = inner == 1;
  }
  uint32_t* out = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
  const bool avx2 = use_avx2();
  const int isa = use_avx512() ? 2 : avx2 ? 1 : 0;
  std::atomic<int64_t> bad_flat{-1};
  std::atomic<int64_t> total{0};
  AT_DISPATCH_ALL_TYPES_AND(at::kBool, x.scalar_type(), "pack_spikes", [&] {
    const scalar_t* src = rows ? x.movedim(dim, -1).data_ptr<scalar_t>() : x.data_ptr<scalar_t>();
    if (rows) {
      const int64_t R = outer * inner;
      // Pieces of 256 K values (1 MiB of float32): gemm-fc's 128 x 4096 spikes are packed
      // on the calling thread, not in a parallel region of their own.
      parallel_pieces(R, std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
        int64_t bad_row = -1;
        const int64_t k = pack_rows_block<scalar_t>(src, K, out, W, r0, r1, avx2, &bad_row);
        if (k >= 0) {
          int64_t expect = -1;
          bad_flat.compare_exchange_strong(expect, bad_row * K + k);
          return;
        }
        if (nnz) total += popcount_words(out + r0 * W, (r1 - r0) * W);
      });
    } else {
      // Tasks: (outer index, block of positions), 128 KiB of floats each: at K = 128 the
      // 256 positions of one AVX-512 packer chunk. [4, 32, 128, 16, 16] along the channels,
      // repeated calls: 0.62x the time of 64 KiB blocks (AVX2 0.83x); 256 KiB no faster.
      const int64_t blk = std::max<int64_t>(8, std::min<int64_t>(inner, (32768 / std::max<int64_t>(K, 1)) / 8 * 8));
      const int64_t nblk = ceil_div(inner, blk);
      parallel_pieces(outer * nblk, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = t / nblk, i0 = (t % nblk) * blk, i1 = std::min(inner, i0 + blk);
          const int64_t f = pack_columns_block<scalar_t>(src, K, inner, out, W, o, i0, i1, isa);
          if (f >= 0) {
            int64_t expect = -1;
            bad_flat.compare_exchange_strong(expect, f);
            return;
          }
          if (nnz) total += popcount_words(out + (o * inner + i0) * W, (i1 - i0) * W);
        }
      });
    }
  });
  const int64_t bad = bad_flat.load();
  if (bad >= 0) {
    // Report the offending element in the caller's indexing.
    if (rows) {
      throw_non_binary_row(x, dim, bad / K, bad % K, op);
    } else {
      const double v = x.reshape({-1})[bad].item<double>();
      const int64_t k = (bad / inner) % K;
      TORCH_CHECK(false, op, ": spikes must hold only 0 or 1, found ", v, " at index ",
                  index_string(x.sizes(), bad), " (feature ", k, " along dim ", dim, ")");
    }
  }
  if (nnz) *nnz = total.load();
  return packed;
}

// ================================================================== unpacking

template <typename T>
inline void unpack_one_row(const uint32_t* words, int64_t K, T* dst, bool avx2) {
#if SNN_HAVE_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (avx2) return spike_pack::unpack_row_f32(words, K, dst);
  }
#endif
  (void)avx2;
  spike_pack::unpack_row<T>(words, K, dst);
}

at::Tensor unpack_impl(const at::Tensor& packed_in, int64_t K, int64_t dim, at::ScalarType dtype,
                       const char* op) {
  TORCH_CHECK(packed_in.scalar_type() == at::kInt, op, ": packed must be int32 words, got ", packed_in.scalar_type());
  TORCH_CHECK(packed_in.dim() >= 1, op, ": packed must have at least one dimension (the words)");
  TORCH_CHECK(K >= 0, op, ": features must be >= 0, got ", K);
  const int64_t W = packed_words(K);
  TORCH_CHECK(packed_in.size(-1) == W, op, ": packed has ", packed_in.size(-1), " words in its last dim but ",
              K, " features need ceil(", K, "/32) = ", W);
  const int64_t nd = packed_in.dim();
  dim = c10::maybe_wrap_dim(dim, nd);
  std::vector<int64_t> shape(packed_in.sizes().begin(), packed_in.sizes().end() - 1);
  shape.insert(shape.begin() + dim, K);
  at::Tensor out = at::empty(shape, packed_in.options().dtype(dtype));
  if (out.numel() == 0) return out;
  at::Tensor p = packed_in.contiguous();
  const uint32_t* words = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < nd; ++d) inner *= shape[d];
  const bool avx2 = use_avx2();
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, dtype, "unpack_spikes", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (inner == 1) {
      const int64_t R = outer;
      parallel_pieces(R, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) unpack_one_row<scalar_t>(words + r * W, K, dst + r * K, avx2);
      });
    } else {
      const int64_t blk = 256;
      const int64_t nblk = ceil_div(inner, blk);
      parallel_pieces(outer * nblk, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = t / nblk, i0 = (t % nblk) * blk, i1 = std::min(inner, i0 + blk);
          spike_pack::unpack_columns<scalar_t>(words + (o * inner + i0) * W, W, K, inner, i1 - i0,
                                               dst + o * K * inner + i0);
        }
      });
    }
  });
  return out;
}

// ================================================================== drivers

using spike_kernels::BitGemm;

// packed [R, W] (K features) -> transposed [K, ceil(R/32)].
at::Tensor transpose_bits(const at::Tensor& packed2d, int64_t K) {
  const int64_t R = packed2d.size(0), W = packed2d.size(1), RW = packed_words(R);
  at::Tensor t = at::empty({K, RW}, packed2d.options());
  if (t.numel() == 0) return t;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(packed2d.data_ptr<int32_t>());
  uint32_t* dst = reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>());
  // Serial up to 16384 blocks of 32x32 bits (gemm-conv1x1 has 4096): see count_bits.
  parallel_pieces(RW * W, 16384, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) spike_kernels::transpose_bits_block(src, R, W, K, task / W, task % W, dst);
  });
  return t;
}

template <typename T>
int64_t run_bitgemm(const BitGemm<T>& g) {
  if (g.R == 0 || g.N == 0) return -1;
  const bool avx2 = std::is_same_v<T, float> && spike_kernels::bits_avx2();
  const int64_t chunk = spike_kernels::bitgemm_chunk(g.N, avx2);
  const int64_t nch = ceil_div(g.N, chunk);
  const int64_t threads = at::get_num_threads();
  // Enough tasks for the threads; rows per task large enough to pay for the panel copy,
  // and a local tile (transposed output) of at most 512 x 128 floats.
  // With B read in place (dW: B = dY, streamed from memory once per row block) one row
  // block per column chunk when the chunks alone feed the threads: every extra row
  // block reads dY again (measured 1.3x slower on gemm-conv1x1 with two).
  const int64_t per_thread = g.ldb_n == 1 ? 1 : 2;
  const int64_t want = ceil_div(per_thread * threads, nch);
  int64_t rb = std::max<int64_t>(8, ceil_div(g.R, want));
  rb = std::min<int64_t>(rb, g.ldo_n == 1 ? 4096 : 1024);
  const int64_t nrb = ceil_div(g.R, rb);
  // Small products run on the calling thread: waking the pool costs more than they do.
  const double work = (double)g.R * (double)g.N * (double)std::max<int64_t>(1, g.C / 32);
  const int64_t grain = work < 2e6 ? nrb * nch : 1;
  std::atomic<int64_t> bad{-1};
  parallel_pieces(nrb * nch, grain, [&](int64_t t0, int64_t t1) {
    // Per-thread scratch kept across calls: no page faults on fresh panels every call.
    thread_local spike_kernels::Workspace ws;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ib = t / nch, ch = t % nch;
      const int64_t r0 = ib * rb, r1 = std::min(g.R, r0 + rb);
      const int64_t b = spike_kernels::bitgemm_task(g, r0, r1, ch * chunk, avx2, ws);
      if (b >= 0) {
        int64_t expect = -1;
        bad.compare_exchange_strong(expect, b);
      }
    }
  });
  return bad.load();
}

// dW [N, K] = dY^T S by outer products (spike_kernels::outer_dw_task) when a column
// chunk of dW^T (K x 64) stays in cache: dY streams through once in row order and S is
// read as packed, where the bit-scan over S^T read dY rows in a scattered order (gemm-
// conv1x1 dW at density 0.1: 2.5x MKL -> see docs/spike_gemm.md). Tasks are (row block,
// column chunk); row blocks (as many as keep the threads busy) sum their partials at the end.
constexpr int64_t kOuterMaxBytes = 128 * 1024;
// The dW tables also serve one row block (M <= 4096) with a larger dW^T tile per column
// chunk, written straight to dW: up to 2 MiB (L2; gemm-fc's is 1.25 MiB).
constexpr int64_t kTableTileMaxBytes = 2 * 1024 * 1024;

template <typename T>
void outer_grad_weight(const at::Tensor& packed2d, const at::Tensor& g, int64_t K, at::Tensor& gw, bool table = false) {
  const int64_t M = packed2d.size(0), N = g.size(1);
  constexpr int64_t NC = spike_kernels::kOuterChunk;
  const int64_t nch = ceil_div(N, NC);
  // Row blocks of 4096 rows whatever the thread count, so that the summation order (and
  // the result) does not depend on it; tasks go to the threads from a shared counter.
  const int64_t mb = 4096;
  const int64_t nmb = std::max<int64_t>(1, ceil_div(M, mb));
  // 64-byte aligned (torch's allocator): P rows are then whole cache lines; with
  // std::vector's 16-byte alignment every 64-byte access split two lines and the loads
  // missed store forwarding (3-4x slower).
  constexpr int64_t LP = spike_kernels::kOuterStride;
  const uint32_t* S = reinterpret_cast<const uint32_t*>(packed2d.data_ptr<int32_t>());
  const T* dY = g.data_ptr<T>();
  if constexpr (std::is_same_v<T, float>) {
    if (table && nmb == 1) {
      // One row block (gemm-fc: 128 rows, K = 4096): each column chunk's dW^T tile (K x 64,
      // L2) goes straight to its rows of dW, by 16x16 transposes; no partials to sum.
      float* out = gw.data_ptr<float>();
      parallel_pieces(nch, 1, [&](int64_t t0, int64_t t1) {
        thread_local spike_kernels::Workspace ws;
        thread_local spike_kernels::AlignedVector<float> tile;
        tile.resize(K * LP);
        for (int64_t ch = t0; ch < t1; ++ch) {
          std::fill(tile.begin(), tile.end(), 0.0f);
          const int64_t n0 = ch * NC, nn = std::min(NC, N - n0);
          spike_kernels::table_dw_task(S, K, dY, N, M, 0, M, n0, nn, tile.data(), ws);
          spike_kernels::transpose_tile(tile.data(), LP, K, nn, out + n0 * K, K);
        }
      });
      return;
    }
  }
  at::Tensor partial_t = at::zeros({nmb * nch * K * LP}, g.options());
  T* partial = partial_t.data_ptr<T>();
  const bool avx2 = std::is_same_v<T, float> && spike_kernels::bits_avx2();
  const double work = (double)M * (double)N * (double)std::max<int64_t>(1, K / 32);
  parallel_pieces(nmb * nch, work < 2e6 ? nmb * nch : 1, [&](int64_t t0, int64_t t1) {
    thread_local spike_kernels::Workspace ws;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nch, ch = t % nch;
      const int64_t m0 = b * mb, m1 = std::min(M, m0 + mb);
      if constexpr (std::is_same_v<T, float>) {
        if (table) {
          spike_kernels::table_dw_task(S, K, dY, N, M, m0, m1, ch * NC, std::min(NC, N - ch * NC),
                                       partial + t * K * LP, ws);
          continue;
        }
      }
      spike_kernels::outer_dw_task(S, K, dY, N, m0, m1, ch * NC, std::min(NC, N - ch * NC),
                                   partial + t * K * LP, avx2, ws);
    }
  });
  // gw[n, k] = sum over row blocks of P_b[k, n - chunk start].
  T* out = gw.data_ptr<T>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t ch = n / NC, j = n % NC;
    T* o = out + n * K;
    const T* p0 = partial + ch * K * LP + j;
    for (int64_t k = 0; k < K; ++k) o[k] = p0[k * LP];
    for (int64_t b = 1; b < nmb; ++b) {
      const T* pb = partial + (b * nch + ch) * K * LP + j;
      for (int64_t k = 0; k < K; ++k) o[k] += pb[k * LP];
    }
  }
}

// ================================================================== checks

void check_weight(const at::Tensor& weight, const std::optional<at::Tensor>& bias, const char* op) {
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got shape ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), op, ": weight must be floating point, got ", weight.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape [",
                weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->is_floating_point(), op, ": bias must be floating point, got ", bias->scalar_type());
  }
}

std::optional<at::Tensor> defined_or_none(const std::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return t;
  return std::nullopt;
}

// Y [R, N] by spike_kernels::table_rows_task: tasks of 512 rows x 64 columns, adding into
// the output rows (bias first) where a chunk is whole and row-major, else into a tile copied
// out after. With g.src (float spikes) a task is a row block over every column chunk and
// packs its rows first: one parallel region for packing and product (each region waits
// for the other thread at its end, a time slice when the machine is shared). Returns -1 or
// r * C + k of a value src[r, k] that is not 0 or 1.
int64_t table_forward(const BitGemm<float>& g) {
  constexpr int64_t NC = spike_kernels::kOuterChunk, LP = spike_kernels::kOuterStride;
  const int64_t nch = ceil_div(g.N, NC), rb = 512, nrb = ceil_div(g.R, rb);
  const int64_t per_task = g.src ? nch : 1;
  std::atomic<int64_t> bad{-1};
  parallel_pieces(nrb * nch / per_task, 1, [&](int64_t t0, int64_t t1) {
    thread_local spike_kernels::Workspace ws;
    for (int64_t t = t0 * per_task; t < t1 * per_task; ++t) {
      const int64_t r0 = (t / nch) * rb, r1 = std::min(g.R, r0 + rb), n0 = (t % nch) * NC;
      const int64_t nn = std::min(NC, g.N - n0);
      if (g.src && n0 == 0) {
        uint32_t* A = const_cast<uint32_t*>(g.A);
        const bool avx2 = spike_kernels::bits_avx2();
        bool ok = true;
        for (int64_t r = r0; r < r1 && ok; ++r) {
          const int64_t k = spike_kernels::pack_row(g.src + r * g.src_ld, g.C, A + r * g.lda, avx2);
          if (k >= 0) {
            int64_t expect = -1;
            bad.compare_exchange_strong(expect, r * g.C + k);
            ok = false;
          }
        }
        if (!ok) return;
      }
      alignas(64) float init[NC];
      for (int64_t j = 0; j < NC; ++j) init[j] = (g.bias && j < nn) ? g.bias[n0 + j] : 0.0f;
      // (Not with output rows a multiple of 4 KiB apart, gemm-fc's: all rows of a task
      // then fall in the same L1 sets; the tile rows are padded.)
      const bool direct = g.ldo_n == 1 && nn == NC && g.ldo_r % 1024 != 0;
      float* P;
      int64_t ldp;
      if (direct) {
        P = g.out + r0 * g.ldo_r + n0;
        ldp = g.ldo_r;
      } else {
        ws.tile_f.resize(rb * LP);
        P = ws.tile_f.data();
        ldp = LP;
      }
      for (int64_t r = 0; r < r1 - r0; ++r) std::memcpy(P + r * ldp, init, NC * sizeof(float));
      spike_kernels::table_rows_task(g, r0, r1, n0, P, ldp, ws);
      if (direct) continue;
      for (int64_t r = r0; r < r1; ++r) {
        float* o = g.out + r * g.ldo_r + n0 * g.ldo_n;
        const float* src = P + (r - r0) * LP;
        if (g.ldo_n == 1) std::memcpy(o, src, nn * sizeof(float));
        else for (int64_t j = 0; j < nn; ++j) o[j * g.ldo_n] = src[j];
      }
    }
  });
  return bad.load();
}

// Y [R, N] from packed rows [R, W] over weight [N, K].
template <typename T>
void bits_forward(const at::Tensor& packed2d, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  at::Tensor& out2d, double density) {
  BitGemm<T> g;
  g.A = reinterpret_cast<const uint32_t*>(packed2d.data_ptr<int32_t>());
  g.lda = packed2d.size(1);
  g.R = packed2d.size(0);
  g.C = weight.size(1);
  g.B = weight.data_ptr<T>();
  g.ldb_c = weight.stride(1);
  g.ldb_n = weight.stride(0);
  g.N = weight.size(0);
  g.out = out2d.data_ptr<T>();
  g.ldo_r = out2d.stride(0);
  g.ldo_n = out2d.stride(1);
  g.bias = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  g.nibbles = nibble_scan(density);
  if constexpr (std::is_same_v<T, float>) {
    if (spike_kernels::bits_avx512() && table_forward_on(density)) {
      table_forward(g);
      return;
    }
  }
  run_bitgemm<T>(g);
}

// Rows of float spikes per block of the dense paths: 256 KiB of them stays in L2 between
// being packed (or unpacked) and MKL reading them, so the spikes cross memory once.
// (256 KiB, 1 MiB and 4 MiB measured the same on gemm-conv1x1 and gemm-tt-in.)
inline int64_t dense_block_rows(int64_t K) { return std::max<int64_t>(64, (256 * 1024) / (4 * std::max<int64_t>(K, 1))); }

// A per-thread buffer of n floats, 64-byte aligned, kept across calls.
float* block_buffer(int64_t n) {
  thread_local std::vector<float> buf;
  if ((int64_t)buf.size() < n + 16) buf.resize(n + 16);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

// Dense forward from float32 rows src [R, K], packing them for backward on the way,
// block by block: Y = S W^T + b through MKL (one thread per block). -1 or r * K + k bad.
int64_t dense_forward_packing(const float* src, const at::Tensor& src2d, uint32_t* packed, int64_t W,
                              const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::Tensor& out2d) {
  const int64_t R = src2d.size(0), K = src2d.size(1);
  const bool avx2 = use_avx2();
  std::atomic<int64_t> bad{-1};
  // Worker threads do not inherit the dispatcher's below-autograd state: hand them
  // tensors that do not require grad, or the out= calls refuse to run.
  const at::Tensor w = weight.detach(), s2d = src2d.detach();
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(bias->detach()) : std::nullopt;
  parallel_pieces(R, dense_block_rows(K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t k = spike_kernels::pack_row(src + r * K, K, packed + r * W, avx2);
      if (k >= 0) {
        int64_t expect = -1;
        bad.compare_exchange_strong(expect, r * K + k);
        return;
      }
    }
    at::Tensor o = out2d.narrow(0, r0, r1 - r0);
    if (b.has_value()) at::addmm_out(o, *b, s2d.narrow(0, r0, r1 - r0), w.t());
    else at::mm_out(o, s2d.narrow(0, r0, r1 - r0), w.t());
  });
  return bad.load();
}

// Dense forward from packed rows [R, W] (float32): each block unpacked into a per-thread
// buffer that MKL reads from cache (no float copy of all spikes is written to memory).
void dense_forward_unpacking(const uint32_t* words, int64_t R, int64_t W, int64_t K, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::Tensor& out2d) {
  const bool avx2 = use_avx2();
  const at::Tensor w = weight.detach();  // see dense_forward_packing
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(bias->detach()) : std::nullopt;
  parallel_pieces(R, dense_block_rows(K), [&](int64_t r0, int64_t r1) {
    float* buf = block_buffer((r1 - r0) * K);
    for (int64_t r = r0; r < r1; ++r) unpack_one_row<float>(words + r * W, K, buf + (r - r0) * K, avx2);
    at::Tensor s = at::from_blob(buf, {r1 - r0, K}, w.options());
    at::Tensor o = out2d.narrow(0, r0, r1 - r0);
    if (b.has_value()) at::addmm_out(o, *b, s, w.t());
    else at::mm_out(o, s, w.t());
  });
}

at::Tensor forward_from_packed(const at::Tensor& packed, const at::Tensor& weight_in,
                               const std::optional<at::Tensor>& bias_in, int64_t nnz,
                               const at::Tensor& dense_spikes_rows, double threshold) {
  const int64_t K = weight_in.size(1), N = weight_in.size(0);
  const int64_t W = packed.size(-1);
  const int64_t R = W ? packed.numel() / W : c10::multiply_integers(packed.sizes().slice(0, packed.dim() - 1));
  const auto out_t = weight_in.scalar_type();
  const auto ct = compute_type(out_t);
  at::Tensor weight = weight_in.to(ct);
  std::optional<at::Tensor> bias;
  if (bias_in.has_value()) bias = bias_in->to(ct).contiguous();
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end() - 1);
  shape.push_back(N);
  at::Tensor out = at::empty(shape, weight.options());
  advise_huge_pages(out);
  if (out.numel() == 0) return out.to(out_t);
  at::Tensor out2d = out.view({R, N});
  const double density = (R * K) != 0 ? (double)nnz / (double)(R * K) : 0.0;
  if (K > 0 && use_dense(density, threshold)) {
    if (!dense_spikes_rows.defined() && ct == at::kFloat) {
      at::Tensor p = packed.contiguous();
      dense_forward_unpacking(reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>()), R, W, K, weight, bias, out2d);
    } else {
      at::Tensor s = dense_spikes_rows.defined() ? dense_spikes_rows.to(ct)
                                                  : unpack_impl(packed.view({R, W}), K, -1, ct, "snnops.spike_gemm");
      if (bias.has_value()) at::addmm_out(out2d, *bias, s, weight.t());
      else at::mm_out(out2d, s, weight.t());
    }
  } else if (K == 0) {
    if (bias.has_value()) out2d.copy_(bias->expand({R, N}));
    else out2d.zero_();
  } else {
    at::Tensor p2 = packed.view({R, W});
    if (ct == at::kFloat) bits_forward<float>(p2, weight, bias, out2d, density);
    else bits_forward<double>(p2, weight, bias, out2d, density);
  }
  return out.to(out_t);
}

}  // namespace

// ================================================================== entry points

void spike_rows_gemm_f32(const uint32_t* A, int64_t lda, int64_t R, int64_t C, const float* B, int64_t ldb_c,
                         int64_t ldb_n, int64_t N, float* out, int64_t ldo_r, int64_t ldo_n, const float* bias) {
  spike_kernels::BitGemm<float> g{A, lda, R, C, B, ldb_c, ldb_n, N, out, ldo_r, ldo_n, bias};
  run_bitgemm<float>(g);
}

at::Tensor pack_spikes_cpu(const at::Tensor& spikes, int64_t dim) {
  return pack_impl(spikes, dim, nullptr, "snnops.pack_spikes");
}

at::Tensor unpack_spikes_cpu(const at::Tensor& packed, int64_t features, int64_t dim, at::ScalarType dtype) {
  return unpack_impl(packed, features, dim, dtype, "snnops.unpack_spikes");
}

std::tuple<at::Tensor, at::Tensor> spike_gemm_cpu(const at::Tensor& spikes, const at::Tensor& weight,
                                                  const std::optional<at::Tensor>& bias_in, int64_t dim) {
  const char* op = "snnops.spike_gemm";
  const auto bias = defined_or_none(bias_in);
  check_weight(weight, bias, op);
  TORCH_CHECK(spikes.dim() >= 1, op, ": spikes must have at least one dimension");
  dim = c10::maybe_wrap_dim(dim, spikes.dim());
  TORCH_CHECK(spikes.size(dim) == weight.size(1), op, ": spikes have ", spikes.size(dim), " features along dim ",
              dim, " but weight expects in_features = ", weight.size(1));
  const int64_t K = weight.size(1), N = weight.size(0);
  const int64_t R = K ? spikes.numel() / K : 0;
  // Float32 spikes with contiguous feature rows and an output of one column chunk:
  // pack and multiply in one pass (bit-scan) unless a sample of rows says the spikes
  // are dense enough for MKL.
  const bool avx2 = spike_kernels::bits_avx2();
  if (spikes.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && K > 0 && R > 0 && N > 0 &&
      spikes.movedim(dim, -1).is_contiguous() && (!bias.has_value() || bias->scalar_type() == at::kFloat)) {
    const float* src = spikes.movedim(dim, -1).data_ptr<float>();
    const int64_t S = std::min<int64_t>(R, 128);
    int64_t ones = 0;
    for (int64_t i = 0; i < S; ++i) {
      const float* row = src + ((i * R) / S) * K;
      for (int64_t k = 0; k < K; ++k) ones += row[k] == 1.0f;
    }
    const bool dense = use_dense((double)ones / (double)(S * K), dense_forward_float(N));
    const int64_t W = packed_words(K);
    at::Tensor packed = at::empty(moved_shape(spikes.sizes(), dim, W), spikes.options().dtype(at::kInt));
    std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end() - 1);
    shape.push_back(N);
    at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
    if (dense) {
      at::Tensor out = at::empty(shape, weight.options());
      advise_huge_pages(out);
      at::Tensor out2d = out.view({R, N});
      const int64_t bad = dense_forward_packing(src, spikes.movedim(dim, -1).reshape({R, K}),
                                                reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>()), W, weight,
                                                bias.has_value() ? std::optional<at::Tensor>(b) : std::nullopt, out2d);
      if (bad >= 0) throw_non_binary_row(spikes, dim, bad / K, bad % K, op);
      return {out, packed};
    }
    const bool table = spike_kernels::bits_avx512() && table_forward_on((double)ones / (double)(S * K));
    // Tables with the packing fused, when the row blocks alone keep the threads busy.
    if (table && R >= 512 * 2 * at::get_num_threads()) {
      at::Tensor out = at::empty(shape, weight.options());
      advise_huge_pages(out);
      BitGemm<float> g{reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>()), W, R, K,
                       weight.data_ptr<float>(), weight.stride(1), weight.stride(0), N, out.data_ptr<float>(), N, 1,
                       b.defined() ? b.data_ptr<float>() : nullptr, src, K};
      const int64_t bad = table_forward(g);
      if (bad >= 0) throw_non_binary_row(spikes, dim, bad / K, bad % K, op);
      return {out, packed};
    }
    if (N <= spike_kernels::bitgemm_chunk(N, avx2) && !table) {
      at::Tensor out = at::empty(shape, weight.options());
      advise_huge_pages(out);
      BitGemm<float> g{reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>()), W, R, K,
                       weight.data_ptr<float>(), weight.stride(1), weight.stride(0), N, out.data_ptr<float>(), N, 1,
                       b.defined() ? b.data_ptr<float>() : nullptr, src, K};
      g.nibbles = nibble_scan((double)ones / (double)(S * K));
      const int64_t bad = run_bitgemm<float>(g);
      if (bad >= 0) throw_non_binary_row(spikes, dim, bad / K, bad % K, op);
      return {out, packed};
    }
  }
  int64_t nnz = 0;
  at::Tensor packed = pack_impl(spikes, dim, &nnz, op);
  const double density = (R * K) != 0 ? (double)nnz / (double)(R * K) : 0.0;
  at::Tensor dense_rows;
  if (K > 0 && R > 0 && use_dense(density, dense_forward_float(N))) dense_rows = spikes.movedim(dim, -1).reshape({R, K});
  at::Tensor out = forward_from_packed(packed, weight, bias, nnz, dense_rows, dense_forward_float(N));
  return {out, packed};
}

at::Tensor spike_gemm_packed_cpu(const at::Tensor& packed, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& spikes,
                                 int64_t dim) {
  (void)spikes;
  (void)dim;
  const char* op = "snnops.spike_gemm_packed";
  const auto bias = defined_or_none(bias_in);
  check_weight(weight, bias, op);
  TORCH_CHECK(packed.scalar_type() == at::kInt, op, ": packed spikes must be int32 words, got ", packed.scalar_type());
  TORCH_CHECK(packed.dim() >= 1, op, ": packed spikes must have at least one dimension (the words)");
  const int64_t K = weight.size(1);
  TORCH_CHECK(packed.size(-1) == packed_words(K), op, ": packed spikes have ", packed.size(-1),
              " words per row but in_features = ", K, " needs ceil(", K, "/32) = ", packed_words(K));
  at::Tensor p = packed.contiguous();
  const int64_t nnz = p.numel() ? count_bits(p) : 0;
  return forward_from_packed(p, weight, bias, nnz, at::Tensor(), dense_forward_packed(weight.size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spike_gemm_bwd_cpu(const at::Tensor& grad_out,
                                                                  const at::Tensor& packed_in,
                                                                  const at::Tensor& weight_in, bool need_spikes,
                                                                  bool need_weight, bool need_bias) {
  const char* op = "snnops.spike_gemm_bwd";
  check_weight(weight_in, std::nullopt, op);
  const int64_t N = weight_in.size(0), K = weight_in.size(1);
  TORCH_CHECK(packed_in.scalar_type() == at::kInt && packed_in.dim() >= 1 && packed_in.size(-1) == packed_words(K),
              op, ": packed spikes must be int32 [..., ", packed_words(K), "], got ", packed_in.scalar_type(), " ",
              packed_in.sizes());
  const int64_t W = packed_in.size(-1);
  std::vector<int64_t> rows_shape(packed_in.sizes().begin(), packed_in.sizes().end() - 1);
  const int64_t R = c10::multiply_integers(rows_shape);
  std::vector<int64_t> gshape = rows_shape;
  gshape.push_back(N);
  TORCH_CHECK(grad_out.sizes().vec() == gshape, op, ": grad_out must have shape ", at::IntArrayRef(gshape),
              ", got ", grad_out.sizes());
  const auto out_t = weight_in.scalar_type();
  const auto ct = compute_type(out_t);
  at::Tensor weight = weight_in.to(ct);
  at::Tensor g = grad_out.to(ct).reshape({R, N}).contiguous();
  auto opts = weight.options();
  at::Tensor gs = at::empty({0}, opts), gw = at::empty({0}, opts), gb = at::empty({0}, opts);
  if (need_spikes) {
    std::vector<int64_t> sshape = rows_shape;
    sshape.push_back(K);
    gs = at::mm(g, weight).view(sshape);
  }
  if (need_bias) gb = g.sum(0);
  if (need_weight) {
    gw = at::empty({N, K}, opts);
    advise_huge_pages(gw);
    at::Tensor p = packed_in.contiguous().view({R, W});
    const int64_t nnz = p.numel() ? count_bits(p) : 0;
    const double density = (R * K) != 0 ? (double)nnz / (double)(R * K) : 0.0;
    if (R == 0 || K == 0) {
      gw.zero_();
    } else if (use_dense(density, dense_grad_weight(N))) {
      const int64_t threads = at::get_num_threads();
      if (ct == at::kFloat && !at::in_parallel_region() && (double)N * K * 4 * threads <= 8.0 * 1024 * 1024 &&
          R > dense_block_rows(K)) {
        // Blocks of S unpacked into cache, one partial dW per thread, summed at the end.
        std::vector<at::Tensor> partial(threads);
        for (auto& t : partial) t = at::zeros({N, K}, opts);
        const uint32_t* words = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
        const bool avx2 = use_avx2();
        const at::Tensor gd = g.detach();  // see dense_forward_packing
        parallel_pieces(R, dense_block_rows(K), [&](int64_t r0, int64_t r1) {
          float* buf = block_buffer((r1 - r0) * K);
          for (int64_t r = r0; r < r1; ++r) unpack_one_row<float>(words + r * W, K, buf + (r - r0) * K, avx2);
          at::Tensor s = at::from_blob(buf, {r1 - r0, K}, opts);
          partial[at::get_thread_num()].addmm_(gd.narrow(0, r0, r1 - r0).t(), s);
        });
        gw.copy_(partial[0]);
        for (int64_t t = 1; t < threads; ++t) gw.add_(partial[t]);
      } else {
        at::mm_out(gw, g.t(), unpack_impl(p, K, -1, ct, op));
      }
    } else if (ct == at::kFloat && spike_kernels::bits_avx512() && table_dw_on(density) &&
               (K * spike_kernels::kOuterStride * (int64_t)gw.element_size() <= kOuterMaxBytes ||
                (R <= 4096 && K * spike_kernels::kOuterStride * 4 <= kTableTileMaxBytes))) {
      outer_grad_weight<float>(p, g, K, gw, /*table=*/true);
    } else if (K * spike_kernels::kOuterStride * (int64_t)gw.element_size() <= kOuterMaxBytes &&
               !(nibble_scan(density) && spike_kernels::bits_avx512())) {
      if (ct == at::kFloat) outer_grad_weight<float>(p, g, K, gw);
      else outer_grad_weight<double>(p, g, K, gw);
    } else {
      at::Tensor st = transpose_bits(p, K);  // [K, ceil(R/32)]
      if (ct == at::kFloat) {
        BitGemm<float> bg{reinterpret_cast<const uint32_t*>(st.data_ptr<int32_t>()), st.size(1), K, R,
                          g.data_ptr<float>(), N, 1, N, gw.data_ptr<float>(), 1, K, nullptr};
        bg.nibbles = nibble_scan(density);
        run_bitgemm<float>(bg);
      } else {
        BitGemm<double> bg{reinterpret_cast<const uint32_t*>(st.data_ptr<int32_t>()), st.size(1), K, R,
                           g.data_ptr<double>(), N, 1, N, gw.data_ptr<double>(), 1, K, nullptr};
        run_bitgemm<double>(bg);
      }
    }
  }
  if (out_t != ct) {
    gs = gs.to(out_t);
    gw = gw.to(out_t);
    gb = gb.to(out_t);
  }
  return {gs, gw, gb};
}

// ================================================================== low-bit weights

at::Tensor spike_gemm_lowbit_cpu(const at::Tensor& packed_in, const at::Tensor& planes_in, const at::Tensor& scale_in,
                                 const std::optional<at::Tensor>& bias_in, int64_t bits) {
  const char* op = "snnops.spike_gemm_lowbit";
  TORCH_CHECK(bits >= 1 && bits <= 4, op, ": bits must be 1, 2, 3 or 4, got ", bits);
  TORCH_CHECK(packed_in.scalar_type() == at::kInt && packed_in.dim() >= 1, op,
              ": packed spikes must be int32 [..., words], got ", packed_in.scalar_type(), " ", packed_in.sizes());
  TORCH_CHECK(planes_in.scalar_type() == at::kInt && planes_in.dim() == 3 && planes_in.size(1) == bits + 1, op,
              ": planes must be int32 [out_features, bits + 1 = ", bits + 1, ", words], got ", planes_in.scalar_type(),
              " ", planes_in.sizes());
  const int64_t N = planes_in.size(0), W = planes_in.size(2);
  TORCH_CHECK(packed_in.size(-1) == W, op, ": packed spikes have ", packed_in.size(-1), " words per row but planes have ", W);
  TORCH_CHECK(scale_in.is_floating_point() && (scale_in.numel() == 1 || (scale_in.dim() == 1 && scale_in.size(0) == N)),
              op, ": scale must be a floating-point scalar or [", N, "], got ", scale_in.scalar_type(), " ", scale_in.sizes());
  const auto bias = defined_or_none(bias_in);
  if (bias.has_value())
    TORCH_CHECK(bias->is_floating_point() && bias->dim() == 1 && bias->size(0) == N, op, ": bias must have shape [", N,
                "], got ", bias->sizes());
  const auto out_t = scale_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<int64_t> shape(packed_in.sizes().begin(), packed_in.sizes().end() - 1);
  shape.push_back(N);
  at::Tensor out = at::empty(shape, packed_in.options().dtype(out_t));
  if (out.numel() == 0) return out;
  const int64_t R = out.numel() / N;
  at::Tensor p = packed_in.contiguous(), pl = planes_in.contiguous();
  at::Tensor sc = scale_in.to(at::kDouble).reshape({-1}).contiguous();
  at::Tensor bs = bias.has_value() ? bias->to(at::kDouble).contiguous() : at::Tensor();
  const uint32_t* S = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  const uint32_t* P = reinterpret_cast<const uint32_t*>(pl.data_ptr<int32_t>());
  const double* scp = sc.data_ptr<double>();
  const bool per_channel = sc.numel() != 1;
  const double* bp = bs.defined() ? bs.data_ptr<double>() : nullptr;
  const int64_t np = bits + 1;
  const bool avx2 = spike_kernels::bits_avx2();
  // Tasks: blocks of output rows x blocks of channels; a block of channels' planes
  // (nb * np * W words) is reused by every spike row of the task from cache.
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>(N, (64 * 1024) / std::max<int64_t>(1, np * W * 4)));
  const int64_t nnb = ceil_div(N, nb);
  const int64_t rb = std::max<int64_t>(1, std::min<int64_t>(R, 256));
  const int64_t nrb = ceil_div(R, rb);
  auto run = [&](auto* dst) {
    parallel_pieces(nrb * nnb, 1, [&](int64_t t0, int64_t t1) {
      std::vector<int64_t> acc(nb);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = (t / nnb) * rb, r1 = std::min(R, r0 + rb);
        const int64_t n0 = (t % nnb) * nb, n1 = std::min(N, n0 + nb);
        for (int64_t r = r0; r < r1; ++r) {
          spike_kernels::lowbit_dots(S + r * W, P + n0 * np * W, W, bits, n1 - n0, acc.data(), avx2);
          for (int64_t n = n0; n < n1; ++n) {
            // Exact: |acc| < 2^(bits + 1) K, so acc * scale rounds once (in double), and
            // the bias adds one more double rounding, as the float64 reference does.
            double y = (double)acc[n - n0] * scp[per_channel ? n : 0];
            if (bp) y += bp[n];
            dst[r * N + n] = (std::remove_pointer_t<decltype(dst)>)y;
          }
        }
      }
    });
  };
  if (out_t == at::kDouble) run(out.data_ptr<double>());
  else run(out.data_ptr<float>());
  return out;
}

TORCH_LIBRARY_IMPL(snnops, CPU, m) {
  m.impl("pack_spikes", &pack_spikes_cpu);
  m.impl("unpack_spikes", &unpack_spikes_cpu);
  m.impl("spike_gemm", &spike_gemm_cpu);
  m.impl("spike_gemm_packed", &spike_gemm_packed_cpu);
  m.impl("spike_gemm_bwd", &spike_gemm_bwd_cpu);
  m.impl("spike_gemm_lowbit", &spike_gemm_lowbit_cpu);
}

}  // namespace snnops
