// Spike GEMMs on bit-packed spikes (CPU): packing, Y = S W^T + b, dW = dY^T S,
// and spikes times low-bit weights computed bit-serially.
//
// One kernel does the work of both the forward and dW:
//     out[r, :] = init + sum over set bits c of row r of A of B[c, :]
// forward: A = packed S [M, K], B = W^T (read from W through strides), out = Y;
// dW:      A = S^T (bit-transposed, [K, M]), B = dY [M, N], out = dW [N, K] (via strides).
// Work is proportional to the set bits. Output columns are cut into chunks of 64
// (eight AVX2 accumulators); the B rows of one chunk are copied (or transposed)
// into a panel that stays in cache, and every row r of a task is run over it.
// Each (row block, column chunk) task owns its outputs: no atomics.
// Above a density threshold (measured, see kDense*) the dense path (MKL through
// at::mm on the unpacked float spikes) takes over.
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

#include "cpu/simd.h"
#include "cpu/spike_pack.h"

#if SNN_HAVE_AVX2
// AVX2 kernels that also scan bits (tzcnt/blsr) and count them (popcnt).
#define SNN_AVX2_BITS __attribute__((target("avx2,fma,popcnt,bmi,bmi2")))
#endif

namespace snnops {
namespace {

using spike_pack::packed_words;

// Output columns per task (eight 8-float AVX2 accumulators).
constexpr int64_t kChunk = 64;
// Panel rows (B rows copied per column chunk): 256 rows x 64 floats = 64 KiB, L2.
// A whole K up to kPanelFull rows is kept in one panel so that the accumulators stay
// in registers for a full row of A.
constexpr int64_t kPanelRows = 256;
constexpr int64_t kPanelFull = 1024;
// Rows of B read in place (no copy) per block when B is already row-major: 2048 x
// 64 floats = 512 KiB of B per block stays in L2 while every row of A passes over it.
constexpr int64_t kDirectRows = 2048;

bool fast_bits() {
#if SNN_HAVE_AVX2
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi") &&
           __builtin_cpu_supports("bmi2");
  }();
  return ok && use_avx2();
#else
  return false;
#endif
}

// SNNOPS_SPIKE_GEMM=bits|dense forces one path (benchmarks measure both; tests run
// both); unset or "auto" picks by density.
enum class Path { kAuto, kBits, kDense };
Path forced_path() {
  const char* v = std::getenv("SNNOPS_SPIKE_GEMM");
  if (v == nullptr) return Path::kAuto;
  if (std::strcmp(v, "bits") == 0) return Path::kBits;
  if (std::strcmp(v, "dense") == 0) return Path::kDense;
  return Path::kAuto;
}

// Density (fraction of set bits) above which the dense MKL path is faster, measured
// with bench/bench_spike_gemm.py on the reference shapes (docs/spike_gemm.md).
constexpr double kDenseForward = 0.35;
constexpr double kDenseGradW = 0.35;

bool use_dense(double density, double threshold) {
  switch (forced_path()) {
    case Path::kBits: return false;
    case Path::kDense: return true;
    default: return density > threshold;
  }
}

inline int64_t popcount_words(const uint32_t* w, int64_t n) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += __builtin_popcount(w[i]);
  return c;
}

int64_t count_bits(const at::Tensor& packed) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>());
  const int64_t n = packed.numel();
  std::atomic<int64_t> total{0};
  at::parallel_for(0, n, 1 << 16, [&](int64_t a, int64_t b) { total += popcount_words(w + a, b - a); });
  return total.load();
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

template <typename T>
int64_t pack_rows_block(const T* x, int64_t K, uint32_t* out, int64_t W, int64_t r0, int64_t r1,
                        bool avx2, int64_t* bad_row) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t bad;
#if SNN_HAVE_AVX2
    if constexpr (std::is_same_v<T, float>) {
      bad = avx2 ? spike_pack::pack_row_f32(x + r * K, K, out + r * W)
                 : spike_pack::pack_row<T>(x + r * K, K, out + r * W);
    } else {
      bad = spike_pack::pack_row<T>(x + r * K, K, out + r * W);
    }
