// tdBN (+ residual add) fused (CPU): BatchNorm with statistics over every row (training)
// or the running ones (eval), plus an optional residual, on channels-last rows:
//
//   y = z * scale + shift (+ residual),  scale = gamma * invstd,  shift = beta - mean * scale
//
// z is [M, C] (C innermost) or frames [N..., C, H, W]; channels-last frames are read
// in place as their H*W rows of C, any other layout is copied once; y has z's shape
// with channels-last frames. Exact formulas: snnops/reference/bn_add.py.
//
// Why fused: PyTorch runs BatchNorm, then the add (another full read of two tensors and
// a write), and its outputs come from fresh pages every step (~3 us per 4 KiB page).
// Here the forward reads z twice (statistics; then normalize + add) and writes y once;
// the backward reads grad_y and z once for the two per-channel sums, and once more to
// write grad_z. The residual's gradient is grad_y itself (no pass at all). Outputs of
// 256 KiB and more come from the block cache (cached_alloc.h).
//
// Deterministic: statistics and gradient sums are accumulated in double over fixed
// blocks of rows and combined in block order, whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "cpu/cached_alloc.h"
#include "cpu/channel_stats.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace snnops {
namespace {

using stats::kStatRows;

// ------------------------------------------------------------------ layouts

// The permutation that makes frames [N..., C, H, W] channels-innermost [N..., H, W, C].
std::vector<int64_t> rows_order(int64_t dim) {
  std::vector<int64_t> p;
  for (int64_t d = 0; d < dim - 3; ++d) p.push_back(d);
  p.insert(p.end(), {dim - 2, dim - 1, dim - 3});
  return p;
}

// x as contiguous rows [M, C] of compute type ct: a view for [M, C] contiguous input or
// channels-last frames, else one copy.
inline int64_t channels_of(const at::Tensor& x) { return x.dim() == 2 ? x.size(1) : x.size(x.dim() - 3); }

inline int64_t rows_of(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d != (x.dim() == 2 ? 1 : x.dim() - 3)) m *= x.size(d);
  return m;
}

at::Tensor as_rows(const at::Tensor& x, at::ScalarType ct) {
  if (x.dim() == 2) return cached_contiguous(x, ct);
  return cached_contiguous(x.permute(rows_order(x.dim())), ct).view({rows_of(x), channels_of(x)});
}

// The residual as rows, read in place when its rows are contiguous or repeat a
// contiguous block of rows (a broadcast over leading dims: the static-image stem output
// expanded over T, the first block's shortcut): returns the rows' base tensor and the
// period in rows (row r of the residual is row r % period of the base).
std::pair<at::Tensor, int64_t> residual_rows(const at::Tensor& x, at::ScalarType ct) {
  const int64_t M = rows_of(x), C = channels_of(x);
  if (x.dim() >= 3 && x.scalar_type() == ct && M > 0 && C > 0) {
    const at::Tensor p = x.permute(rows_order(x.dim()));
    int64_t k = p.dim() - 1, block = 1;
    while (k >= 0 && (p.size(k) == 1 || p.stride(k) == block)) block *= p.size(k--);
    bool broadcast = k < p.dim() - 1;
    for (int64_t i = 0; i <= k; ++i) broadcast = broadcast && (p.size(i) == 1 || p.stride(i) == 0);
    if (broadcast) {
      const int64_t period = block / C;
      return {at::as_strided(p, {period, C}, {C, 1}), period};
    }
  }
  return {as_rows(x, ct), M};
}

// A new tensor shaped like x (channels-last frames), from the block cache; returns the
// tensor in x's logical shape and its contiguous rows.
std::pair<at::Tensor, at::Tensor> rows_like(const at::Tensor& x, const at::TensorOptions& opts) {
  if (x.dim() == 2) {
    at::Tensor t = cached_empty(x.sizes(), opts);
    return {t, t};
  }
  const int64_t d = x.dim();
  std::vector<int64_t> stored;
  for (int64_t i : rows_order(d)) stored.push_back(x.size(i));
  at::Tensor t = cached_empty(stored, opts);
  std::vector<int64_t> back;   // inverse of rows_order
  for (int64_t i = 0; i < d - 3; ++i) back.push_back(i);
  back.insert(back.end(), {d - 1, d - 3, d - 2});
  return {t.permute(back), t.view({rows_of(x), channels_of(x)})};
}

