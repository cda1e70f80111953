// Raw kernels of the spike GEMMs (no torch headers: this TU recompiles in seconds).
//
// The bit-scan GEMM, one kernel for the forward and for dW:
//     out[r, n] = init[n] + sum over set bits c of row r of A of B[c, n]
//   A: R rows of ceil(C/32) words (row r at A + r * lda; bits >= C ignored)
//   B: element (c, n) at B[c * ldb_c + n * ldb_n] (any strides)
//   out: element (r, n) at out[r * ldo_r + n * ldo_n]; init = bias or 0
// forward: A = packed S [M, K], B = W^T through W's strides (ldb_c = 1, ldb_n = K);
// dW:      A = S^T [K, M] (transpose_bits32), B = dY [M, N], out = dW through strides.
// Work is split in tasks (a block of rows x a chunk of bitgemm_chunk(N) columns); each
// task owns its outputs, so tasks run on any threads without atomics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace snnops {
namespace spike_kernels {

template <typename T>
struct BitGemm {
  const uint32_t* A;
  int64_t lda, R, C;
  const T* B;
  int64_t ldb_c, ldb_n, N;
  T* out;
  int64_t ldo_r, ldo_n;
  const T* bias;  // [N] or nullptr
  // Optional fused packing (forward from float spikes): row r of A is first packed from
  // the 0/1 floats src[r * src_ld, + C) into A (then writable); needs one column chunk
  // (N <= bitgemm_chunk), so that exactly one task packs each row.
  const float* src = nullptr;
  int64_t src_ld = 0;
  // AVX-512 only: scan groups of 4 bits (nibbles) against a table of the 16 subset sums
  // of each group's 4 B rows: one table row per non-zero nibble instead of one B row per
  // set bit (at density 0.5, 30 table rows for 128 bits instead of 64 B rows). For dense
  // enough spikes; the caller decides (spike_gemm.cpp, measured).
  bool nibbles = false;
};

// 64-byte aligned storage for the scratch vectors: panel and tile rows are then whole
// cache lines (std::vector's 16-byte alignment split every AVX-512 access over two lines).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// Scratch of one thread (panels, index lists, tiles); reused across its tasks.
struct Workspace {
  AlignedVector<float> panel_f, tile_f, tile2_f, table_f;
  AlignedVector<double> panel_d, tile_d;
  std::vector<int32_t> idx;
};

// Columns per task for an output of N columns (the AVX2 kernel keeps them in registers).
int64_t bitgemm_chunk(int64_t N, bool avx2);

// Rows [r0, r1) x columns [n0, n0 + bitgemm_chunk) of the product. Returns -1, or with
// fused packing r * C + k for a value src[r, k] that is not 0 or 1 (nothing computed).
int64_t bitgemm_task(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0, bool avx2, Workspace& ws);
int64_t bitgemm_task(const BitGemm<double>& g, int64_t r0, int64_t r1, int64_t n0, bool avx2, Workspace& ws);

// dW by outer products, for a dW^T small enough to stay in cache (K * kOuterChunk floats):
//     P[k * kOuterStride + j] += sum over rows m in [m0, m1) with bit k of S row m set of dY[m, n0 + j]
// for j < nn (columns nn..NC of P are left as they are), NC = kOuterChunk. S [M, ceil(K/32)]
// is read row by row as packed (no bit transpose), dY [M, N] (row stride ldy) streams
// through once, a row's NC values in registers, added to the P rows of its set bits (P
// stays in L1/L2). The caller zeroes P and sums the partials of its row blocks.
constexpr int64_t kOuterChunk = 64;
// P's row stride: 16 floats of padding, so that the rows of bits k and k + 16 are not 4 KiB
// apart (a load 4 KiB from a pending store waits for it).
constexpr int64_t kOuterStride = kOuterChunk + 16;
void outer_dw_task(const uint32_t* S, int64_t K, const float* dY, int64_t ldy, int64_t m0, int64_t m1, int64_t n0,
                   int64_t nn, float* P, bool avx2, Workspace& ws);
void outer_dw_task(const uint32_t* S, int64_t K, const double* dY, int64_t ldy, int64_t m0, int64_t m1, int64_t n0,
                   int64_t nn, double* P, bool avx2, Workspace& ws);

// dW by subset-sum tables (AVX-512 only, bits_avx512()): the same partial P as
// outer_dw_task for rows [m0, m1) (m0 a multiple of 32). Per 32 rows of S: their bits
// transposed (one 32-bit word per k, AVX-512 delta swaps on 16 blocks at once), and the 16
// subset sums of every 4 of their dY rows, a 32 KiB table (L1); each k then adds the 8
// table rows its 8 nibbles select (no branch, no index list). The work does not depend on
// the density: M K N / 64 vector adds against M K N d / 16 for the set-bit lists, so it
// wins on dense spikes (threshold measured in spike_gemm.cpp).
void table_dw_task(const uint32_t* S, int64_t K, const float* dY, int64_t ldy, int64_t M, int64_t m0, int64_t m1,
                   int64_t n0, int64_t nn, float* P, Workspace& ws);

// The forward's product by the same tables (AVX-512 only): P[(r - r0) * ldp + j] +=
// sum over the set bits c of row r of A of B[c, n0 + j], j < kOuterChunk (P initialised by
// the caller; columns past N - n0 receive zeros). Per word of A: the 32 rows of B it covers
// (transposed from W when B = W^T), their 32 KiB table, one table row per nibble of each row.
void table_rows_task(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0, float* P, int64_t ldp, Workspace& ws);

// out[j * ldo + k] = P[k * ldp + j] for j < nn, k < K (a dW^T tile into rows of dW).
void transpose_tile(const float* P, int64_t ldp, int64_t K, int64_t nn, float* out, int64_t ldo);

// Bit-matrix transpose of packed rows: src [R, W] (row stride W) -> dst [K, ceil(R/32)],
// for the 32-row group rw and word column w (one 32x32 block).
void transpose_bits_block(const uint32_t* src, int64_t R, int64_t W, int64_t K, int64_t rw, int64_t w,
                          uint32_t* dst);

// Bit-serial low-bit product of one spike row with one weight row of `planes` bit-planes:
// cnt[j] = popcount(s AND plane_j) over W words.
void lowbit_counts(const uint32_t* s, const uint32_t* planes, int64_t W, int64_t np, int64_t* cnt, bool avx2);

// For nrows consecutive weight rows (planes [nrows, bits + 1, W]): the exact integer
// acc[i] = 2 sum_j 2^j popcount(s & plane_j) - (2^bits - 1) popcount(s & mask), so that
// y = acc * scale. AVX-512 VPOPCNTDQ where the CPU has it, else lowbit_counts.
void lowbit_dots(const uint32_t* s, const uint32_t* planes, int64_t W, int64_t bits, int64_t nrows, int64_t* acc,
                 bool avx2);

// pack_row_f32 of cpu/spike_pack.h (`avx2` false: the portable routine). Returns -1 or
// the feature index of a value not 0 or 1. (An AVX-512 version measured no faster: the
// packing of float spikes is bound by reading them from memory.)
int64_t pack_row(const float* x, int64_t K, uint32_t* words, bool avx2);

// Set bits in w[0, n) (hardware popcnt when `fast`).
int64_t popcount_words(const uint32_t* w, int64_t n, bool fast);
// counts[k] = set bits in row k, w[k n, (k + 1) n), k < rows (one call for many short rows).
void popcount_rows(const uint32_t* w, int64_t n, int64_t rows, int64_t* counts, bool fast);

// True when the AVX2 bit kernels may run (AVX2+FMA and popcnt/BMI, not forced generic).
bool bits_avx2();
// True when the accumulation may also use AVX-512F (not forced by SNNOPS_CPU_ISA=avx2|generic).
bool bits_avx512();

}  // namespace spike_kernels
}  // namespace snnops