#else
    (void)avx2;
    bad = spike_pack::pack_row<T>(x + r * K, K, out + r * W);
#endif
    if (bad >= 0) {
      *bad_row = r;
      return bad;
    }
  }
  return -1;
}

template <typename T>
int64_t pack_columns_block(const T* x, int64_t K, int64_t inner, uint32_t* out, int64_t W, int64_t o,
                           int64_t i0, int64_t i1, bool avx2) {
  const T* src = x + o * K * inner + i0;
  uint32_t* dst = out + (o * inner + i0) * W;
  const int64_t n = i1 - i0;
  int64_t bad;
#if SNN_HAVE_AVX2
  if constexpr (std::is_same_v<T, float>) {
    bad = avx2 ? spike_pack::pack_columns_f32(src, K, inner, n, dst, W)
               : spike_pack::pack_columns<T>(src, K, inner, n, dst, W);
  } else {
    bad = spike_pack::pack_columns<T>(src, K, inner, n, dst, W);
  }
#else
  (void)avx2;
  bad = spike_pack::pack_columns<T>(src, K, inner, n, dst, W);
#endif
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
  std::atomic<int64_t> bad_flat{-1};
  std::atomic<int64_t> total{0};
  AT_DISPATCH_ALL_TYPES_AND(at::kBool, x.scalar_type(), "pack_spikes", [&] {
    const scalar_t* src = rows ? x.movedim(dim, -1).data_ptr<scalar_t>() : x.data_ptr<scalar_t>();
    if (rows) {
      const int64_t R = outer * inner;
      at::parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
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
      // Tasks: (outer index, block of positions).
      const int64_t blk = std::max<int64_t>(8, std::min<int64_t>(inner, (16384 / std::max<int64_t>(K, 1)) / 8 * 8));
      const int64_t nblk = ceil_div(inner, blk);
      at::parallel_for(0, outer * nblk, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t o = t / nblk, i0 = (t % nblk) * blk, i1 = std::min(inner, i0 + blk);
          const int64_t f = pack_columns_block<scalar_t>(src, K, inner, out, W, o, i0, i1, avx2);
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
    std::vector<int64_t> where;
    if (rows) {
      const int64_t r = bad / K, k = bad % K;
      auto moved = moved_shape(x.sizes(), dim, K);
      std::vector<int64_t> rest(moved.begin(), moved.end() - 1);
      // The full index: the row's index over the other dims, with k inserted at dim.
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
      TORCH_CHECK(false, op, ": spikes must hold only 0 or 1, found ", v, " at index ",
                  index_string(x.sizes(), flat), " (feature ", k, " along dim ", dim, ")");
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
      at::parallel_for(0, R, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) unpack_one_row<scalar_t>(words + r * W, K, dst + r * K, avx2);
      });
    } else {
      const int64_t blk = 256;
      const int64_t nblk = ceil_div(inner, blk);
      at::parallel_for(0, outer * nblk, 1, [&](int64_t t0, int64_t t1) {
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

// ================================================================== bit-matrix transpose

// a[i] bit j  <->  a[j] bit i  (LSB-first on both axes).
inline void transpose32(uint32_t a[32]) {
  static const uint32_t masks[5] = {0x0000FFFFu, 0x00FF00FFu, 0x0F0F0F0Fu, 0x33333333u, 0x55555555u};
  int level = 0;
  for (int j = 16; j != 0; j >>= 1, ++level) {
    const uint32_t m = masks[level];
    for (int k = 0; k < 32; k = (k + j + 1) & ~j) {
      const uint32_t t = ((a[k] >> j) ^ a[k + j]) & m;
      a[k] ^= t << j;
      a[k + j] ^= t;
    }
  }
}

// packed [R, W] (K features) -> transposed [K, ceil(R/32)].
at::Tensor transpose_bits(const at::Tensor& packed2d, int64_t K) {
  const int64_t R = packed2d.size(0), W = packed2d.size(1), RW = packed_words(R);
  at::Tensor t = at::empty({K, RW}, packed2d.options());
  if (t.numel() == 0) return t;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(packed2d.data_ptr<int32_t>());
  uint32_t* dst = reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>());
  at::parallel_for(0, RW * W, 64, [&](int64_t t0, int64_t t1) {
    uint32_t a[32];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t rw = task / W, w = task % W;
      for (int i = 0; i < 32; ++i) {
        const int64_t r = rw * 32 + i;
        a[i] = r < R ? src[r * W + w] : 0u;
      }
      transpose32(a);
      const int64_t kmax = std::min<int64_t>(32, K - w * 32);
      for (int64_t j = 0; j < kmax; ++j) dst[(w * 32 + j) * RW + rw] = a[j];
    }
  });
  return t;
}

// ================================================================== the bit-scan GEMM

template <typename T>
struct BitGemm {
  const uint32_t* A;
  int64_t lda, R, C;
  const T* B;
  int64_t ldb_c, ldb_n, N;
  T* out;
  int64_t ldo_r, ldo_n;
  const T* bias;
};

inline uint32_t last_word_mask(int64_t C) {
  const int64_t rem = C % 32;
  return rem == 0 ? 0xFFFFFFFFu : ((1u << rem) - 1u);
}

// panel[c * kChunk + j] = B[c0 + c, n0 + j] for c < cc, j < nn; zero beyond nn.
template <typename T>
void build_panel(const BitGemm<T>& g, int64_t c0, int64_t cc, int64_t n0, int64_t nn, T* panel) {
  if (g.ldb_c == 1) {
    for (int64_t j = 0; j < nn; ++j) {
      const T* src = g.B + c0 + (n0 + j) * g.ldb_n;
      for (int64_t c = 0; c < cc; ++c) panel[c * kChunk + j] = src[c];
    }
  } else {
    for (int64_t c = 0; c < cc; ++c) {
      const T* src = g.B + (c0 + c) * g.ldb_c + n0 * g.ldb_n;
      for (int64_t j = 0; j < nn; ++j) panel[c * kChunk + j] = src[j * g.ldb_n];
    }
  }
  if (nn < kChunk)
    for (int64_t c = 0; c < cc; ++c) std::fill(panel + c * kChunk + nn, panel + (c + 1) * kChunk, T(0));
}

// One task: rows [r0, r1) x columns [n0, n0 + nn), portable.
template <typename T>
void bitgemm_task_generic(const BitGemm<T>& g, int64_t r0, int64_t r1, int64_t n0, std::vector<T>& panel_buf,
                          std::vector<T>& tile) {
  const int64_t nn = std::min(kChunk, g.N - n0);
  const int64_t CW = packed_words(g.C);
  const uint32_t lastmask = last_word_mask(g.C);
  const int64_t rows = r1 - r0;
  tile.assign(rows * kChunk, T(0));
  if (g.bias)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < nn; ++j) tile[r * kChunk + j] = g.bias[n0 + j];
  const int64_t cb = g.C <= kPanelFull ? std::max<int64_t>(g.C, 1) : kPanelRows;
  panel_buf.resize(cb * kChunk);
  for (int64_t c0 = 0; c0 < g.C; c0 += cb) {
    const int64_t cc = std::min(cb, g.C - c0);
    build_panel<T>(g, c0, cc, n0, nn, panel_buf.data());
    const int64_t w0 = c0 / 32, w1 = ceil_div(c0 + cc, 32);
    for (int64_t r = r0; r < r1; ++r) {
      T* acc = tile.data() + (r - r0) * kChunk;
      const uint32_t* a = g.A + r * g.lda;
      for (int64_t w = w0; w < w1; ++w) {
        uint32_t bits = a[w];
        if (w == CW - 1) bits &= lastmask;
        const T* base = panel_buf.data() + (w * 32 - c0) * kChunk;
        while (bits) {
          const int c = __builtin_ctz(bits);
          bits &= bits - 1;
          const T* p = base + c * kChunk;
          for (int64_t j = 0; j < kChunk; ++j) acc[j] += p[j];
        }
      }
    }
  }
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t j = 0; j < nn; ++j) g.out[r * g.ldo_r + (n0 + j) * g.ldo_n] = tile[(r - r0) * kChunk + j];
}

#if SNN_HAVE_AVX2
// 8x8 float transpose: dst[j * ldd + i] = src[i * lds + j].
SNN_AVX2 static inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * lds), r1 = _mm256_loadu_ps(src + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(s3, s7, 0x31));
}

