// tdBN + LIF fused (CPU): BatchNorm over T and B (training statistics or running
// ones) feeding the TT-SNN neuron (hard reset, detached reset, rectangular surrogate),
// on channels-last data z [T, M, C] (a channels-last [T, B, C, H, W] seen as
// [T, B*H*W, C]). Exact formulas: snnops/reference/bn_lif.py.
//
// Why fused: separately, BatchNorm writes y and the LIF reads it back, and PyTorch's
// BatchNorm backward walks its input and gradient twice more. Here the forward reads z
// twice (statistics; then normalize + LIF with the membrane in a register) and writes
// only the spikes and their bits; the backward reads the spike gradient, the bits and
// z once to produce dy and the two per-channel sums, then once more to write dz.
//
// Deterministic: statistics and gradient sums are accumulated in double over fixed
// blocks of rows and combined in block order, whatever the thread count.
// Bits: spikes and window are packed along C (bit c % 32 of word c / 32), the
// snnops.pack_spikes layout, so the spike words feed a TT layer or a saved conv input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "cpu/cached_alloc.h"
#include "cpu/channel_stats.h"
#include "cpu/simd.h"

namespace snnops {
namespace {

using stats::channel_sums;
using stats::kStatRows;

struct Neuron {
  double decay, v_threshold, v_reset, width;
};

// ------------------------------------------------------------------ forward (normalize + LIF)

inline void set_bit(uint32_t* words, int64_t c, bool on) {
  if (on) words[c >> 5] |= (1u << (c & 31));
}

// Rows [r0, r1): for each row, every channel walks the T steps with v in a register.
template <typename T>
void fwd_rows_generic(const Neuron& nr, const T* z, const T* scale, const T* shift, T* spk, uint32_t* packed,
                      uint32_t* window, int64_t steps, int64_t rows, int64_t C, int64_t r0, int64_t r1) {
  const int64_t W = ceil_div(C, 32);
  const T lam = (T)nr.decay, vth = (T)nr.v_threshold, vr = (T)nr.v_reset, b = (T)((1.0 - nr.decay) * nr.v_reset),
          half = (T)(nr.width / 2);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t t = 0; t < steps; ++t) {
      std::fill(packed + (t * rows + r) * W, packed + (t * rows + r + 1) * W, 0u);
      std::fill(window + (t * rows + r) * W, window + (t * rows + r + 1) * W, 0u);
    }
    for (int64_t c = 0; c < C; ++c) {
      T v = T(0);
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t off = (t * rows + r) * C + c;
        const T y = z[off] * scale[c] + shift[c];
        const T h = (v * lam + y) + b;
        const bool s = h >= vth;
        spk[off] = s ? T(1) : T(0);
        set_bit(packed + (t * rows + r) * W, c, s);
        set_bit(window + (t * rows + r) * W, c, std::abs(h - vth) < half);
        v = s ? vr : h;
      }
    }
  }
}