void check_layout(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() == 2 || x.dim() >= 3, op, ": ", name,
              " must be rows [M, C] or frames [..., C, H, W], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
              x.scalar_type());
}

// Rows per elementwise piece: about 16K elements (64 KiB of float).
inline int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)); }

// ------------------------------------------------------------------ forward: normalize (+ add)

// y = z * scale + shift (+ residual row r % period), rows [r0, r1).
template <typename T>
void norm_rows_generic(const T* z, const T* res, int64_t period, const T* scale, const T* shift, T* y, int64_t C,
                       int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C;
    const T* rrow = res ? res + (r % period) * C : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      T v = z[base + c] * scale[c] + shift[c];
      if (rrow) v = v + rrow[c];
      y[base + c] = v;
    }
  }
}

#if SNN_HAVE_AVX2
// Plain stores: streaming (non-temporal) stores of y and grad_z, which skip reading the
// output lines first, measured 7-18% slower with a consumer reading the output next
// (64x32x32 and 128x16x16 frames, 1 and 2 threads): the output then comes from memory.
SNN_AVX512 void norm_rows_avx512(const float* z, const float* res, int64_t period, const float* scale,
                                 const float* shift, float* y, int64_t C, int64_t r0, int64_t r1) {
  const int64_t C16 = C / 16 * 16;
  const __mmask16 tail = (__mmask16)((1u << (C - C16)) - 1u);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C;
    const float* rrow = res ? res + (r % period) * C : nullptr;
    int64_t c = 0;
    for (; c < C16; c += 16) {
      __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(z + base + c), _mm512_loadu_ps(scale + c)),
                               _mm512_loadu_ps(shift + c));
      if (rrow) v = _mm512_add_ps(v, _mm512_loadu_ps(rrow + c));
      _mm512_storeu_ps(y + base + c, v);
    }
    if (tail) {
      __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, z + base + c),
                                             _mm512_maskz_loadu_ps(tail, scale + c)),
                               _mm512_maskz_loadu_ps(tail, shift + c));
      if (rrow) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tail, rrow + c));
      _mm512_mask_storeu_ps(y + base + c, tail, v);
    }
  }
}

