// Per-channel sums of z and z^2 over the rows of channels-last data z [rows, C], the
// batch statistics of the tdBN ops (bn_lif, bn_add).
//
// Deterministic: rows are cut into fixed blocks of kStatRows; each block's sums are
// accumulated in double, row after row, and the blocks are combined in block order,
// whatever the thread count or code path. Every path adds each channel's values in the
// same order with the same double operations (v * v rounded, then added: no FMA), so
// the AVX-512, AVX2 and portable sums are bit-identical.
//
// The SIMD paths walk a block one chunk of channels at a time with the chunk's sums in
// registers (64 channels = 16 zmm accumulators on AVX-512) instead of loading and
// storing them every row: the row loop then has no store-to-load dependency.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace snnops {
namespace stats {

constexpr int64_t kStatRows = 256;  // rows per statistics block (fixed: deterministic sums)

template <typename T>
inline void block_sums_generic(const T* z, int64_t r0, int64_t r1, int64_t C, double* s1, double* s2) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = z + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const double v = (double)row[c];
      s1[c] += v;
      s2[c] += v * v;
    }
  }
}

#if SNN_HAVE_AVX2
SNN_INTRINSICS_UNINIT_BEGIN
// NV vectors of 16 channels from c0 (the last one masked by `last`), rows [r0, r1).
template <int NV>
SNN_AVX512 inline void chunk_sums_avx512(const float* z, int64_t r0, int64_t r1, int64_t C, int64_t c0,
                                         __mmask16 last, double* s1, double* s2) {
  __m512d a1[2 * NV], a2[2 * NV];
  for (int i = 0; i < 2 * NV; ++i) a1[i] = a2[i] = _mm512_setzero_pd();
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = z + r * C + c0;
#pragma GCC unroll 4
    for (int i = 0; i < NV; ++i) {
      const __m512 v = _mm512_maskz_loadu_ps(i == NV - 1 ? last : (__mmask16)0xffff, row + 16 * i);
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
      const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
      a1[2 * i] = _mm512_add_pd(a1[2 * i], lo);
      a1[2 * i + 1] = _mm512_add_pd(a1[2 * i + 1], hi);
      a2[2 * i] = _mm512_add_pd(a2[2 * i], _mm512_mul_pd(lo, lo));
      a2[2 * i + 1] = _mm512_add_pd(a2[2 * i + 1], _mm512_mul_pd(hi, hi));
    }
  }
  for (int i = 0; i < NV; ++i) {
    const __mmask16 m = i == NV - 1 ? last : (__mmask16)0xffff;
    const int64_t c = c0 + 16 * i;
    // the block's partial sums start at zero: adding them keeps s += v's order
    _mm512_mask_storeu_pd(s1 + c, (__mmask8)m,
                          _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)m, s1 + c), a1[2 * i]));
    _mm512_mask_storeu_pd(s1 + c + 8, (__mmask8)(m >> 8),
                          _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)(m >> 8), s1 + c + 8), a1[2 * i + 1]));
    _mm512_mask_storeu_pd(s2 + c, (__mmask8)m,
                          _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)m, s2 + c), a2[2 * i]));
    _mm512_mask_storeu_pd(s2 + c + 8, (__mmask8)(m >> 8),
                          _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)(m >> 8), s2 + c + 8), a2[2 * i + 1]));
  }
}

SNN_AVX512 inline void block_sums_avx512(const float* z, int64_t r0, int64_t r1, int64_t C, double* s1,
                                         double* s2) {
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    const int64_t n = std::min<int64_t>(64, C - c0);
    const int nv = (int)ceil_div(n, 16);
    const __mmask16 last = (__mmask16)((1u << (n - 16 * (nv - 1))) - 1u);
    switch (nv) {
      case 1: chunk_sums_avx512<1>(z, r0, r1, C, c0, last, s1, s2); break;
      case 2: chunk_sums_avx512<2>(z, r0, r1, C, c0, last, s1, s2); break;
      case 3: chunk_sums_avx512<3>(z, r0, r1, C, c0, last, s1, s2); break;
      default: chunk_sums_avx512<4>(z, r0, r1, C, c0, last, s1, s2); break;
    }
  }
}

// 16 channels (4 + 4 double accumulators per sum) per chunk, then 8, then single channels.
SNN_AVX2 inline void block_sums_avx2(const float* z, int64_t r0, int64_t r1, int64_t C, double* s1, double* s2) {
  int64_t c0 = 0;
  for (; c0 + 8 <= C; c0 += 8) {
    const bool two = c0 + 16 <= C;
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    __m256d b[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = z + r * C + c0;
      const __m256 v = _mm256_loadu_ps(row);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      a[0] = _mm256_add_pd(a[0], lo);
      a[1] = _mm256_add_pd(a[1], hi);
      b[0] = _mm256_add_pd(b[0], _mm256_mul_pd(lo, lo));
      b[1] = _mm256_add_pd(b[1], _mm256_mul_pd(hi, hi));
      if (two) {
        const __m256 w = _mm256_loadu_ps(row + 8);
        const __m256d wl = _mm256_cvtps_pd(_mm256_castps256_ps128(w)), wh = _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
        a[2] = _mm256_add_pd(a[2], wl);
        a[3] = _mm256_add_pd(a[3], wh);
        b[2] = _mm256_add_pd(b[2], _mm256_mul_pd(wl, wl));
        b[3] = _mm256_add_pd(b[3], _mm256_mul_pd(wh, wh));
      }
    }
    for (int i = 0; i < (two ? 4 : 2); ++i) {
      _mm256_storeu_pd(s1 + c0 + 4 * i, _mm256_add_pd(_mm256_loadu_pd(s1 + c0 + 4 * i), a[i]));
      _mm256_storeu_pd(s2 + c0 + 4 * i, _mm256_add_pd(_mm256_loadu_pd(s2 + c0 + 4 * i), b[i]));
    }
    if (two) c0 += 8;
  }
  for (; c0 < C; ++c0) {
    double a1 = 0.0, a2 = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const double v = (double)z[r * C + c0];
      a1 += v;
      a2 += v * v;
    }
    s1[c0] += a1;
    s2[c0] += a2;
  }
}
SNN_INTRINSICS_UNINIT_END
#endif

