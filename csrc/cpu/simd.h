// Shared CPU helpers: run-time ISA choice and AVX2 building blocks.
//
// Kernels are compiled twice inside one translation unit: a portable scalar
// version and an AVX2+FMA version whose functions carry SNN_AVX2 (a target
// attribute), so the extension loads on any x86-64 (or non-x86) CPU and the
// fast path is picked at run time by use_avx2().
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SNN_HAVE_AVX2 1
#include <immintrin.h>
#define SNN_AVX2 __attribute__((target("avx2,fma")))
// AVX-512 (F, BW, DQ, VL) kernels, chosen at run time like the AVX2 ones.
#define SNN_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#else
#define SNN_HAVE_AVX2 0
#define SNN_AVX2
#define SNN_AVX512
#endif

// GCC 12 flags the undefined pass-through operands (_mm512_undefined_*) inside its own
// AVX-512 cast, extract and conversion intrinsics as uninitialized, a false positive:
// code that uses them sits between these two.
#define SNN_INTRINSICS_UNINIT_BEGIN                                           \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define SNN_INTRINSICS_UNINIT_END _Pragma("GCC diagnostic pop")

namespace snnops {

// Outputs of this many bytes and more leave the cache before the next op reads them; the
// kernels write them with streaming stores, which skip reading each line first (each
// kernel's measurements: docs/lif.md, docs/spike_gemm.md, docs/tt_conv.md).
constexpr double kStreamOutputBytes = 8.0 * 1024 * 1024;

// True when the AVX2+FMA kernels may run. SNNOPS_CPU_ISA=generic forces the
// portable kernels (the tests run both paths against the reference).
bool use_avx2();

// True when the AVX-512 kernels may run: the CPU has AVX-512 F/BW/DQ/VL and neither
// SNNOPS_CPU_ISA=avx2 nor =generic is set (the tests run all three paths).
bool use_avx512();

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The coefficients of exp_nonpos / exp_nonpos_ps / exp_nonpos_ps512 (below).
namespace exp_coef {
constexpr float kMin = -87.0f, kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
}  // namespace exp_coef

// exp_nonpos_ps (below) on one lane, the same operations: the portable code then rounds
// the surrogates exactly as the vector kernels do.
inline float exp_nonpos(float x) {
  using namespace exp_coef;
  x = x > kMin ? x : kMin;  // as _mm256_max_ps(x, kMin): NaN becomes kMin
  const float fx = std::nearbyint(x * kLog2e);
  float r = std::fma(-fx, kLn2Hi, x);
  r = std::fma(-fx, kLn2Lo, r);
  float p = kP[0];
  for (int i = 1; i < 6; ++i) p = std::fma(p, r, kP[i]);
  const float y = std::fma(p * r, r, r + 1.0f);
  return y * std::ldexp(1.0f, (int)fx);
}

#if SNN_HAVE_AVX2

// exp(x) for x <= 0 (inputs below -87 flush towards 0), Cephes-style polynomial,
// about 2 ulp: the surrogates only need exp of a non-positive argument. x = n ln2 + r
// (ln2 in two parts), exp(r) = 1 + r + r^2 P(r).
SNN_AVX2 static inline __m256 exp_nonpos_ps(__m256 x) {
  using namespace exp_coef;
  x = _mm256_max_ps(x, _mm256_set1_ps(kMin));
  const __m256 fx =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP[i]));
  const __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// exp_nonpos_ps on sixteen lanes, the same operations in the same order (so the same
// results lane for lane) but for the final scaling: y * 2^n in one instruction (n is an
// integer in [-126, 0], so the product is the one the AVX2 code forms from the exponent
// bits; 0.92-0.95x Sigmoid's backward time).
SNN_AVX512 static inline __m512 exp_nonpos_ps512(__m512 x) {
  using namespace exp_coef;
  x = _mm512_max_ps(x, _mm512_set1_ps(kMin));
  const __m512 fx =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kP[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP[i]));
  const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, fx);
}

SNN_AVX2 static inline __m256 abs_ps(__m256 x) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
}

// Lane i of the result is all-ones when bit i of `byte` is set.
SNN_AVX2 static inline __m256 bits_to_mask(uint32_t byte) {
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  __m256i v = _mm256_and_si256(_mm256_set1_epi32((int)byte), sel);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, sel));
}

// Mask of the first n (< 8) lanes, for partial loads and stores.
SNN_AVX2 static inline __m256i tail_mask(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), idx);
}

#endif  // SNN_HAVE_AVX2

}  // namespace snnops