SNN_AVX2 void norm_rows_avx2(const float* z, const float* res, int64_t period, const float* scale,
                             const float* shift, float* y, int64_t C, int64_t r0, int64_t r1) {
  const int64_t C8 = C / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C;
    const float* rrow = res ? res + (r % period) * C : nullptr;
    int64_t c = 0;
    for (; c < C8; c += 8) {
      __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(z + base + c), _mm256_loadu_ps(scale + c)),
                               _mm256_loadu_ps(shift + c));
      if (rrow) v = _mm256_add_ps(v, _mm256_loadu_ps(rrow + c));
      _mm256_storeu_ps(y + base + c, v);
    }
    for (; c < C; ++c) {
      float v = z[base + c] * scale[c] + shift[c];
      if (rrow) v = v + rrow[c];
      y[base + c] = v;
    }
  }
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_add_fwd_cpu(
    const at::Tensor& z_in, const std::optional<at::Tensor>& residual_in, const at::Tensor& weight,
    const at::Tensor& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps) {
  const char* op = "snnops.bn_add_fwd";
  check_layout(z_in, op, "z");
  const bool has_res = residual_in.has_value() && residual_in->defined();
  if (has_res) {
    TORCH_CHECK(residual_in->sizes() == z_in.sizes(), op, ": residual must have z's shape ", z_in.sizes(),
                ", got ", residual_in->sizes());
    TORCH_CHECK(residual_in->scalar_type() == z_in.scalar_type(), op, ": residual must have z's dtype ",
                z_in.scalar_type(), ", got ", residual_in->scalar_type());
  }
  const int64_t C = channels_of(z_in);
  TORCH_CHECK(weight.numel() == C && bias.numel() == C, op, ": weight and bias need ", C,
              " entries (one per channel), got ", weight.numel(), " and ", bias.numel());
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  const at::ScalarType ct = z_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z = as_rows(z_in, ct);
  at::Tensor res;
  int64_t period = 1;
  if (has_res) std::tie(res, period) = residual_rows(*residual_in, ct);
  const int64_t M = z.size(0);
  const stats::BnCoeffs k = stats::bn_coefficients(z, weight, bias, running_mean, running_var, training, eps, op);
  const auto opts = z.options();
  auto [y, y_rows] = rows_like(z_in, opts);
  if (M > 0 && C > 0) {
    const bool avx512 = ct == at::kFloat && use_avx512(), avx2 = ct == at::kFloat && use_avx2();
    AT_DISPATCH_FLOATING_TYPES(ct, "bn_add_fwd", [&] {
      const scalar_t* zp = z.data_ptr<scalar_t>();
      const scalar_t* rp = has_res ? res.data_ptr<scalar_t>() : nullptr;
      const scalar_t* sc = k.scale.data_ptr<scalar_t>();
      const scalar_t* sh = k.shift.data_ptr<scalar_t>();
      scalar_t* yp = y_rows.data_ptr<scalar_t>();
      parallel_pieces(M, row_grain(C), [&](int64_t r0, int64_t r1) {
#if SNN_HAVE_AVX2
        if (avx512 || avx2) {
          auto f = [](const scalar_t* p) { return reinterpret_cast<const float*>(p); };
          (avx512 ? norm_rows_avx512 : norm_rows_avx2)(f(zp), f(rp), period, f(sc), f(sh),
                                                       reinterpret_cast<float*>(yp), C, r0, r1);
          return;
        }
#endif
        norm_rows_generic<scalar_t>(zp, rp, period, sc, sh, yp, C, r0, r1);
      });
    });
    (void)avx512;
    (void)avx2;
  }
  if (z_in.scalar_type() != ct) y = y.to(z_in.scalar_type());
  return {y, k.mean, k.invstd, k.var};
}

// ------------------------------------------------------------------ backward

// Pass 1, rows [r0, r1): s1[c] += g, s2[c] += g * (z - mean) (the product in T, sums in
// double, row after row: every path adds the same values in the same order).
template <typename T>
void grad_sums_generic(const T* g, const T* z, const T* mean, int64_t C, int64_t r0, int64_t r1, double* s1,
                       double* s2) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C;
    for (int64_t c = 0; c < C; ++c) {
      const T gv = g[base + c];
      const T p = gv * (z[base + c] - mean[c]);
      s1[c] += (double)gv;
      s2[c] += (double)p;
    }
  }
}

#if SNN_HAVE_AVX2
SNN_INTRINSICS_UNINIT_BEGIN
template <int NV>
SNN_AVX512 inline void grad_chunk_avx512(const float* g, const float* z, const float* mean, int64_t C, int64_t c0,
                                         __mmask16 last, int64_t r0, int64_t r1, double* s1, double* s2) {
  __m512d a1[2 * NV], a2[2 * NV];
  __m512 mu[NV];
  for (int i = 0; i < NV; ++i) {
    mu[i] = _mm512_maskz_loadu_ps(i == NV - 1 ? last : (__mmask16)0xffff, mean + c0 + 16 * i);
    a1[2 * i] = a1[2 * i + 1] = a2[2 * i] = a2[2 * i + 1] = _mm512_setzero_pd();
  }
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C + c0;
#pragma GCC unroll 4
    for (int i = 0; i < NV; ++i) {
      const __mmask16 m = i == NV - 1 ? last : (__mmask16)0xffff;
      const __m512 gv = _mm512_maskz_loadu_ps(m, g + base + 16 * i);
      const __m512 p = _mm512_mul_ps(gv, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, z + base + 16 * i), mu[i]));
      a1[2 * i] = _mm512_add_pd(a1[2 * i], _mm512_cvtps_pd(_mm512_castps512_ps256(gv)));
      a1[2 * i + 1] = _mm512_add_pd(a1[2 * i + 1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(gv, 1)));
      a2[2 * i] = _mm512_add_pd(a2[2 * i], _mm512_cvtps_pd(_mm512_castps512_ps256(p)));
      a2[2 * i + 1] = _mm512_add_pd(a2[2 * i + 1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(p, 1)));
    }
  }
  for (int i = 0; i < NV; ++i) {
    const __mmask16 m = i == NV - 1 ? last : (__mmask16)0xffff;
    const int64_t c = c0 + 16 * i;
    _mm512_mask_storeu_pd(s1 + c, (__mmask8)m, _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)m, s1 + c), a1[2 * i]));
    _mm512_mask_storeu_pd(s1 + c + 8, (__mmask8)(m >> 8),
                          _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)(m >> 8), s1 + c + 8), a1[2 * i + 1]));
    _mm512_mask_storeu_pd(s2 + c, (__mmask8)m, _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)m, s2 + c), a2[2 * i]));
    _mm512_mask_storeu_pd(s2 + c + 8, (__mmask8)(m >> 8),
                          _mm512_add_pd(_mm512_maskz_loadu_pd((__mmask8)(m >> 8), s2 + c + 8), a2[2 * i + 1]));
  }
}