// s1[c] = sum of z[:, c], s2[c] = sum of z[:, c]^2 over all rows, in double, block order.
template <typename T>
void channel_sums(const T* z, int64_t rows, int64_t C, std::vector<double>& s1, std::vector<double>& s2) {
  const int64_t blocks = ceil_div(rows, kStatRows);
  std::vector<double> part(blocks * 2 * C, 0.0);
  const bool f32 = std::is_same<T, float>::value;
  const bool avx512 = f32 && use_avx512(), avx2 = f32 && use_avx2();
  // Pieces of whole blocks (about 256 KiB of z each), taken from a shared counter:
  // every block writes its own partial sums, so the result does not depend on who ran it.
  const int64_t grain = std::max<int64_t>(1, (int64_t)65536 / std::max<int64_t>(1, kStatRows * C));
  parallel_pieces(blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* p1 = part.data() + b * 2 * C;
      const int64_t r0 = b * kStatRows, r1 = std::min(rows, r0 + kStatRows);
#if SNN_HAVE_AVX2
      if (avx512) {
        block_sums_avx512(reinterpret_cast<const float*>(z), r0, r1, C, p1, p1 + C);
        continue;
      }
      if (avx2) {
        block_sums_avx2(reinterpret_cast<const float*>(z), r0, r1, C, p1, p1 + C);
        continue;
      }
#endif
      block_sums_generic<T>(z, r0, r1, C, p1, p1 + C);
    }
  });
  (void)avx512;
  (void)avx2;
  s1.assign(C, 0.0);
  s2.assign(C, 0.0);
  for (int64_t b = 0; b < blocks; ++b) {
    const double* p1 = part.data() + b * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += p1[c];
      s2[c] += p1[C + c];
    }
  }
}

// The tdBN's per-channel coefficients, so that y = z * scale + shift: the batch
// statistics of z [rows, C] (contiguous, float or double; biased variance) in training,
// the running ones in eval. mean / invstd / var are what the ops return and keep for
// backward; all are in z's dtype, computed in double.
struct BnCoeffs {
  at::Tensor mean, invstd, var, scale, shift;
};

inline BnCoeffs bn_coefficients(const at::Tensor& z, const at::Tensor& weight, const at::Tensor& bias,
                                const std::optional<at::Tensor>& running_mean,
                                const std::optional<at::Tensor>& running_var, bool training, double eps,
                                const char* op) {
  const int64_t rows = z.size(0), C = z.size(1);
  std::vector<double> mean(C), var(C);
  if (training) {
    TORCH_CHECK(rows > 0, op, ": training-mode statistics need at least one value per channel, got ", rows,
                " rows");
    std::vector<double> s1, s2;
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bn_stats", [&] {
      channel_sums<scalar_t>(z.data_ptr<scalar_t>(), rows, C, s1, s2);
    });
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = s1[c] / (double)rows;
      var[c] = std::max(0.0, s2[c] / (double)rows - mean[c] * mean[c]);
    }
  } else {
    TORCH_CHECK(running_mean.has_value() && running_var.has_value() && running_mean->defined() &&
                    running_var->defined(),
                op, ": eval mode needs running_mean and running_var");
    TORCH_CHECK(running_mean->numel() == C && running_var->numel() == C, op,
                ": running_mean and running_var need ", C, " entries, got ", running_mean->numel(), " and ",
                running_var->numel());
    at::Tensor rm = running_mean->to(at::kDouble).contiguous(), rv = running_var->to(at::kDouble).contiguous();
    std::copy(rm.data_ptr<double>(), rm.data_ptr<double>() + C, mean.begin());
    std::copy(rv.data_ptr<double>(), rv.data_ptr<double>() + C, var.begin());
  }
  at::Tensor wd = weight.to(at::kDouble).contiguous(), bd = bias.to(at::kDouble).contiguous();
  const double* wp = wd.data_ptr<double>();
  const double* bp = bd.data_ptr<double>();
  const auto opts = z.options();
  BnCoeffs k{at::empty({C}, opts), at::empty({C}, opts), at::empty({C}, opts), at::empty({C}, opts),
             at::empty({C}, opts)};
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bn_coeffs", [&] {
    for (int64_t c = 0; c < C; ++c) {
      const double invstd = 1.0 / std::sqrt(var[c] + eps);
      const double scale = wp[c] * invstd;
      k.mean.data_ptr<scalar_t>()[c] = (scalar_t)mean[c];
      k.invstd.data_ptr<scalar_t>()[c] = (scalar_t)invstd;
      k.var.data_ptr<scalar_t>()[c] = (scalar_t)var[c];
      k.scale.data_ptr<scalar_t>()[c] = (scalar_t)scale;
      k.shift.data_ptr<scalar_t>()[c] = (scalar_t)(bp[c] - mean[c] * scale);
    }
  });
  return k;
}

}  // namespace stats
}  // namespace snnops