#if SNN_HAVE_AVX2
// 8 channels at a time; their 8 spike / window bits land in one byte of the row's words.
SNN_AVX2 void fwd_rows_avx2(const Neuron& nr, const float* z, const float* scale, const float* shift, float* spk,
                            uint32_t* packed, uint32_t* window, int64_t steps, int64_t rows, int64_t C, int64_t r0,
                            int64_t r1) {
  const int64_t W = ceil_div(C, 32);
  const int64_t C8 = C / 8 * 8;
  const __m256 lam = _mm256_set1_ps((float)nr.decay), vth = _mm256_set1_ps((float)nr.v_threshold),
               vr = _mm256_set1_ps((float)nr.v_reset), b = _mm256_set1_ps((float)((1.0 - nr.decay) * nr.v_reset)),
               half = _mm256_set1_ps((float)(nr.width / 2)), one = _mm256_set1_ps(1.0f),
               sign = _mm256_set1_ps(-0.0f);
  const float vth_s = (float)nr.v_threshold, vr_s = (float)nr.v_reset, lam_s = (float)nr.decay,
              b_s = (float)((1.0 - nr.decay) * nr.v_reset), half_s = (float)(nr.width / 2);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t t = 0; t < steps; ++t) {
      std::fill(packed + (t * rows + r) * W, packed + (t * rows + r + 1) * W, 0u);
      std::fill(window + (t * rows + r) * W, window + (t * rows + r + 1) * W, 0u);
    }
    int64_t c = 0;
    for (; c < C8; c += 8) {
      const __m256 sc = _mm256_loadu_ps(scale + c), sh = _mm256_loadu_ps(shift + c);
      __m256 v = _mm256_setzero_ps();
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t off = (t * rows + r) * C + c;
        const __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(z + off), sc), sh);
        const __m256 h = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(v, lam), y), b);
        const __m256 s = _mm256_cmp_ps(h, vth, _CMP_GE_OQ);
        _mm256_storeu_ps(spk + off, _mm256_and_ps(s, one));
        const __m256 in_win = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(h, vth)), half, _CMP_LT_OQ);
        const uint32_t shift_bits = (uint32_t)(c & 31);
        packed[(t * rows + r) * W + (c >> 5)] |= (uint32_t)_mm256_movemask_ps(s) << shift_bits;
        window[(t * rows + r) * W + (c >> 5)] |= (uint32_t)_mm256_movemask_ps(in_win) << shift_bits;
        v = _mm256_blendv_ps(h, vr, s);
      }
    }
    for (; c < C; ++c) {
      float v = 0.0f;
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t off = (t * rows + r) * C + c;
        const float y = z[off] * scale[c] + shift[c];
        const float h = (v * lam_s + y) + b_s;
        const bool s = h >= vth_s;
        spk[off] = s ? 1.0f : 0.0f;
        set_bit(packed + (t * rows + r) * W, c, s);
        set_bit(window + (t * rows + r) * W, c, std::abs(h - vth_s) < half_s);
        v = s ? vr_s : h;
      }
    }
  }
}
#endif

inline int64_t row_grain(int64_t steps, int64_t C) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, steps * C));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_lif_fwd_cpu(
    const at::Tensor& z_in, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double eps, double decay, double v_threshold, double v_reset, double width) {
  TORCH_CHECK(z_in.dim() == 3, "snnops.bn_lif: z must be [T, M, C], got ", z_in.sizes());
  const at::ScalarType ct = z_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z = cached_contiguous(z_in, ct);
  const int64_t steps = z.size(0), rows = z.size(1), C = z.size(2), W = ceil_div(C, 32);
  TORCH_CHECK(weight.numel() == C && bias.numel() == C, "snnops.bn_lif: weight and bias need ", C, " entries");
  const int64_t n = steps * rows;
  const stats::BnCoeffs k = stats::bn_coefficients(z.view({n, C}), weight, bias, running_mean, running_var, training,
                                                    eps, "snnops.bn_lif");
  const auto opts = z.options();
  at::Tensor spikes = cached_empty({steps, rows, C}, opts);
  at::Tensor packed = cached_empty({steps, rows, W}, opts.dtype(at::kInt));
  at::Tensor window = cached_empty({steps, rows, W}, opts.dtype(at::kInt));
  const Neuron nr{decay, v_threshold, v_reset, width};
  if (n > 0 && C > 0) {
    uint32_t* pk = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
    uint32_t* wn = reinterpret_cast<uint32_t*>(window.data_ptr<int32_t>());
    const bool avx = ct == at::kFloat && use_avx2();
    AT_DISPATCH_FLOATING_TYPES(ct, "bn_lif_fwd", [&] {
      const scalar_t* zp = z.data_ptr<scalar_t>();
      const scalar_t* sc = k.scale.data_ptr<scalar_t>();
      const scalar_t* sh = k.shift.data_ptr<scalar_t>();
      scalar_t* sp = spikes.data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(steps, C), [&](int64_t r0, int64_t r1) {
#if SNN_HAVE_AVX2
        if (avx) {
          fwd_rows_avx2(nr, reinterpret_cast<const float*>(zp), reinterpret_cast<const float*>(sc),
                        reinterpret_cast<const float*>(sh), reinterpret_cast<float*>(sp), pk, wn, steps, rows, C,
                        r0, r1);
          return;
        }
#endif
        fwd_rows_generic<scalar_t>(nr, zp, sc, sh, sp, pk, wn, steps, rows, C, r0, r1);
      });
    });
    (void)avx;
  }
  if (z_in.scalar_type() != ct) spikes = spikes.to(z_in.scalar_type());
  return {spikes, packed, window, k.mean, k.invstd, k.var};
}