// The transposed-weight panel (B[c, n] = W[n, c], ldb_c == 1) with 8x8 transposes.
SNN_AVX2 void build_panel_avx2(const BitGemm<float>& g, int64_t c0, int64_t cc, int64_t n0, int64_t nn,
                               float* panel) {
  if (g.ldb_c != 1) return build_panel<float>(g, c0, cc, n0, nn, panel);
  const int64_t n8 = nn / 8 * 8, c8 = cc / 8 * 8;
  for (int64_t j = 0; j < n8; j += 8)
    for (int64_t c = 0; c < c8; c += 8) transpose8x8(g.B + c0 + c + (n0 + j) * g.ldb_n, g.ldb_n, panel + c * kChunk + j, kChunk);
  for (int64_t j = 0; j < nn; ++j) {
    const float* src = g.B + c0 + (n0 + j) * g.ldb_n;
    const int64_t cstart = j < n8 ? c8 : 0;
    for (int64_t c = cstart; c < cc; ++c) panel[c * kChunk + j] = src[c];
  }
  if (nn < kChunk)
    for (int64_t c = 0; c < cc; ++c) std::fill(panel + c * kChunk + nn, panel + (c + 1) * kChunk, 0.0f);
}

// Rows [r0, r1) of A over one panel (lds floats between panel rows), 64 columns held in
// eight registers; acc rows at tile + (r - r0) * ldt.
SNN_AVX2_BITS static inline void scan_rows_avx2(const uint32_t* A, int64_t lda, int64_t r0, int64_t r1,
                                                int64_t w0, int64_t w1, int64_t CW, uint32_t lastmask,
                                                const float* panel, int64_t lds, int64_t c0, float* tile,
                                                int64_t ldt) {
  for (int64_t r = r0; r < r1; ++r) {
    float* t = tile + (r - r0) * ldt;
    __m256 a0 = _mm256_loadu_ps(t + 0), a1 = _mm256_loadu_ps(t + 8), a2 = _mm256_loadu_ps(t + 16),
           a3 = _mm256_loadu_ps(t + 24), a4 = _mm256_loadu_ps(t + 32), a5 = _mm256_loadu_ps(t + 40),
           a6 = _mm256_loadu_ps(t + 48), a7 = _mm256_loadu_ps(t + 56);
    const uint32_t* a = A + r * lda;
    for (int64_t w = w0; w < w1; ++w) {
      uint32_t bits = a[w];
      if (w == CW - 1) bits &= lastmask;
      const float* base = panel + (w * 32 - c0) * lds;
      while (bits) {
        const float* p = base + (int64_t)__builtin_ctz(bits) * lds;
        bits &= bits - 1;
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + 0));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + 24));
        a4 = _mm256_add_ps(a4, _mm256_loadu_ps(p + 32));
        a5 = _mm256_add_ps(a5, _mm256_loadu_ps(p + 40));
        a6 = _mm256_add_ps(a6, _mm256_loadu_ps(p + 48));
        a7 = _mm256_add_ps(a7, _mm256_loadu_ps(p + 56));
      }
    }
    _mm256_storeu_ps(t + 0, a0);
    _mm256_storeu_ps(t + 8, a1);
    _mm256_storeu_ps(t + 16, a2);
    _mm256_storeu_ps(t + 24, a3);
    _mm256_storeu_ps(t + 32, a4);
    _mm256_storeu_ps(t + 40, a5);
    _mm256_storeu_ps(t + 48, a6);
    _mm256_storeu_ps(t + 56, a7);
  }
}