SNN_AVX512 void grad_sums_avx512(const float* g, const float* z, const float* mean, int64_t C, int64_t r0,
                                 int64_t r1, double* s1, double* s2) {
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    const int64_t n = std::min<int64_t>(64, C - c0);
    const int nv = (int)ceil_div(n, 16);
    const __mmask16 last = (__mmask16)((1u << (n - 16 * (nv - 1))) - 1u);
    switch (nv) {
      case 1: grad_chunk_avx512<1>(g, z, mean, C, c0, last, r0, r1, s1, s2); break;
      case 2: grad_chunk_avx512<2>(g, z, mean, C, c0, last, r0, r1, s1, s2); break;
      case 3: grad_chunk_avx512<3>(g, z, mean, C, c0, last, r0, r1, s1, s2); break;
      default: grad_chunk_avx512<4>(g, z, mean, C, c0, last, r0, r1, s1, s2); break;
    }
  }
}

// 8 channels per chunk (2 + 2 double accumulators), then single channels.
SNN_AVX2 void grad_sums_avx2(const float* g, const float* z, const float* mean, int64_t C, int64_t r0, int64_t r1,
                             double* s1, double* s2) {
  int64_t c0 = 0;
  for (; c0 + 8 <= C; c0 += 8) {
    const __m256 mu = _mm256_loadu_ps(mean + c0);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), b0 = _mm256_setzero_pd(), b1 = _mm256_setzero_pd();
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * C + c0;
      const __m256 gv = _mm256_loadu_ps(g + base);
      const __m256 p = _mm256_mul_ps(gv, _mm256_sub_ps(_mm256_loadu_ps(z + base), mu));
      a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(gv)));
      a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1)));
      b0 = _mm256_add_pd(b0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
      b1 = _mm256_add_pd(b1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
    }
    _mm256_storeu_pd(s1 + c0, _mm256_add_pd(_mm256_loadu_pd(s1 + c0), a0));
    _mm256_storeu_pd(s1 + c0 + 4, _mm256_add_pd(_mm256_loadu_pd(s1 + c0 + 4), a1));
    _mm256_storeu_pd(s2 + c0, _mm256_add_pd(_mm256_loadu_pd(s2 + c0), b0));
    _mm256_storeu_pd(s2 + c0 + 4, _mm256_add_pd(_mm256_loadu_pd(s2 + c0 + 4), b1));
  }
  for (; c0 < C; ++c0) {
    double a = 0.0, b = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const float gv = g[r * C + c0];
      const float p = gv * (z[r * C + c0] - mean[c0]);
      a += (double)gv;
      b += (double)p;
    }
    s1[c0] += a;
    s2[c0] += b;
  }
}
SNN_INTRINSICS_UNINIT_END
#endif

// Pass 2, rows [r0, r1): dz = ((g - k1) - (z - mean) * k2) * a (training), g * a (eval).
template <typename T>
void grad_z_generic(const T* g, const T* z, const T* mean, const T* a, const T* k1, const T* k2, T* dz,
                    bool training, int64_t C, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C;
    for (int64_t c = 0; c < C; ++c) {
      const T gv = g[base + c];
      dz[base + c] = training ? ((gv - k1[c]) - (z[base + c] - mean[c]) * k2[c]) * a[c] : gv * a[c];
    }
  }
}