// ------------------------------------------------------------------ backward

inline bool get_bit(const uint32_t* words, int64_t c) { return (words[c >> 5] >> (c & 31)) & 1u; }

// Pass 1 on rows [r0, r1): dy through the LIF (time reversed) into dz (unless dz is null:
// only the weight gradients asked for), and the two per-channel sums into s1 (dy) and
// s2 (dy * xhat).
template <typename T>
void bwd_pass1_generic(const Neuron& nr, const T* gs, const T* z, const T* mean, const T* invstd,
                       const uint32_t* packed, const uint32_t* window, T* dz, double* s1, double* s2, int64_t steps,
                       int64_t rows, int64_t C, int64_t r0, int64_t r1) {
  const int64_t W = ceil_div(C, 32);
  const T lam = (T)nr.decay, wdt = (T)nr.width;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      T g = T(0);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int64_t off = (t * rows + r) * C + c, wo = (t * rows + r) * W;
        const T gh = (get_bit(window + wo, c) ? gs[off] / wdt : T(0)) + (get_bit(packed + wo, c) ? T(0) : g);
        if (dz) dz[off] = gh;
        g = gh * lam;
        const T xhat = (z[off] - mean[c]) * invstd[c];
        s1[c] += (double)gh;
        s2[c] += (double)(gh * xhat);
      }
    }
  }
}

// Pass 2 on rows [r0, r1): dz = (dy - k1 - xhat * k2) * a (training) or dy * a (eval), in place.
template <typename T>
void bwd_pass2_generic(const T* z, const T* mean, const T* invstd, const T* a, const T* k1, const T* k2, T* dz,
                       bool training, int64_t steps, int64_t rows, int64_t C, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = (t * rows + r) * C;
      for (int64_t c = 0; c < C; ++c) {
        const T dy = dz[base + c];
        if (training) {
          const T xhat = (z[base + c] - mean[c]) * invstd[c];
          dz[base + c] = ((dy - k1[c]) - xhat * k2[c]) * a[c];
        } else {
          dz[base + c] = dy * a[c];
        }
      }
    }
  }
}

#if SNN_HAVE_AVX2
SNN_AVX2 static inline __m256d lo_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
SNN_AVX2 static inline __m256d hi_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

SNN_AVX2 void bwd_pass1_avx2(const Neuron& nr, const float* gs, const float* z, const float* mean,
                             const float* invstd, const uint32_t* packed, const uint32_t* window, float* dz,
                             double* s1, double* s2, int64_t steps, int64_t rows, int64_t C, int64_t r0,
                             int64_t r1) {
  const int64_t W = ceil_div(C, 32);
  const int64_t C8 = C / 8 * 8;
  const __m256 lam = _mm256_set1_ps((float)nr.decay), wdt = _mm256_set1_ps((float)nr.width),
               zero = _mm256_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    int64_t c = 0;
    for (; c < C8; c += 8) {
      const __m256 mu = _mm256_loadu_ps(mean + c), is = _mm256_loadu_ps(invstd + c);
      __m256d a1 = _mm256_loadu_pd(s1 + c), b1 = _mm256_loadu_pd(s1 + c + 4);
      __m256d a2 = _mm256_loadu_pd(s2 + c), b2 = _mm256_loadu_pd(s2 + c + 4);
      __m256 g = zero;
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int64_t off = (t * rows + r) * C + c, wo = (t * rows + r) * W + (c >> 5);
        const uint32_t sh = (uint32_t)(c & 31);
        const __m256 win = bits_to_mask((window[wo] >> sh) & 0xffu);
        const __m256 fired = bits_to_mask((packed[wo] >> sh) & 0xffu);
        const __m256 gh = _mm256_add_ps(_mm256_and_ps(win, _mm256_div_ps(_mm256_loadu_ps(gs + off), wdt)),
                                        _mm256_andnot_ps(fired, g));
        if (dz) _mm256_storeu_ps(dz + off, gh);
        g = _mm256_mul_ps(gh, lam);
        const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(z + off), mu), is);
        const __m256 p = _mm256_mul_ps(gh, xhat);
        a1 = _mm256_add_pd(a1, lo_pd(gh));
        b1 = _mm256_add_pd(b1, hi_pd(gh));
        a2 = _mm256_add_pd(a2, lo_pd(p));
        b2 = _mm256_add_pd(b2, hi_pd(p));
      }
      _mm256_storeu_pd(s1 + c, a1);
      _mm256_storeu_pd(s1 + c + 4, b1);
      _mm256_storeu_pd(s2 + c, a2);
      _mm256_storeu_pd(s2 + c + 4, b2);
    }
  }
}