SNN_AVX2_BITS void bitgemm_task_avx2(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0,
                                     std::vector<float>& panel_buf, std::vector<float>& tile_buf) {
  const int64_t nn = std::min(kChunk, g.N - n0);
  const bool full = nn == kChunk;
  const int64_t CW = packed_words(g.C);
  const uint32_t lastmask = last_word_mask(g.C);
  const int64_t rows = r1 - r0;
  // Accumulators live in the output itself when it is row-major over a full chunk.
  const bool direct_out = full && g.ldo_n == 1;
  float* tile;
  int64_t ldt;
  if (direct_out) {
    tile = g.out + r0 * g.ldo_r + n0;
    ldt = g.ldo_r;
  } else {
    tile_buf.resize(rows * kChunk);
    tile = tile_buf.data();
    ldt = kChunk;
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* t = tile + r * ldt;
    if (g.bias) {
      for (int64_t j = 0; j < nn; ++j) t[j] = g.bias[n0 + j];
      for (int64_t j = nn; j < kChunk; ++j) t[j] = 0.0f;
    } else {
      for (int64_t j = 0; j < kChunk; ++j) t[j] = 0.0f;
    }
  }
  // B read in place when it is row-major and the chunk is full; else copied to panels.
  const bool direct_b = full && g.ldb_n == 1;
  const int64_t cb = direct_b ? kDirectRows : (g.C <= kPanelFull ? std::max<int64_t>(g.C, 1) : kPanelRows);
  if (!direct_b) panel_buf.resize(std::min(cb, std::max<int64_t>(g.C, 1)) * kChunk);
  for (int64_t c0 = 0; c0 < g.C; c0 += cb) {
    const int64_t cc = std::min(cb, g.C - c0);
    const float* panel;
    int64_t lds;
    if (direct_b) {
      panel = g.B + c0 * g.ldb_c + n0;
      lds = g.ldb_c;
    } else {
      build_panel_avx2(g, c0, cc, n0, nn, panel_buf.data());
      panel = panel_buf.data();
      lds = kChunk;
    }
    scan_rows_avx2(g.A, g.lda, r0, r1, c0 / 32, ceil_div(c0 + cc, 32), CW, lastmask, panel, lds, c0, tile, ldt);
  }
  if (direct_out) return;
  if (g.ldo_n == 1) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(g.out + (r0 + r) * g.ldo_r + n0, tile + r * kChunk, nn * sizeof(float));
  } else if (g.ldo_r == 1) {
    // Transposed output (dW): out[n * ldo_n + r], contiguous in r.
    const int64_t r8 = rows / 8 * 8, n8 = nn / 8 * 8;
    for (int64_t r = 0; r < r8; r += 8)
      for (int64_t j = 0; j < n8; j += 8) transpose8x8(tile + r * kChunk + j, kChunk, g.out + (n0 + j) * g.ldo_n + r0 + r, g.ldo_n);
    for (int64_t j = 0; j < nn; ++j)
      for (int64_t r = (j < n8 ? r8 : 0); r < rows; ++r) g.out[(n0 + j) * g.ldo_n + r0 + r] = tile[r * kChunk + j];
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < nn; ++j) g.out[(r0 + r) * g.ldo_r + (n0 + j) * g.ldo_n] = tile[r * kChunk + j];
  }
}
#endif  // SNN_HAVE_AVX2

