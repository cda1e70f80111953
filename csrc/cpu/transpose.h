// In-register float transposes (AVX2 8x8, AVX-512 16x16), shared by the kernels that
// turn channel planes into channels-last rows or weight rows into columns.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

#if SNN_HAVE_AVX2
// The smallest target sets these need, so they inline into AVX2 / AVX-512 kernels of
// any wider set (always: a call per block cost gemm-fc's W transposes measurably).
#define SNN_TRANSPOSE8 __attribute__((target("avx2,fma"), always_inline))
#define SNN_TRANSPOSE16 __attribute__((target("avx512f,avx2,fma"), always_inline))

namespace snnops {

// dst[j * ldd + i] = src[i * lds + j] for an 8x8 block.
SNN_TRANSPOSE8 inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
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

SNN_INTRINSICS_UNINIT_BEGIN
// dst[j * ldd + i] = src[i * lds + j] for a 16x16 block (AVX-512).
SNN_TRANSPOSE16 inline void transpose16x16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
  }
  // r[4i + q] holds rows 4i..4i+3, column group q (cols q, q+4, q+8, q+12 in 128-bit lanes)
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    t[q] = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);        // lanes 0,2 of a, 0,2 of b
    t[4 + q] = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xDD);    // lanes 1,3
    t[8 + q] = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
    t[12 + q] = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xDD);
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    _mm512_storeu_ps(dst + (q + 0) * ldd, _mm512_shuffle_f32x4(t[q], t[8 + q], 0x88));
    _mm512_storeu_ps(dst + (q + 4) * ldd, _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0x88));
    _mm512_storeu_ps(dst + (q + 8) * ldd, _mm512_shuffle_f32x4(t[q], t[8 + q], 0xDD));
    _mm512_storeu_ps(dst + (q + 12) * ldd, _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0xDD));
  }
}
SNN_INTRINSICS_UNINIT_END

}  // namespace snnops
#endif  // SNN_HAVE_AVX2