SNN_AVX2 void bwd_pass2_avx2(const float* z, const float* mean, const float* invstd, const float* a,
                             const float* k1, const float* k2, float* dz, bool training, int64_t steps, int64_t rows,
                             int64_t C, int64_t r0, int64_t r1) {
  const int64_t C8 = C / 8 * 8;
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = (t * rows + r) * C;
      int64_t c = 0;
      for (; c < C8; c += 8) {
        const __m256 dy = _mm256_loadu_ps(dz + base + c);
        __m256 out;
        if (training) {
          const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(z + base + c), _mm256_loadu_ps(mean + c)),
                                            _mm256_loadu_ps(invstd + c));
          out = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(dy, _mm256_loadu_ps(k1 + c)),
                                            _mm256_mul_ps(xhat, _mm256_loadu_ps(k2 + c))),
                              _mm256_loadu_ps(a + c));
        } else {
          out = _mm256_mul_ps(dy, _mm256_loadu_ps(a + c));
        }
        _mm256_storeu_ps(dz + base + c, out);
      }
      for (; c < C; ++c) {
        const float dy = dz[base + c];
        if (training) {
          const float xhat = (z[base + c] - mean[c]) * invstd[c];
          dz[base + c] = ((dy - k1[c]) - xhat * k2[c]) * a[c];
        } else {
          dz[base + c] = dy * a[c];
        }
      }
    }
  }
}
#endif