template <typename T>
void run_bitgemm(const BitGemm<T>& g) {
  if (g.R == 0 || g.N == 0) return;
  const int64_t nch = ceil_div(g.N, kChunk);
  const int64_t threads = at::get_num_threads();
  // Enough tasks for the threads, rows per task large enough to pay for the panel copy.
  const int64_t want = ceil_div(2 * threads, nch);
  int64_t rb = std::max<int64_t>(8, ceil_div(g.R, want));
  rb = std::min<int64_t>(rb, 4096);
  const int64_t nrb = ceil_div(g.R, rb);
  const bool avx2 = std::is_same_v<T, float> && fast_bits();
  at::parallel_for(0, nrb * nch, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> panel, tile;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ib = t / nch, ch = t % nch;
      const int64_t r0 = ib * rb, r1 = std::min(g.R, r0 + rb);
#if SNN_HAVE_AVX2
      if constexpr (std::is_same_v<T, float>) {
        if (avx2) {
          bitgemm_task_avx2(g, r0, r1, ch * kChunk, panel, tile);
          continue;
        }
      }
#endif
      (void)avx2;
      bitgemm_task_generic<T>(g, r0, r1, ch * kChunk, panel, tile);
    }
  });
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

// Y [R, N] from packed rows [R, W] over weight [N, K].
template <typename T>
void bits_forward(const at::Tensor& packed2d, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  at::Tensor& out2d) {
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
  run_bitgemm<T>(g);
}

