// Small GEMMs over channels-last rows, with "taps": the building block of the fused
// tensor-train convolutions.
//
//   C_i[j] (+)= sum_{t < ntaps} sum_{k < K} A_i[toff[t] + k * ask] * B[(t*K + k) * ldb + j]
//
// for rows i < M (A_i = arow[i], C_i = crow[i]) and columns j < N. Rows are pixels
// (or channels, for weight gradients) given by pointers, so one kernel serves every
// step of the TT block: a 1x1 conv is one tap; the 3x1 / 1x3 / 5-tap cross kernels are
// taps whose offsets move A by whole pixels inside a zero-padded channels-last buffer;
// a weight gradient makes rows of channels and runs k over pixels (ask = channels).
//
// Three kernel families, chosen at run time by the caller (isa_level()): AVX-512
// (register tiles picked by the width, L1-sized B chunks; see its section below), AVX2
// and portable C++ (also float64). AVX2 register tile: 6 rows x 16 columns (12
// accumulators, 2 B vectors and one broadcast: 15 of the 16 ymm registers), the
// classic shape that keeps both FMA ports busy while issuing 8 loads per 12 FMAs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/simd.h"

namespace snnops {
namespace tt {

// The kernel family to run: 2 = AVX-512, 1 = AVX2, 0 = portable.
inline int isa_level() { return use_avx512() ? 2 : use_avx2() ? 1 : 0; }

// ------------------------------------------------------------------ portable
template <typename T>
void gemm_rows_generic(int64_t M, int64_t N, int64_t K, const T* const* arow, int64_t ask,
                       const int64_t* toff, int ntaps, const T* B, int64_t ldb, T* const* crow,
                       bool accumulate) {
  constexpr int64_t MR = 4, NB = 64;
  T acc[MR][NB];
  for (int64_t j0 = 0; j0 < N; j0 += NB) {
    const int64_t nb = std::min(NB, N - j0);
    for (int64_t i0 = 0; i0 < M; i0 += MR) {
      const int64_t mr = std::min(MR, M - i0);
      for (int64_t i = 0; i < MR; ++i)
        for (int64_t j = 0; j < nb; ++j) acc[i][j] = T(0);
      for (int t = 0; t < ntaps; ++t) {
        const T* ap[MR];
        for (int64_t i = 0; i < MR; ++i) ap[i] = arow[i0 + std::min(i, mr - 1)] + toff[t];
        const T* b = B + (int64_t)t * K * ldb + j0;
        for (int64_t k = 0; k < K; ++k, b += ldb) {
          for (int64_t i = 0; i < mr; ++i) {
            const T a = ap[i][k * ask];
            T* ac = acc[i];
            for (int64_t j = 0; j < nb; ++j) ac[j] += a * b[j];
          }
        }
      }
      for (int64_t i = 0; i < mr; ++i) {
        T* c = crow[i0 + i] + j0;
        if (accumulate)
          for (int64_t j = 0; j < nb; ++j) c[j] += acc[i][j];
        else
          for (int64_t j = 0; j < nb; ++j) c[j] = acc[i][j];
      }
    }
  }
}

#if SNN_HAVE_AVX2
// One register tile: MR rows x NV vectors of 8 columns starting at column j; with
// MASKED the last vector only covers the lanes set in `mask`.
template <int MR, int NV, bool MASKED>
SNN_AVX2 inline void tile_avx2(int64_t K, const float* const* arow, int64_t ask, const int64_t* toff,
                               int ntaps, const float* B, int64_t ldb, float* const* crow, int64_t j,
                               __m256i mask, bool accumulate) {
  __m256 c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) c[i][v] = _mm256_setzero_ps();
  const float* b = B + j;
  for (int t = 0; t < ntaps; ++t) {
    const float* ap[MR];
    for (int i = 0; i < MR; ++i) ap[i] = arow[i] + toff[t];
    for (int64_t k = 0; k < K; ++k, b += ldb) {
      __m256 bv[NV];
      for (int v = 0; v < NV; ++v)
        bv[v] = (MASKED && v == NV - 1) ? _mm256_maskload_ps(b + 8 * v, mask) : _mm256_loadu_ps(b + 8 * v);
      const int64_t ko = k * ask;
      for (int i = 0; i < MR; ++i) {
        const __m256 a = _mm256_broadcast_ss(ap[i] + ko);
        for (int v = 0; v < NV; ++v) c[i][v] = _mm256_fmadd_ps(a, bv[v], c[i][v]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* cp = crow[i] + j;
    for (int v = 0; v < NV; ++v) {
      const bool m = MASKED && v == NV - 1;
      __m256 r = c[i][v];
      if (accumulate) r = _mm256_add_ps(r, m ? _mm256_maskload_ps(cp + 8 * v, mask) : _mm256_loadu_ps(cp + 8 * v));
      if (m)
        _mm256_maskstore_ps(cp + 8 * v, mask, r);
      else
        _mm256_storeu_ps(cp + 8 * v, r);
    }
  }
}

template <int MR>
SNN_AVX2 inline void tile_cols_avx2(int kind, int64_t K, const float* const* arow, int64_t ask,
                                    const int64_t* toff, int ntaps, const float* B, int64_t ldb,
                                    float* const* crow, int64_t j, __m256i mask, bool acc) {
  switch (kind) {
    case 0: return tile_avx2<MR, 2, false>(K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    case 1: return tile_avx2<MR, 2, true>(K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    case 2: return tile_avx2<MR, 1, false>(K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    default: return tile_avx2<MR, 1, true>(K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
  }
}

SNN_AVX2 inline void tile_any_avx2(int64_t mr, int kind, int64_t K, const float* const* arow, int64_t ask,
                                   const int64_t* toff, int ntaps, const float* B, int64_t ldb,
                                   float* const* crow, int64_t j, __m256i mask, bool acc) {
  switch (mr) {
    case 6: return tile_cols_avx2<6>(kind, K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    case 5: return tile_cols_avx2<5>(kind, K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    case 4: return tile_cols_avx2<4>(kind, K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    case 3: return tile_cols_avx2<3>(kind, K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    case 2: return tile_cols_avx2<2>(kind, K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
    default: return tile_cols_avx2<1>(kind, K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
  }
}

SNN_AVX2 inline void gemm_rows_avx2(int64_t M, int64_t N, int64_t K, const float* const* arow, int64_t ask,
                                    const int64_t* toff, int ntaps, const float* B, int64_t ldb,
                                    float* const* crow, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  // Column blocks: 16 wide, then one 9..15 (masked second vector), 8, or 1..7 block.
  const int64_t full16 = N / 16 * 16;
  const int64_t rem = N - full16;
  const int tail_kind = rem > 8 ? 1 : rem == 8 ? 2 : 3;
  const __m256i mask = tail_mask(rem > 8 ? rem - 8 : rem);
  // The B panel of one column block is ntaps*K*16 floats; when all of B fits in L1,
  // walk rows outside (A rows read once); otherwise columns outside (the B panel stays
  // in L1 while all rows pass over it).
  const bool rows_outside = (int64_t)ntaps * K * N * 4 <= 24 * 1024;
  auto block = [&](int64_t i0, int64_t j, int kind) {
    tile_any_avx2(std::min<int64_t>(6, M - i0), kind, K, arow + i0, ask, toff, ntaps, B, ldb, crow + i0, j,
                  mask, accumulate);
  };
  if (rows_outside) {
    for (int64_t i0 = 0; i0 < M; i0 += 6) {
      for (int64_t j = 0; j < full16; j += 16) block(i0, j, 0);
      if (rem) block(i0, full16, tail_kind);
    }
  } else {
    for (int64_t j = 0; j < full16; j += 16)
      for (int64_t i0 = 0; i0 < M; i0 += 6) block(i0, j, 0);
    if (rem)
      for (int64_t i0 = 0; i0 < M; i0 += 6) block(i0, full16, tail_kind);
  }
}

// ------------------------------------------------------------------ AVX-512
// Register tiles of MR rows x NV zmm vectors (16 columns each), chosen by the width N
// (mr_for below) so that every tile keeps 16-24 accumulators busy (FMA latency 4
// cycles on 2 ports: at least 8 independent chains, more to cover the broadcasts):
//   N > 48: 6 x 4 (24 acc + 4 B vectors)     N > 32: 8 x 3 (24 acc)
//   N > 16: 8 x 2 (16 acc)                   N <= 16: 8 x 1, two k steps (16 acc)
// The A element is a broadcast folded into the FMA's memory operand, so each row
// costs one general register for its pointer, and 8 rows is what the 16 general
// registers hold beside the loop's own. Rows one element apart (weight gradients)
// need a single pointer: 12 x 2 and 12 x 1 (two k steps) there, 24 accumulators.
//
// pf (8-row tiles, one tap, ask 1): the next tile's rows, prefetched a line every other
// k step (8 rows x K/16 lines over K steps) while this tile computes.
template <int MR, int NV, bool MASKED, bool UNIT>
SNN_AVX512 inline void tile_avx512(int64_t K, const float* const* arow, int64_t ask, const int64_t* toff,
                                   int ntaps, const float* B, int64_t ldb, float* const* crow, int64_t j,
                                   __mmask16 mask, bool accumulate, const float* const* pf = nullptr) {
  __m512 c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) c[i][v] = _mm512_setzero_ps();
  const float* b = B + j;
  for (int t = 0; t < ntaps; ++t) {
    const float* ap[MR];
    // UNIT: row i starts one element after row i - 1 (weight gradients: the rows are
    // consecutive channels of a pixel), so one base register plus constant
    // displacements address every row and 16 rows fit without spilling pointers.
    for (int i = 0; i < MR; ++i) ap[i] = (UNIT ? arow[0] + i : arow[i]) + toff[t];
    if (ask == 1) {
      int64_t k = 0;
      if constexpr (NV == 1) {
        // Two k steps into two accumulator sets: 2*MR independent FMA chains where
        // one vector of columns gives only MR.
        __m512 d[MR];
        for (int i = 0; i < MR; ++i) d[i] = _mm512_setzero_ps();
        for (; k + 1 < K; k += 2, b += 2 * ldb) {
          const __m512 b0 = MASKED ? _mm512_maskz_loadu_ps(mask, b) : _mm512_loadu_ps(b);
          const __m512 b1 = MASKED ? _mm512_maskz_loadu_ps(mask, b + ldb) : _mm512_loadu_ps(b + ldb);
          for (int i = 0; i < MR; ++i) {
            c[i][0] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][k]), b0, c[i][0]);
            d[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][k + 1]), b1, d[i]);
          }
        }
        for (int i = 0; i < MR; ++i) c[i][0] = _mm512_add_ps(c[i][0], d[i]);
      }
      for (; k < K; ++k, b += ldb) {
        if constexpr (MR == 8 && !UNIT) {
          if (pf != nullptr && (k & 1) == 0)
            _mm_prefetch(reinterpret_cast<const char*>(pf[(k >> 1) & 7] + ((k >> 4) << 4)), _MM_HINT_T0);
        }
        __m512 bv[NV];
        for (int v = 0; v < NV; ++v)
          bv[v] = (MASKED && v == NV - 1) ? _mm512_maskz_loadu_ps(mask, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
        for (int i = 0; i < MR; ++i) {
          const __m512 a = _mm512_set1_ps(ap[i][k]);
          for (int v = 0; v < NV; ++v) c[i][v] = _mm512_fmadd_ps(a, bv[v], c[i][v]);
        }
      }
    } else {
      int64_t k = 0;
      if constexpr (NV == 1) {  // as above
        __m512 d[MR];
        for (int i = 0; i < MR; ++i) d[i] = _mm512_setzero_ps();
        for (; k + 1 < K; k += 2, b += 2 * ldb) {
          const __m512 b0 = MASKED ? _mm512_maskz_loadu_ps(mask, b) : _mm512_loadu_ps(b);
          const __m512 b1 = MASKED ? _mm512_maskz_loadu_ps(mask, b + ldb) : _mm512_loadu_ps(b + ldb);
          const int64_t ko = k * ask;
          for (int i = 0; i < MR; ++i) {
            c[i][0] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][ko]), b0, c[i][0]);
            d[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[i][ko + ask]), b1, d[i]);
          }
        }
        for (int i = 0; i < MR; ++i) c[i][0] = _mm512_add_ps(c[i][0], d[i]);
      }
      for (; k < K; ++k, b += ldb) {
        __m512 bv[NV];
        for (int v = 0; v < NV; ++v)
          bv[v] = (MASKED && v == NV - 1) ? _mm512_maskz_loadu_ps(mask, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
        const int64_t ko = k * ask;
        for (int i = 0; i < MR; ++i) {
          const __m512 a = _mm512_set1_ps(ap[i][ko]);
          for (int v = 0; v < NV; ++v) c[i][v] = _mm512_fmadd_ps(a, bv[v], c[i][v]);
        }
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* cp = crow[i] + j;
    for (int v = 0; v < NV; ++v) {
      const bool m = MASKED && v == NV - 1;
      __m512 r = c[i][v];
      if (accumulate) r = _mm512_add_ps(r, m ? _mm512_maskz_loadu_ps(mask, cp + 16 * v) : _mm512_loadu_ps(cp + 16 * v));
      if (m)
        _mm512_mask_storeu_ps(cp + 16 * v, mask, r);
      else
        _mm512_storeu_ps(cp + 16 * v, r);
    }
  }
}

// Rows 1..MR of a tile of NV vectors (the last one masked when `masked`).
template <int MR, int NV, bool UNIT>
SNN_AVX512 inline void tile_rows_avx512(int64_t mr, bool masked, int64_t K, const float* const* arow, int64_t ask,
                                        const int64_t* toff, int ntaps, const float* B, int64_t ldb,
                                        float* const* crow, int64_t j, __mmask16 mask, bool acc) {
  if constexpr (MR > 1) {
    if (mr < MR)
      return tile_rows_avx512<MR - 1, NV, UNIT>(mr, masked, K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
  }
  if (masked)
    tile_avx512<MR, NV, true, UNIT>(K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
  else
    tile_avx512<MR, NV, false, UNIT>(K, arow, ask, toff, ntaps, B, ldb, crow, j, mask, acc);
}

// All rows over columns [j0, j0 + 16 * NV) (the last vector masked when `masked`).
template <int MR, int NV, bool UNIT>
SNN_AVX512 inline void rows_avx512(int64_t M, bool masked, int64_t K, const float* const* arow, int64_t ask,
                                   const int64_t* toff, int ntaps, const float* B, int64_t ldb, float* const* crow,
                                   int64_t j0, __mmask16 mask, bool acc) {
  int64_t i0 = 0;
  if (masked) {
    for (; i0 + MR <= M; i0 += MR)
      tile_avx512<MR, NV, true, UNIT>(K, arow + i0, ask, toff, ntaps, B, ldb, crow + i0, j0, mask, acc);
  } else {
    for (; i0 + MR <= M; i0 += MR)
      tile_avx512<MR, NV, false, UNIT>(K, arow + i0, ask, toff, ntaps, B, ldb, crow + i0, j0, mask, acc);
  }
  if (i0 < M)
    tile_rows_avx512<MR, NV, UNIT>(M - i0, masked, K, arow + i0, ask, toff, ntaps, B, ldb, crow + i0, j0, mask, acc);
}

// One column block, its B panel (ntaps * K rows of 16 * NV floats) cut into chunks of
// 8192 / NV rows, i.e. 512 KiB, that every row tile passes over (the partial sums are
// added into C). The models' panels are smaller, so they are not cut: a 5-tap r = 176
// panel is 225 KiB and streams from L2 on every row tile. Chunks of 32 and 64 KiB
// (L1-sized) measured no faster on the MS-ResNet18 TT layers (0.96-1.01x forward +
// backward, one and two threads).
template <int MR, int NV, bool UNIT>
SNN_AVX512 inline void column_block_avx512(int64_t M, bool masked, int64_t K, const float* const* arow, int64_t ask,
                                           const int64_t* toff, int ntaps, const float* B, int64_t ldb,
                                           float* const* crow, int64_t j0, __mmask16 mask, bool acc) {
  const int64_t kc = std::max<int64_t>(64, 8192 / NV);
  if ((int64_t)ntaps * K <= kc)
    return rows_avx512<MR, NV, UNIT>(M, masked, K, arow, ask, toff, ntaps, B, ldb, crow, j0, mask, acc);
  if (K <= kc) {  // whole taps per chunk
    const int per = (int)std::max<int64_t>(1, kc / K);
    for (int t0 = 0; t0 < ntaps; t0 += per)
      rows_avx512<MR, NV, UNIT>(M, masked, K, arow, ask, toff + t0, std::min(per, ntaps - t0), B + t0 * K * ldb, ldb,
                          crow, j0, mask, acc || t0 > 0);
    return;
  }
  const int64_t pieces = ceil_div(K, kc), kk = ceil_div(K, pieces);
  for (int t = 0; t < ntaps; ++t)
    for (int64_t k0 = 0; k0 < K; k0 += kk) {
      const int64_t off = toff[t] + k0 * ask;
      rows_avx512<MR, NV, UNIT>(M, masked, std::min(kk, K - k0), arow, ask, &off, 1, B + (t * K + k0) * ldb, ldb, crow,
                          j0, mask, acc || t > 0 || k0 > 0);
    }
}

// Rows per tile for NV vectors (see the table above the tile).
constexpr int mr_for(int nv, bool unit) { return nv >= 4 ? 6 : nv == 3 ? 8 : unit ? 12 : 8; }

// Columns in blocks of NV vectors (the last vector masked when N % 16), then one block
// of the 1..NV-1 vectors left.
template <int NV, bool UNIT>
SNN_AVX512 inline void columns_avx512(int64_t M, int64_t N, int64_t K, const float* const* arow, int64_t ask,
                                      const int64_t* toff, int ntaps, const float* B, int64_t ldb, float* const* crow,
                                      bool acc) {
  const int64_t rem = N % 16;
  const __mmask16 mask = rem ? (__mmask16)((1u << rem) - 1) : (__mmask16)0xFFFF;
  const int64_t Np = ceil_div(N, 16) * 16;
  int64_t j0 = 0;
  for (; j0 + 16 * NV <= Np; j0 += 16 * NV) {
    const bool masked = rem && j0 + 16 * NV == Np;
    column_block_avx512<mr_for(NV, UNIT), NV, UNIT>(M, masked, K, arow, ask, toff, ntaps, B, ldb, crow, j0, mask,
                                                    acc);
  }
  if (j0 < N) {
    const bool masked = rem != 0;
    switch ((Np - j0) / 16) {
      case 1:
        return column_block_avx512<mr_for(1, UNIT), 1, UNIT>(M, masked, K, arow, ask, toff, ntaps, B, ldb, crow, j0,
                                                             mask, acc);
      case 2:
        return column_block_avx512<mr_for(2, UNIT), 2, UNIT>(M, masked, K, arow, ask, toff, ntaps, B, ldb, crow, j0,
                                                             mask, acc);
      default:
        return column_block_avx512<mr_for(3, UNIT), 3, UNIT>(M, masked, K, arow, ask, toff, ntaps, B, ldb, crow, j0,
                                                             mask, acc);
    }
  }
}

template <bool UNIT>
SNN_AVX512 inline void gemm_width_avx512(int64_t M, int64_t N, int64_t K, const float* const* arow, int64_t ask,
                                         const int64_t* toff, int ntaps, const float* B, int64_t ldb,
                                         float* const* crow, bool acc) {
  // A B that fits L1 whole (G4 and the spikes' gradient at r <= 48 for 128 channels):
  // rows outside, so each row tile writes its C rows whole, in address order, rather than
  // 64 columns of every row per pass. Those C rows go to memory; the 128->128 r = 32
  // layer's forward+backward, PTT and HTT, took 0.96-0.98x the time (one and two
  // threads). With 32 KiB panels (r = 64) it measured no faster, so L1-sized ones only.
  if (N > 64 && N % 64 == 0 && (int64_t)ntaps * K * N * 4 <= 24 * 1024) {
    constexpr int MR = mr_for(4, UNIT);
    int64_t i0 = 0;
    for (; i0 + MR <= M; i0 += MR)
      for (int64_t j0 = 0; j0 < N; j0 += 64)
        tile_avx512<MR, 4, false, UNIT>(K, arow + i0, ask, toff, ntaps, B, ldb, crow + i0, j0, 0xFFFF, acc);
    if (i0 < M)
      for (int64_t j0 = 0; j0 < N; j0 += 64)
        tile_rows_avx512<MR, 4, UNIT>(M - i0, false, K, arow + i0, ask, toff, ntaps, B, ldb, crow + i0, j0, 0xFFFF,
                                      acc);
    return;
  }
  if (N > 48)
    columns_avx512<4, UNIT>(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, acc);
  else if (N > 32)
    columns_avx512<3, UNIT>(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, acc);
  else if (N > 16)
    columns_avx512<2, UNIT>(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, acc);
  else
    columns_avx512<1, UNIT>(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, acc);
}

SNN_AVX512 inline void gemm_rows_avx512(int64_t M, int64_t N, int64_t K, const float* const* arow, int64_t ask,
                                        const int64_t* toff, int ntaps, const float* B, int64_t ldb,
                                        float* const* crow, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  bool unit = true;
  for (int64_t i = 1; i < M && unit; ++i) unit = arow[i] == arow[0] + i;
  if (unit)
    gemm_width_avx512<true>(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, accumulate);
  else
    gemm_width_avx512<false>(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, accumulate);
}
#endif  // SNN_HAVE_AVX2

#if SNN_HAVE_AVX2
// C = A B for N in 17..32 (8 x 2 tiles), one tap, A rows read in place from memory
// that is not in cache: each tile prefetches the next tile's rows as it computes.
// Returns false (nothing done) for other widths.
SNN_AVX512 inline bool gemm_rows_streamed_avx512(int64_t M, int64_t N, int64_t K, const float* const* arow,
                                                 const float* B, int64_t ldb, float* const* crow) {
  if (N <= 16 || N > 32 || K > 4096) return false;  // (longer B panels are cut in chunks)
  static const int64_t zero_tap[1] = {0};
  const int64_t rem = N % 16;
  const __mmask16 mask = rem ? (__mmask16)((1u << rem) - 1) : (__mmask16)0xFFFF;
  int64_t i0 = 0;
  for (; i0 + 8 <= M; i0 += 8) {
    const float* const* pf = i0 + 16 <= M ? arow + i0 + 8 : nullptr;
    if (rem)
      tile_avx512<8, 2, true, false>(K, arow + i0, 1, zero_tap, 1, B, ldb, crow + i0, 0, mask, false, pf);
    else
      tile_avx512<8, 2, false, false>(K, arow + i0, 1, zero_tap, 1, B, ldb, crow + i0, 0, mask, false, pf);
  }
  if (i0 < M)
    tile_rows_avx512<8, 2, false>(M - i0, rem != 0, K, arow + i0, 1, zero_tap, 1, B, ldb, crow + i0, 0, mask,
                                  false);
  return true;
}
#endif

// isa: 2 = AVX-512, 1 = AVX2, 0 = portable (see isa_level()).
template <typename T>
inline void gemm_rows(int isa, int64_t M, int64_t N, int64_t K, const T* const* arow, int64_t ask,
                      const int64_t* toff, int ntaps, const T* B, int64_t ldb, T* const* crow, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || ntaps <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(crow[i], crow[i] + N, T(0));
    return;
  }
#if SNN_HAVE_AVX2
  if constexpr (std::is_same<T, float>::value) {
    if (isa >= 2) return gemm_rows_avx512(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, accumulate);
    if (isa == 1) return gemm_rows_avx2(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, accumulate);
  }
#endif
  (void)isa;
  gemm_rows_generic<T>(M, N, K, arow, ask, toff, ntaps, B, ldb, crow, accumulate);
}

}  // namespace tt
}  // namespace snnops
