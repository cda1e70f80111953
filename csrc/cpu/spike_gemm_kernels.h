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

#include <cstdint>
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
};

// Scratch of one thread (panels, index lists, tiles); reused across its tasks.
struct Workspace {
  std::vector<float> panel_f, tile_f, tile2_f;
  std::vector<double> panel_d, tile_d;
  std::vector<int32_t> idx;
};

// Columns per task for an output of N columns (the AVX2 kernel keeps them in registers).
int64_t bitgemm_chunk(int64_t N, bool avx2);

// Rows [r0, r1) x columns [n0, n0 + bitgemm_chunk) of the product. Returns -1, or with
// fused packing r * C + k for a value src[r, k] that is not 0 or 1 (nothing computed).
int64_t bitgemm_task(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0, bool avx2, Workspace& ws);
int64_t bitgemm_task(const BitGemm<double>& g, int64_t r0, int64_t r1, int64_t n0, bool avx2, Workspace& ws);

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

// True when the AVX2 bit kernels may run (AVX2+FMA and popcnt/BMI, not forced generic).
bool bits_avx2();
// True when the accumulation may also use AVX-512F (not forced by SNNOPS_CPU_ISA=avx2|generic).
bool bits_avx512();

}  // namespace spike_kernels
}  // namespace snnops