at::Tensor forward_from_packed(const at::Tensor& packed, const at::Tensor& weight_in,
                               const std::optional<at::Tensor>& bias_in, int64_t nnz,
                               const at::Tensor& dense_spikes_rows) {
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
  if (out.numel() == 0) return out.to(out_t);
  at::Tensor out2d = out.view({R, N});
  const double density = (R * K) != 0 ? (double)nnz / (double)(R * K) : 0.0;
  if (K > 0 && use_dense(density, kDenseForward)) {
    at::Tensor s = dense_spikes_rows.defined() ? dense_spikes_rows.to(ct)
                                                : unpack_impl(packed.view({R, W}), K, -1, ct, "snnops.spike_gemm");
    if (bias.has_value()) at::addmm_out(out2d, *bias, s, weight.t());
    else at::mm_out(out2d, s, weight.t());
  } else if (K == 0) {
    if (bias.has_value()) out2d.copy_(bias->expand({R, N}));
    else out2d.zero_();
  } else {
    at::Tensor p2 = packed.view({R, W});
    if (ct == at::kFloat) bits_forward<float>(p2, weight, bias, out2d);
    else bits_forward<double>(p2, weight, bias, out2d);
  }
  return out.to(out_t);
}

}  // namespace

// ================================================================== entry points