// The AVX2 pass 1 needs C % 8 == 0 (every model layer); other widths run the generic one.
template <typename T>
void bwd_pass1_rows(const Neuron& nr, const T* gs, const T* z, const T* mean, const T* invstd, const uint32_t* packed,
                    const uint32_t* window, T* dz, double* s1, double* s2, int64_t steps, int64_t rows, int64_t C,
                    int64_t r0, int64_t r1, bool avx) {
#if SNN_HAVE_AVX2
  if (avx && C % 8 == 0) {
    bwd_pass1_avx2(nr, reinterpret_cast<const float*>(gs), reinterpret_cast<const float*>(z),
                   reinterpret_cast<const float*>(mean), reinterpret_cast<const float*>(invstd), packed, window,
                   reinterpret_cast<float*>(dz), s1, s2, steps, rows, C, r0, r1);
    return;
  }
#endif
  (void)avx;
  bwd_pass1_generic<T>(nr, gs, z, mean, invstd, packed, window, dz, s1, s2, steps, rows, C, r0, r1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_lif_bwd_cpu(
    const at::Tensor& grad_spikes, const at::Tensor& z_in, const at::Tensor& weight, const at::Tensor& mean_in,
    const at::Tensor& invstd_in, const at::Tensor& packed_in, const at::Tensor& window_in, bool training,
    double decay, double width, std::array<bool, 3> output_mask) {
  TORCH_CHECK(z_in.dim() == 3, "snnops.bn_lif_bwd: z must be [T, M, C], got ", z_in.sizes());
  const at::ScalarType ct = z_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z = cached_contiguous(z_in, ct);
  const int64_t steps = z.size(0), rows = z.size(1), C = z.size(2), W = ceil_div(C, 32);
  at::Tensor gs = cached_contiguous(grad_spikes, ct);
  TORCH_CHECK(gs.sizes() == z.sizes(), "snnops.bn_lif_bwd: grad_spikes must have z's shape");
  at::Tensor mean = mean_in.to(ct).contiguous(), invstd = invstd_in.to(ct).contiguous();
  at::Tensor packed = packed_in.contiguous(), window = window_in.contiguous();
  TORCH_CHECK(packed.numel() == steps * rows * W && window.numel() == steps * rows * W,
              "snnops.bn_lif_bwd: packed spikes and window bits must be [T, M, ceil(C/32)]");
  // dz holds dy between the passes; without an input gradient there is no second pass
  at::Tensor dz = output_mask[0] ? cached_empty({steps, rows, C}, z.options()) : z_in.new_empty({0});
  const int64_t n = steps * rows;
  const int64_t blocks = ceil_div(rows, kStatRows);
  std::vector<double> part(std::max<int64_t>(blocks, 1) * 2 * C, 0.0);
  const Neuron nr{decay, 0.0, 0.0, width};
  const bool avx = ct == at::kFloat && use_avx2();
  const uint32_t* pk = reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>());
  const uint32_t* wn = reinterpret_cast<const uint32_t*>(window.data_ptr<int32_t>());
  std::vector<double> s1(C, 0.0), s2(C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(ct, "bn_lif_bwd", [&] {
    const scalar_t* g = gs.data_ptr<scalar_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* ip = invstd.data_ptr<scalar_t>();
    scalar_t* d = output_mask[0] ? dz.data_ptr<scalar_t>() : nullptr;
    if (n > 0 && C > 0) {
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          double* p1 = part.data() + b * 2 * C;
          bwd_pass1_rows<scalar_t>(nr, g, zp, mp, ip, pk, wn, d, p1, p1 + C, steps, rows, C, b * kStatRows,
                                   std::min(rows, (b + 1) * kStatRows), avx);
        }
      });
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const double* p1 = part.data() + b * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        s1[c] += p1[c];
        s2[c] += p1[C + c];
      }
    }
    if (output_mask[0] && n > 0 && C > 0) {
      std::vector<scalar_t> a(C), k1(C), k2(C);
      at::Tensor wt = weight.to(ct).contiguous();
      const scalar_t* wp = wt.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        a[c] = wp[c] * ip[c];
        k1[c] = (scalar_t)(s1[c] / (double)n);
        k2[c] = (scalar_t)(s2[c] / (double)n);
      }
      at::parallel_for(0, rows, row_grain(steps, C), [&](int64_t r0, int64_t r1) {
#if SNN_HAVE_AVX2
        if (avx) {
          bwd_pass2_avx2(reinterpret_cast<const float*>(zp), reinterpret_cast<const float*>(mp),
                         reinterpret_cast<const float*>(ip), reinterpret_cast<const float*>(a.data()),
                         reinterpret_cast<const float*>(k1.data()), reinterpret_cast<const float*>(k2.data()),
                         reinterpret_cast<float*>(d), training, steps, rows, C, r0, r1);
          return;
        }
#endif
        bwd_pass2_generic<scalar_t>(zp, mp, ip, a.data(), k1.data(), k2.data(), d, training, steps, rows, C, r0, r1);
      });
    }
  });
  at::Tensor grad_weight = weight.new_empty({0}), grad_bias = weight.new_empty({0});
  if (output_mask[1] || output_mask[2]) {
    at::Tensor s1t = at::empty({C}, weight.options().dtype(at::kDouble));
    at::Tensor s2t = at::empty({C}, weight.options().dtype(at::kDouble));
    std::copy(s1.begin(), s1.end(), s1t.data_ptr<double>());
    std::copy(s2.begin(), s2.end(), s2t.data_ptr<double>());
    if (output_mask[1]) grad_weight = s2t.to(weight.scalar_type());
    if (output_mask[2]) grad_bias = s1t.to(weight.scalar_type());
  }
  if (output_mask[0] && z_in.scalar_type() != ct) dz = dz.to(z_in.scalar_type());
  return {dz, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(snnops, CPU, m) {
  m.impl("bn_lif_fwd", &bn_lif_fwd_cpu);
  m.impl("bn_lif_bwd", &bn_lif_bwd_cpu);
}

}  // namespace snnops