#if SNN_HAVE_AVX2
SNN_AVX512 inline __m512 grad_z16(__m512 g, __m512 z, __m512 mu, __m512 a, __m512 k1, __m512 k2, bool training) {
  if (!training) return _mm512_mul_ps(g, a);
  return _mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(g, k1), _mm512_mul_ps(_mm512_sub_ps(z, mu), k2)), a);
}

SNN_AVX512 void grad_z_avx512(const float* g, const float* z, const float* mean, const float* a, const float* k1,
                              const float* k2, float* dz, bool training, int64_t C, int64_t r0, int64_t r1) {
  const int64_t C16 = C / 16 * 16;
  const __mmask16 tail = (__mmask16)((1u << (C - C16)) - 1u);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C;
    int64_t c = 0;
    for (; c < C16; c += 16) {
      const __m512 zv = training ? _mm512_loadu_ps(z + base + c) : _mm512_setzero_ps();
      _mm512_storeu_ps(dz + base + c,
                       grad_z16(_mm512_loadu_ps(g + base + c), zv, _mm512_loadu_ps(mean + c), _mm512_loadu_ps(a + c),
                                _mm512_loadu_ps(k1 + c), _mm512_loadu_ps(k2 + c), training));
    }
    if (tail) {
      const __m512 zv = training ? _mm512_maskz_loadu_ps(tail, z + base + c) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(dz + base + c, tail,
                            grad_z16(_mm512_maskz_loadu_ps(tail, g + base + c), zv, _mm512_maskz_loadu_ps(tail, mean + c),
                                     _mm512_maskz_loadu_ps(tail, a + c), _mm512_maskz_loadu_ps(tail, k1 + c),
                                     _mm512_maskz_loadu_ps(tail, k2 + c), training));
    }
  }
}