void spike_rows_gemm_f32(const uint32_t* A, int64_t lda, int64_t R, int64_t C, const float* B, int64_t ldb_c,
                         int64_t ldb_n, int64_t N, float* out, int64_t ldo_r, int64_t ldo_n, const float* bias) {
  BitGemm<float> g{A, lda, R, C, B, ldb_c, ldb_n, N, out, ldo_r, ldo_n, bias};
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
  int64_t nnz = 0;
  at::Tensor packed = pack_impl(spikes, dim, &nnz, op);
  const int64_t K = weight.size(1);
  const int64_t R = K ? spikes.numel() / K : 0;
  const double density = (R * K) != 0 ? (double)nnz / (double)(R * K) : 0.0;
  at::Tensor dense_rows;
  if (K > 0 && R > 0 && use_dense(density, kDenseForward)) dense_rows = spikes.movedim(dim, -1).reshape({R, K});
  at::Tensor out = forward_from_packed(packed, weight, bias, nnz, dense_rows);
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
  return forward_from_packed(p, weight, bias, nnz, at::Tensor());
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
    at::Tensor p = packed_in.contiguous().view({R, W});
    const int64_t nnz = p.numel() ? count_bits(p) : 0;
    const double density = (R * K) != 0 ? (double)nnz / (double)(R * K) : 0.0;
    if (R == 0 || K == 0) {
      gw.zero_();
    } else if (use_dense(density, kDenseGradW)) {
      at::mm_out(gw, g.t(), unpack_impl(p, K, -1, ct, op));
    } else {
      at::Tensor st = transpose_bits(p, K);  // [K, ceil(R/32)]
      if (ct == at::kFloat) {
        BitGemm<float> bg{reinterpret_cast<const uint32_t*>(st.data_ptr<int32_t>()), st.size(1), K, R,
                          g.data_ptr<float>(), N, 1, N, gw.data_ptr<float>(), 1, K, nullptr};
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

namespace {

// Counts of set bits of (s AND plane_j) for j = 0..planes-1 over W words.
inline void lowbit_counts_generic(const uint32_t* s, const uint32_t* planes, int64_t W, int64_t np, int64_t* cnt) {
  for (int64_t j = 0; j < np; ++j) {
    const uint32_t* p = planes + j * W;
    int64_t c = 0;
    for (int64_t w = 0; w < W; ++w) c += __builtin_popcount(s[w] & p[w]);
    cnt[j] = c;
  }
}

#if SNN_HAVE_AVX2
// Byte-wise popcount of 256 bits (nibble lookup), summed into four 64-bit lanes.
SNN_AVX2_BITS static inline __m256i popcnt_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

SNN_AVX2_BITS static inline int64_t hsum_epi64(__m256i v) {
  alignas(32) int64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), v);
  return t[0] + t[1] + t[2] + t[3];
}

SNN_AVX2_BITS void lowbit_counts_avx2(const uint32_t* s, const uint32_t* planes, int64_t W, int64_t np, int64_t* cnt) {
  const int64_t W8 = W / 8 * 8;
  for (int64_t j = 0; j < np; ++j) {
    const uint32_t* p = planes + j * W;
    __m256i total = _mm256_setzero_si256();
    int64_t w = 0;
    while (w < W8) {
      // Byte counters hold at most 8 per step: flush every 31 steps.
      __m256i bytes = _mm256_setzero_si256();
      const int64_t end = std::min(W8, w + 31 * 8);
      for (; w < end; w += 8) {
        const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + w)),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + w)));
        bytes = _mm256_add_epi8(bytes, popcnt_bytes(v));
      }
      total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
    }
    int64_t c = hsum_epi64(total);
    for (; w < W; ++w) c += _mm_popcnt_u32(s[w] & p[w]);
    cnt[j] = c;
  }
}
#endif

}  // namespace

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
  const int64_t offset = (int64_t(1) << bits) - 1;
  const bool avx2 = fast_bits();
  // Tasks: blocks of output rows x blocks of channels; a block of channels' planes
  // (nb * np * W words) is reused by every spike row of the task from cache.
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>(N, (64 * 1024) / std::max<int64_t>(1, np * W * 4)));
  const int64_t nnb = ceil_div(N, nb);
  const int64_t rb = std::max<int64_t>(1, std::min<int64_t>(R, 256));
  const int64_t nrb = ceil_div(R, rb);
  auto run = [&](auto* dst) {
    at::parallel_for(0, nrb * nnb, 1, [&](int64_t t0, int64_t t1) {
      int64_t cnt[5];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = (t / nnb) * rb, r1 = std::min(R, r0 + rb);
        const int64_t n0 = (t % nnb) * nb, n1 = std::min(N, n0 + nb);
        for (int64_t r = r0; r < r1; ++r) {
          const uint32_t* s = S + r * W;
          for (int64_t n = n0; n < n1; ++n) {
            const uint32_t* pn = P + n * np * W;
#if SNN_HAVE_AVX2
            if (avx2) lowbit_counts_avx2(s, pn, W, np, cnt);
            else lowbit_counts_generic(s, pn, W, np, cnt);
#else
            lowbit_counts_generic(s, pn, W, np, cnt);
#endif
            int64_t acc = 0;
            for (int64_t j = 0; j < bits; ++j) acc += cnt[j] << j;
            acc = 2 * acc - offset * cnt[bits];
            // Exact: |acc| < 2^(bits + 1) K, so acc * scale rounds once (in double), and
            // the bias adds one more double rounding, as the float64 reference does.
            double y = (double)acc * scp[per_channel ? n : 0];
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