SNN_AVX2 void grad_z_avx2(const float* g, const float* z, const float* mean, const float* a, const float* k1,
                          const float* k2, float* dz, bool training, int64_t C, int64_t r0, int64_t r1) {
  const int64_t C8 = C / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * C;
    int64_t c = 0;
    for (; c < C8; c += 8) {
      const __m256 gv = _mm256_loadu_ps(g + base + c), av = _mm256_loadu_ps(a + c);
      __m256 out;
      if (training) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(z + base + c), _mm256_loadu_ps(mean + c));
        out = _mm256_mul_ps(
            _mm256_sub_ps(_mm256_sub_ps(gv, _mm256_loadu_ps(k1 + c)), _mm256_mul_ps(d, _mm256_loadu_ps(k2 + c))), av);
      } else {
        out = _mm256_mul_ps(gv, av);
      }
      _mm256_storeu_ps(dz + base + c, out);
    }
    for (; c < C; ++c) {
      const float gv = g[base + c];
      dz[base + c] = training ? ((gv - k1[c]) - (z[base + c] - mean[c]) * k2[c]) * a[c] : gv * a[c];
    }
  }
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_add_bwd_cpu(const at::Tensor& grad_y_in, const at::Tensor& z_in,
                                                             const at::Tensor& weight, const at::Tensor& mean_in,
                                                             const at::Tensor& invstd_in, bool training,
                                                             std::array<bool, 3> output_mask) {
  const char* op = "snnops.bn_add_bwd";
  check_layout(z_in, op, "z");
  TORCH_CHECK(grad_y_in.sizes() == z_in.sizes(), op, ": grad_y must have z's shape ", z_in.sizes(), ", got ",
              grad_y_in.sizes());
  const int64_t C = channels_of(z_in);
  TORCH_CHECK(weight.numel() == C && mean_in.numel() == C && invstd_in.numel() == C, op,
              ": weight, mean and invstd need ", C, " entries (one per channel)");
  const at::ScalarType ct = z_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z = as_rows(z_in, ct), g = as_rows(grad_y_in, ct);
  at::Tensor mean = mean_in.to(ct).contiguous(), invstd = invstd_in.to(ct).contiguous();
  const int64_t M = z.size(0);
  const bool want_dz = output_mask[0], want_sums = output_mask[1] || output_mask[2] || (want_dz && training);
  std::vector<double> s1(C, 0.0), s2(C, 0.0);
  at::Tensor dz, dz_rows;
  if (want_dz) std::tie(dz, dz_rows) = rows_like(z_in, z.options());
  const bool avx512 = ct == at::kFloat && use_avx512(), avx2 = ct == at::kFloat && use_avx2();
  AT_DISPATCH_FLOATING_TYPES(ct, "bn_add_bwd", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* ip = invstd.data_ptr<scalar_t>();
    if (want_sums && M > 0 && C > 0) {
      const int64_t blocks = ceil_div(M, kStatRows);
      std::vector<double> part(blocks * 2 * C, 0.0);
      const int64_t grain = std::max<int64_t>(1, (int64_t)32768 / (kStatRows * C));
      parallel_pieces(blocks, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          double* p1 = part.data() + b * 2 * C;
          const int64_t r0 = b * kStatRows, r1 = std::min(M, r0 + kStatRows);
#if SNN_HAVE_AVX2
          if (avx512 || avx2) {
            auto f = [](const scalar_t* p) { return reinterpret_cast<const float*>(p); };
            (avx512 ? grad_sums_avx512 : grad_sums_avx2)(f(gp), f(zp), f(mp), C, r0, r1, p1, p1 + C);
            continue;
          }
#endif
          grad_sums_generic<scalar_t>(gp, zp, mp, C, r0, r1, p1, p1 + C);
        }
      });
      for (int64_t b = 0; b < blocks; ++b) {
        const double* p1 = part.data() + b * 2 * C;
        for (int64_t c = 0; c < C; ++c) {
          s1[c] += p1[c];
          s2[c] += p1[C + c];
        }
      }
    }
    if (want_dz && M > 0 && C > 0) {
      at::Tensor wd = weight.to(at::kDouble).contiguous();
      const double* wp = wd.data_ptr<double>();
      std::vector<scalar_t> a(C), k1(C), k2(C);
      for (int64_t c = 0; c < C; ++c) {
        const double is = (double)ip[c];
        a[c] = (scalar_t)(wp[c] * is);
        k1[c] = (scalar_t)(s1[c] / (double)M);
        k2[c] = (scalar_t)(s2[c] * is * is / (double)M);
      }
      scalar_t* dp = dz_rows.data_ptr<scalar_t>();
      parallel_pieces(M, row_grain(C), [&](int64_t r0, int64_t r1) {
#if SNN_HAVE_AVX2
        if (avx512 || avx2) {
          auto f = [](const scalar_t* p) { return reinterpret_cast<const float*>(p); };
          (avx512 ? grad_z_avx512 : grad_z_avx2)(f(gp), f(zp), f(mp), f(a.data()), f(k1.data()), f(k2.data()),
                                                 reinterpret_cast<float*>(dp), training, C, r0, r1);
          return;
        }
#endif
        grad_z_generic<scalar_t>(gp, zp, mp, a.data(), k1.data(), k2.data(), dp, training, C, r0, r1);
      });
    }
    (void)ip;
  });
  (void)avx512;
  (void)avx2;
  at::Tensor grad_weight = weight.new_empty({0}), grad_bias = weight.new_empty({0});
  if (output_mask[1] || output_mask[2]) {
    at::Tensor is = invstd.to(at::kDouble);
    at::Tensor s1t = at::empty({C}, weight.options().dtype(at::kDouble));
    at::Tensor s2t = at::empty({C}, weight.options().dtype(at::kDouble));
    std::copy(s1.begin(), s1.end(), s1t.data_ptr<double>());
    std::copy(s2.begin(), s2.end(), s2t.data_ptr<double>());
    if (output_mask[1]) grad_weight = (s2t * is).to(weight.scalar_type());
    if (output_mask[2]) grad_bias = s1t.to(weight.scalar_type());
  }
  if (!want_dz) dz = z_in.new_empty({0});
  else if (z_in.scalar_type() != ct) dz = dz.to(z_in.scalar_type());
  return {dz, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(snnops, CPU, m) {
  m.impl("bn_add_fwd", &bn_add_fwd_cpu);
  m.impl("bn_add_bwd", &bn_add_bwd_cpu);
}

}  // namespace snnops
