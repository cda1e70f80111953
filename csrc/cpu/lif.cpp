// Multi-timestep LIF neuron, fused over time (CPU).
//
//   h[t] = decay * v[t-1] + input_scale * x[t] + (1 - decay) * v_reset
//   s[t] = (h[t] >= v_threshold)
//   v[t] = s ? v_reset : h          (hard reset)   or   h - s * v_threshold   (soft)
//
// Each thread owns a block of neurons and walks all timesteps over it, so the
// membrane stays in L1 and every tensor is streamed once. h is computed as
// ((v * decay) + (x * input_scale)) + bias, the reference's rounding order, so
// spikes match the PyTorch reference bit for bit (no FMA contraction here).
//
// Saved state for backward ("saved", int32 words, bit i of word w = neuron 32w+i):
//   rectangular surrogate + detached reset: plane 0 = "|h - v_th| < width/2",
//     plane 1 = spikes (hard reset only) -> 1 or 2 bits per neuron-step;
//   any other configuration: nothing here; the caller keeps x and the backward
//     recomputes h from it (measured faster than writing h in the forward).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <vector>

#include "cpu/cached_alloc.h"
#include "cpu/simd.h"
#include "cpu/spike_pack.h"

namespace snnops {
namespace {

enum SurrogateKind : int64_t {
  kRectangular = 0,
  kTriangle = 1,
  kATan = 2,
  kSigmoid = 3,
  kSuperSpike = 4,
  kDspike = 5,
};

// Neurons per block of the membrane buffer (4 KiB of float: stays in L1).
constexpr int64_t kBlock = 1024;

struct LifParams {
  double decay, input_scale, bias, v_threshold, v_reset;
  bool hard, detach;
  int64_t surrogate;
  double alpha;
  double dspike_k;  // alpha / (2 tanh(alpha / 2))
  bool stream = false;  // the float outputs are written with streaming stores (see streams())
};

// float32 rounds as the vector kernels do (their fused multiply-adds and exp), so every
// code path gives the same gradients; float64 has no vector kernel.
template <typename T>
inline T surrogate_grad(const LifParams& p, T u) {
  constexpr bool f32 = std::is_same_v<T, float>;
  const T a = (T)p.alpha;
  const T au = std::abs(u);
  switch (p.surrogate) {
    case kRectangular:
      return au < (T)(p.alpha / 2) ? T(1) / a : T(0);
    case kTriangle: {
      T r = T(1) - au / (T)p.v_threshold;
      return r > T(0) ? a * r : T(0);
    }
    case kATan: {
      T z = (T)(M_PI / 2) * a * u;
      return (a / T(2)) / (f32 ? std::fma(z, z, T(1)) : T(1) + z * z);
    }
    case kSigmoid: {  // alpha * sig(a u) * (1 - sig(a u)) = alpha * e / (1 + e)^2, e = exp(-a|u|)
      T e = f32 ? (T)exp_nonpos((float)(-a * au)) : std::exp(-a * au);
      T d = T(1) + e;
      return a * e / (d * d);
    }
    case kSuperSpike: {
      T d = f32 ? std::fma(a, au, T(1)) : a * au + T(1);
      return T(1) / (d * d);
    }
    case kDspike: {  // k * (1 - tanh(b u)^2) = k * 4e / (1 + e)^2, e = exp(-2b|u|)
      if (!(au < T(0.5))) return T(0);
      T e = f32 ? (T)exp_nonpos((float)(T(-2) * a * au)) : std::exp(T(-2) * a * au);
      T d = T(1) + e;
      return (T)p.dspike_k * T(4) * e / (d * d);
    }
  }
  return T(0);
}

inline uint8_t* plane_row(uint8_t* saved, int64_t plane, int64_t t, int64_t steps, int64_t words) {
  return saved + ((plane * steps + t) * words) * 4;
}
inline bool get_bit(const uint8_t* row, int64_t n) { return (row[n >> 3] >> (n & 7)) & 1; }

// f(std::integral_constant<int, steps>()) for 1 <= steps <= Max: the register walks are
// compiled for each short sequence length.
template <int Max, int S = 1, typename F>
inline void with_steps(int64_t steps, const F& f) {
  if constexpr (S < Max) {
    if (steps > S) return with_steps<Max, S + 1>(steps, f);
  }
  f(std::integral_constant<int, S>());
}

// ---------------------------------------------------------------- forward, portable
template <typename T>
inline void fwd_lanes(const LifParams& p, const T* xt, T* st, T* vt_out, T* v, int64_t i0,
                      int64_t i1, uint8_t* win_row, uint8_t* spk_row, int64_t base, uint8_t* flat_row) {
  const T lam = (T)p.decay, c = (T)p.input_scale, b = (T)p.bias, vth = (T)p.v_threshold,
          vr = (T)p.v_reset, half = (T)(p.alpha / 2);
  for (int64_t i = i0; i < i1; ++i) {
    T h = (v[i] * lam + xt[i] * c) + b;
    bool s = h >= vth;
    st[i] = s ? T(1) : T(0);
    T vn = s ? (p.hard ? vr : h - vth) : h;
    v[i] = vn;
    if (vt_out) vt_out[i] = vn;
    if (win_row) {
      int64_t n = base + i;
      uint8_t bit = (uint8_t)(1u << (n & 7));
      if (std::abs(h - vth) < half) win_row[n >> 3] |= bit; else win_row[n >> 3] &= (uint8_t)~bit;
      if (spk_row) {
        if (s) spk_row[n >> 3] |= bit; else spk_row[n >> 3] &= (uint8_t)~bit;
      }
    }
    if (flat_row) {
      int64_t n = base + i;
      uint8_t bit = (uint8_t)(1u << (n & 7));
      if (s) flat_row[n >> 3] |= bit; else flat_row[n >> 3] &= (uint8_t)~bit;
    }
  }
}

template <typename T>
void fwd_generic(const LifParams& p, const T* x, const T* v0, T* spk, T* v_last, T* membrane,
                 uint8_t* saved, uint8_t* flat, int64_t steps, int64_t N, int64_t n0, int64_t n1) {
  const int64_t words = ceil_div(N, 32);
  std::vector<T> v(kBlock);
  for (int64_t a0 = n0; a0 < n1; a0 += kBlock) {
    const int64_t len = std::min(kBlock, n1 - a0);
    for (int64_t i = 0; i < len; ++i) v[i] = v0 ? v0[a0 + i] : T(0);
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t off = t * N + a0;
      uint8_t* win = saved ? plane_row(saved, 0, t, steps, words) : nullptr;
      uint8_t* sp = (saved && p.hard) ? plane_row(saved, 1, t, steps, words) : nullptr;
      fwd_lanes<T>(p, x + off, spk + off, membrane ? membrane + off : nullptr, v.data(), 0, len,
                   win, sp, a0, flat ? plane_row(flat, 0, t, steps, words) : nullptr);
    }
    std::copy(v.begin(), v.begin() + len, v_last + a0);
  }
}

// ---------------------------------------------------------------- backward, portable
template <typename T>
inline T gv_at(const T* g_vlast, const T* g_mem, int64_t t, int64_t steps, int64_t off, int64_t n) {
  T gv = T(0);
  if (g_vlast && t == steps - 1) gv += g_vlast[n];
  if (g_mem) gv += g_mem[off];
  return gv;
}

// Rectangular surrogate, detached reset: everything needed is in the bits.
// One step t for neurons a0+i0 .. a0+i1 of a block whose carried gradient is g.
template <typename T>
inline void bwd_bits_lanes(const LifParams& p, const T* g_spk, const T* g_vlast, const T* g_mem,
                           const uint8_t* win, const uint8_t* sp, T* gx, T* g, int64_t t,
                           int64_t steps, int64_t N, int64_t a0, int64_t i0, int64_t i1) {
  const T lam = (T)p.decay, c = (T)p.input_scale, inv_a = T(1) / (T)p.alpha;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = a0 + i, off = t * N + n;
    T sg = get_bit(win, n) ? inv_a : T(0);
    T dvdh = (sp && get_bit(sp, n)) ? T(0) : T(1);
    T gs = g_spk ? g_spk[off] : T(0);
    T gh = gs * sg + (gv_at(g_vlast, g_mem, t, steps, off, n) + g[i]) * dvdh;
    gx[off] = gh * c;
    g[i] = gh * lam;
  }
}

template <typename T>
void bwd_bits_generic(const LifParams& p, const T* g_spk, const T* g_vlast, const T* g_mem,
                      const uint8_t* saved, T* gx, T* gv0, int64_t steps, int64_t N, int64_t n0,
                      int64_t n1) {
  const int64_t words = ceil_div(N, 32);
  uint8_t* sv = const_cast<uint8_t*>(saved);
  std::vector<T> g(kBlock);
  for (int64_t a0 = n0; a0 < n1; a0 += kBlock) {
    const int64_t len = std::min(kBlock, n1 - a0);
    std::fill(g.begin(), g.begin() + len, T(0));
    for (int64_t t = steps - 1; t >= 0; --t) {
      bwd_bits_lanes<T>(p, g_spk, g_vlast, g_mem, plane_row(sv, 0, t, steps, words),
                        p.hard ? plane_row(sv, 1, t, steps, words) : nullptr, gx, g.data(), t, steps, N,
                        a0, 0, len);
    }
    if (gv0) std::copy(g.begin(), g.begin() + len, gv0 + a0);
  }
}

// Scratch of n floats starting on a cache line: a vector load or store of a malloc'ed
// (16-byte aligned) buffer would span two lines.
struct AlignedScratch {
  std::vector<float> buf;
  explicit AlignedScratch(int64_t n) : buf(n + 16) {}
  float* get() { return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63)); }
};

// Neurons per recompute block: the h history of one block (steps x block) stays in L2.
inline int64_t recompute_block(int64_t steps, int64_t elem) {
  int64_t b = (int64_t(128) * 1024 / (steps * elem)) / 8 * 8;
  return std::max<int64_t>(8, std::min(kBlock, b));
}

template <typename T>
inline T dv_dh(const LifParams& p, T h, bool s, T sg) {
  if (p.hard) return (s ? T(0) : T(1)) + (p.detach ? T(0) : ((T)p.v_reset - h) * sg);
  return T(1) - (p.detach ? T(0) : (T)p.v_threshold * sg);
}

// Any other configuration: recompute h from x, then run time backwards.
// Forward over lanes i0..i1 of a block at one step, writing h into the history row ht.
template <typename T>
inline void recompute_h_lanes(const LifParams& p, const T* xt, T* ht, T* v, int64_t i0, int64_t i1) {
  const T lam = (T)p.decay, c = (T)p.input_scale, b = (T)p.bias, vth = (T)p.v_threshold,
          vr = (T)p.v_reset;
  for (int64_t i = i0; i < i1; ++i) {
    T h = (v[i] * lam + xt[i] * c) + b;
    ht[i] = h;
    v[i] = h >= vth ? (p.hard ? vr : h - vth) : h;
  }
}

// Backward step t over lanes i0..i1 of a block starting at neuron a0, from history row ht.
template <typename T>
inline void recompute_grad_lanes(const LifParams& p, const T* ht, const T* g_spk, const T* g_vlast,
                                 const T* g_mem, T* gx, T* g, int64_t t, int64_t steps, int64_t N,
                                 int64_t a0, int64_t i0, int64_t i1) {
  const T lam = (T)p.decay, c = (T)p.input_scale, vth = (T)p.v_threshold;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = a0 + i, off = t * N + n;
    T h = ht[i];
    bool s = h >= vth;
    T sg = surrogate_grad<T>(p, h - vth);
    T gs = g_spk ? g_spk[off] : T(0);
    T gh = gs * sg + (gv_at(g_vlast, g_mem, t, steps, off, n) + g[i]) * dv_dh<T>(p, h, s, sg);
    gx[off] = gh * c;
    g[i] = gh * lam;
  }
}

template <typename T>
void bwd_recompute_generic(const LifParams& p, const T* x, const T* v0, const T* g_spk,
                           const T* g_vlast, const T* g_mem, T* gx, T* gv0, int64_t steps,
                           int64_t N, int64_t n0, int64_t n1) {
  const int64_t blk = recompute_block(steps, sizeof(T));
  std::vector<T> hist(steps * blk), v(blk), g(blk);
  for (int64_t a0 = n0; a0 < n1; a0 += blk) {
    const int64_t len = std::min(blk, n1 - a0);
    for (int64_t i = 0; i < len; ++i) v[i] = v0 ? v0[a0 + i] : T(0);
    for (int64_t t = 0; t < steps; ++t)
      recompute_h_lanes<T>(p, x + t * N + a0, hist.data() + t * blk, v.data(), 0, len);
    std::fill(g.begin(), g.begin() + len, T(0));
    for (int64_t t = steps - 1; t >= 0; --t)
      recompute_grad_lanes<T>(p, hist.data() + t * blk, g_spk, g_vlast, g_mem, gx, g.data(), t, steps, N, a0,
                              0, len);
    if (gv0) std::copy(g.begin(), g.begin() + len, gv0 + a0);
  }
}

// f(std::integral_constant<int, kind>()) for the surrogate kind p.surrogate.
template <typename F>
inline void with_surrogate(const LifParams& p, const F& f) {
  switch (p.surrogate) {
    case kRectangular: return f(std::integral_constant<int, kRectangular>());
    case kTriangle: return f(std::integral_constant<int, kTriangle>());
    case kATan: return f(std::integral_constant<int, kATan>());
    case kSigmoid: return f(std::integral_constant<int, kSigmoid>());
    case kSuperSpike: return f(std::integral_constant<int, kSuperSpike>());
    default: return f(std::integral_constant<int, kDspike>());
  }
}

#if SNN_HAVE_AVX2
// ---------------------------------------------------------------- AVX2 (float32)
struct VecConsts {
  __m256 lam, c, b, vth, vr, half, one, zero, inv_a, a, gamma_over_vth, atan_k, atan_h, dk4;
};

SNN_AVX2 static inline VecConsts make_consts(const LifParams& p) {
  VecConsts k;
  k.lam = _mm256_set1_ps((float)p.decay);
  k.c = _mm256_set1_ps((float)p.input_scale);
  k.b = _mm256_set1_ps((float)p.bias);
  k.vth = _mm256_set1_ps((float)p.v_threshold);
  k.vr = _mm256_set1_ps((float)p.v_reset);
  k.half = _mm256_set1_ps((float)(p.alpha / 2));
  k.one = _mm256_set1_ps(1.0f);
  k.zero = _mm256_setzero_ps();
  k.a = _mm256_set1_ps((float)p.alpha);
  k.inv_a = _mm256_set1_ps(1.0f / (float)p.alpha);
  k.gamma_over_vth = _mm256_set1_ps((float)p.v_threshold);
  k.atan_k = _mm256_set1_ps((float)(M_PI / 2) * (float)p.alpha);
  k.atan_h = _mm256_set1_ps((float)p.alpha / 2.0f);
  k.dk4 = _mm256_set1_ps((float)p.dspike_k * 4.0f);
  return k;
}

// The surrogate of kind SG; the constants by value (see Sg512 below for why and what it
// saved).
template <int SG>
SNN_AVX2 static inline __m256 surrogate_ps(const VecConsts k, __m256 u) {
  const __m256 au = abs_ps(u);
  if constexpr (SG == kRectangular) {
    return _mm256_and_ps(_mm256_cmp_ps(au, k.half, _CMP_LT_OQ), k.inv_a);
  } else if constexpr (SG == kTriangle) {
    __m256 r = _mm256_sub_ps(k.one, _mm256_div_ps(au, k.vth));
    return _mm256_mul_ps(k.a, _mm256_max_ps(r, k.zero));
  } else if constexpr (SG == kATan) {
    __m256 z = _mm256_mul_ps(k.atan_k, u);
    return _mm256_div_ps(k.atan_h, _mm256_fmadd_ps(z, z, k.one));
  } else if constexpr (SG == kSigmoid) {
    __m256 e = exp_nonpos_ps(_mm256_mul_ps(_mm256_sub_ps(k.zero, k.a), au));
    __m256 d = _mm256_add_ps(k.one, e);
    return _mm256_div_ps(_mm256_mul_ps(k.a, e), _mm256_mul_ps(d, d));
  } else if constexpr (SG == kSuperSpike) {
    __m256 d = _mm256_fmadd_ps(k.a, au, k.one);
    return _mm256_div_ps(k.one, _mm256_mul_ps(d, d));
  } else {
    static_assert(SG == kDspike, "unknown surrogate");
    __m256 e = exp_nonpos_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), _mm256_mul_ps(k.a, au)));
    __m256 d = _mm256_add_ps(k.one, e);
    __m256 r = _mm256_div_ps(_mm256_mul_ps(k.dk4, e), _mm256_mul_ps(d, d));
    return _mm256_and_ps(_mm256_cmp_ps(au, _mm256_set1_ps(0.5f), _CMP_LT_OQ), r);
  }
}

// dv/dh at a recompute step (the portable dv_dh), the reset flags as locals.
SNN_AVX2 static inline __m256 dv_dh256(bool hard, bool detach, const VecConsts k, __m256 h, __m256 sg) {
  if (hard) {
    const __m256 d = _mm256_andnot_ps(_mm256_cmp_ps(h, k.vth, _CMP_GE_OQ), k.one);
    return detach ? d : _mm256_add_ps(d, _mm256_mul_ps(_mm256_sub_ps(k.vr, h), sg));
  }
  return detach ? k.one : _mm256_sub_ps(k.one, _mm256_mul_ps(k.vth, sg));
}

// The AVX2 backward kernels walk a block of up to kAvxBlock neurons one timestep at a
// time, the carried gradient in an L1 buffer (the forwards walk chunks of steps, below).
// Each visit of a timestep row reads one contiguous 8 KiB run. Walking time innermost over
// a few registers of neurons instead touches T rows that lie N floats apart: when N is a multiple of a
// large power of two (the usual [T, B, C, H, W] shapes) all of those lines fall in the
// same cache sets, and at T = 16 they no longer fit the ways of L1 and L2 (measured
// 3-6x slower on lif-T16). Lanes past the last multiple of 16 (8 for the recompute)
// of a block run the portable lane code on the same buffer.

// Neurons per block of the chunked forwards and AVX-512 bits backward (32 KiB of membrane
// or carried gradient).
constexpr int64_t kChunkBlock = 8192;
// Timesteps per pass over a block: the membrane (forward) or the carried gradient
// (backward) stays in a register through a chunk of kChunkSteps steps and goes to the
// block's buffer once per chunk. A store per vector and step to that buffer (a walk of one
// step per pass) takes store-queue entries ahead of the output's store misses and so cuts
// the misses in flight: on an AMD EPYC (Zen 4), a stand-alone forward over 16 x 1M
// neurons, two threads, took 1.3-1.45x a copy's time with one step per pass at any block
// size from 2048 to 65536 neurons, 1.0-1.05x with four steps per pass (two: 1.3x, eight:
// 1.25x); without the buffer store the one-step walk ran as a copy. Four steps stream
// 8 rows at once, few enough for the hardware prefetcher (software prefetching of the
// next run, which the one-step walks need on Intel, slowed these walks here).
constexpr int64_t kChunkSteps = 4;

// 8 KiB runs per row visit: longer runs than one 4 KiB page let the prefetcher ramp up
// once per run (1024 to 4096 measured within noise of each other; 512 slower).
constexpr int64_t kAvxBlock = 2048;

// Offset (in floats) of the row run a block visits next (the next timestep of this block, else the
// first timestep of the next block, else -1): its lines are prefetched while this run is
// processed, since the hardware prefetcher restarts on every jump between rows.
inline int64_t next_visit(bool same_block, int64_t off_same, int64_t off_next_block, bool has_next_block) {
  return same_block ? off_same : has_next_block ? off_next_block : -1;
}
// Measured on lif-T4/T16 (1 thread, interleaved against a copy): forward+backward 3.7-4.4x
// a copy's time without, 2.5-2.9x with.

// The rows one forward step of a block of the AVX kernels touches.
struct FwdRow {
  const float* x;
  float* spk;
  float* mem;
  uint8_t *win, *fired, *flat;
};
inline FwdRow fwd_row(const LifParams& p, const float* x, float* spk, float* membrane, uint8_t* saved, uint8_t* flat,
                      int64_t t, int64_t steps, int64_t N, int64_t a0) {
  const int64_t off = t * N + a0, words = ceil_div(N, 32);
  return {x + off, spk + off, membrane ? membrane + off : nullptr,
          saved ? plane_row(saved, 0, t, steps, words) : nullptr,
          (saved && p.hard) ? plane_row(saved, 1, t, steps, words) : nullptr,
          flat ? plane_row(flat, 0, t, steps, words) : nullptr};
}

// The same for a backward step of the bits kernels (time runs down).
struct BwdRow {
  int64_t off;
  const uint8_t *win, *fired;
  int64_t next;
};
inline BwdRow bwd_row(const LifParams& p, const uint8_t* saved, int64_t t, int64_t steps, int64_t N, int64_t a0,
                      int64_t n1) {
  const int64_t words = ceil_div(N, 32);
  uint8_t* sv = const_cast<uint8_t*>(saved);
  return {t * N + a0, plane_row(sv, 0, t, steps, words), p.hard ? plane_row(sv, 1, t, steps, words) : nullptr,
          next_visit(t > 0, (t - 1) * N + a0, (steps - 1) * N + a0 + kAvxBlock, a0 + kAvxBlock < n1)};
}

// One cache line at each non-null address, into L1.
SNN_AVX2 static inline void prefetch_lines(const float* a, const float* b) {
  if (a) _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T0);
  if (b) _mm_prefetch(reinterpret_cast<const char*>(b), _MM_HINT_T0);
}

SNN_AVX2 static inline uint32_t load_bits16(const uint8_t* row, int64_t n) {
  uint16_t v;
  std::memcpy(&v, row + (n >> 3), 2);
  return v;
}
SNN_AVX2 static inline void store_bits16(uint8_t* row, int64_t n, uint32_t bits) {
  uint16_t v = (uint16_t)bits;
  std::memcpy(row + (n >> 3), &v, 2);
}

// An output row's vector, with a streaming store when `stream` (aligned: see streams()).
SNN_AVX2 static inline void store_out(bool stream, float* a, __m256 v) {
  if (stream) _mm256_stream_ps(a, v);
  else _mm256_storeu_ps(a, v);
}

// The forward for T > kRegisterStepsAvx2 walks blocks in chunks of kChunkSteps steps, as
// the AVX-512 one does, on 8-lane halves of 16 neurons. Against the one-step walk
// (lif-T16, two threads, interleaved, AMD EPYC Zen 4): forward alone 0.80-0.96x the
// time, forward+backward 0.93-0.96x. The bits backward keeps the one-step walk: chunked,
// it took 1.06-1.16x the time at T = 4 and 0.99x at T = 16.
template <int S>
SNN_AVX2 static inline void fwd_chunk_avx2(const LifParams& p, const VecConsts k, const FwdRow* rows, float* v,
                                           int64_t a0, int64_t len) {
  const int64_t vec = len / 16 * 16;
  const bool st = p.stream;
  for (int64_t i = 0; i < vec; i += 16) {
    __m256 vv[2] = {_mm256_load_ps(v + i), _mm256_load_ps(v + i + 8)};
    for (int s = 0; s < S; ++s) {
      const FwdRow& r = rows[s];
      uint32_t win = 0, fired = 0;
      for (int h2 = 0; h2 < 2; ++h2) {
        const int64_t j = i + 8 * h2;
        const __m256 h = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(vv[h2], k.lam), _mm256_mul_ps(_mm256_loadu_ps(r.x + j), k.c)), k.b);
        const __m256 m = _mm256_cmp_ps(h, k.vth, _CMP_GE_OQ);
        store_out(st, r.spk + j, _mm256_and_ps(m, k.one));
        vv[h2] = p.hard ? _mm256_blendv_ps(h, k.vr, m) : _mm256_sub_ps(h, _mm256_and_ps(m, k.vth));
        if (r.mem) store_out(st, r.mem + j, vv[h2]);
        if (r.win) {
          const __m256 w = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(h, k.vth)), k.half, _CMP_LT_OQ);
          win |= (uint32_t)_mm256_movemask_ps(w) << (8 * h2);
        }
        fired |= (uint32_t)_mm256_movemask_ps(m) << (8 * h2);
      }
      if (r.win) {
        store_bits16(r.win, a0 + i, win);
        if (r.fired) store_bits16(r.fired, a0 + i, fired);
      }
      if (r.flat) store_bits16(r.flat, a0 + i, fired);
    }
    _mm256_store_ps(v + i, vv[0]);
    _mm256_store_ps(v + i + 8, vv[1]);
  }
  if (vec < len)
    for (int s = 0; s < S; ++s) {
      const FwdRow& r = rows[s];
      fwd_lanes<float>(p, r.x, r.spk, r.mem, v, vec, len, r.win, r.fired, a0, r.flat);
    }
}

SNN_AVX2 void fwd_avx2(const LifParams& p, const float* x, const float* v0, float* spk, float* v_last,
                       float* membrane, uint8_t* saved, uint8_t* flat, int64_t steps, int64_t N, int64_t n0,
                       int64_t n1) {
  const VecConsts k = make_consts(p);
  alignas(64) float v[kChunkBlock];
  for (int64_t a0 = n0; a0 < n1; a0 += kChunkBlock) {
    const int64_t len = std::min(kChunkBlock, n1 - a0);
    if (v0) std::memcpy(v, v0 + a0, len * sizeof(float));
    else std::memset(v, 0, len * sizeof(float));
    for (int64_t t0 = 0; t0 < steps; t0 += kChunkSteps) {
      FwdRow rows[kChunkSteps];
      const int64_t n = std::min(kChunkSteps, steps - t0);
      for (int64_t s = 0; s < n; ++s) rows[s] = fwd_row(p, x, spk, membrane, saved, flat, t0 + s, steps, N, a0);
      with_steps<kChunkSteps>(n, [&](auto S) { fwd_chunk_avx2<S()>(p, k, rows, v, a0, len); });
    }
    std::memcpy(v_last + a0, v, len * sizeof(float));
  }
}

// One step of the backward recurrence for 8 neurons; returns the new carried gradient.
SNN_AVX2 static inline __m256 bwd_step(const VecConsts k, __m256 g, __m256 sg, __m256 dvdh,
                                       const float* g_spk, const float* g_vlast, const float* g_mem,
                                       float* gx, int64_t o, int64_t n, bool last, bool stream) {
  __m256 gv = g;
  if (g_vlast && last) gv = _mm256_add_ps(gv, _mm256_loadu_ps(g_vlast + n));
  if (g_mem) gv = _mm256_add_ps(gv, _mm256_loadu_ps(g_mem + o));
  __m256 gh = _mm256_mul_ps(gv, dvdh);
  if (g_spk) gh = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(g_spk + o), sg), gh);
  store_out(stream, gx + o, _mm256_mul_ps(gh, k.c));
  return _mm256_mul_ps(gh, k.lam);
}

SNN_AVX2 void bwd_bits_avx2(const LifParams& p, const float* g_spk, const float* g_vlast, const float* g_mem,
                            const uint8_t* saved, float* gx, float* gv0, int64_t steps, int64_t N, int64_t n0,
                            int64_t n1) {
  const VecConsts k = make_consts(p);
  const bool st = p.stream;
  alignas(64) float g[kAvxBlock];
  for (int64_t a0 = n0; a0 < n1; a0 += kAvxBlock) {
    const int64_t len = std::min(kAvxBlock, n1 - a0);
    const int64_t vec = len / 16 * 16;
    std::memset(g, 0, len * sizeof(float));
    for (int64_t t = steps - 1; t >= 0; --t) {
      const auto [off, win_row, spk_row, nxt] = bwd_row(p, saved, t, steps, N, a0, n1);
      const bool last = t == steps - 1;
      for (int64_t i = 0; i < vec; i += 16) {
        if (nxt >= 0) prefetch_lines(g_spk ? g_spk + nxt + i : nullptr, st ? nullptr : gx + nxt + i);
        const uint32_t win = load_bits16(win_row, a0 + i);
        const uint32_t fired = spk_row ? load_bits16(spk_row, a0 + i) : 0u;
        for (int h2 = 0; h2 < 2; ++h2) {
          const int64_t j = i + 8 * h2;
          __m256 sg = _mm256_and_ps(bits_to_mask((win >> (8 * h2)) & 0xff), k.inv_a);
          __m256 dvdh = _mm256_andnot_ps(bits_to_mask((fired >> (8 * h2)) & 0xff), k.one);
          _mm256_store_ps(g + j, bwd_step(k, _mm256_load_ps(g + j), sg, dvdh, g_spk, g_vlast, g_mem, gx,
                                          off + j, a0 + j, last, st));
        }
      }
      if (vec < len) bwd_bits_lanes<float>(p, g_spk, g_vlast, g_mem, win_row, spk_row, gx, g, t, steps, N, a0, vec, len);
    }
    if (gv0) std::memcpy(gv0 + a0, g, len * sizeof(float));
  }
}

template <int SG>
SNN_AVX2 void bwd_recompute_avx2(const LifParams& p, const float* x, const float* v0, const float* g_spk,
                                 const float* g_vlast, const float* g_mem, float* gx, float* gv0, int64_t steps,
                                 int64_t N, int64_t n0, int64_t n1) {
  const VecConsts k = make_consts(p);
  const bool hard = p.hard, detach = p.detach, st = p.stream;
  const int64_t blk = recompute_block(steps, sizeof(float));
  AlignedScratch scratch((steps + 2) * blk);
  float* hist = scratch.get();
  float *v = hist + steps * blk, *g = v + blk;
  for (int64_t a0 = n0; a0 < n1; a0 += blk) {
    const int64_t len = std::min(blk, n1 - a0);
    const int64_t vec = len / 8 * 8;
    if (v0) std::memcpy(v, v0 + a0, len * sizeof(float));
    else std::memset(v, 0, len * sizeof(float));
    for (int64_t t = 0; t < steps; ++t) {
      const float* xt = x + t * N + a0;
      float* ht = hist + t * blk;
      const int64_t nxt = next_visit(t + 1 < steps, (t + 1) * N + a0, -1, false);
      for (int64_t i = 0; i < vec; i += 8) {
        if (nxt >= 0 && i % 16 == 0) prefetch_lines(x + nxt + i, nullptr);
        __m256 h = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), k.lam), _mm256_mul_ps(_mm256_loadu_ps(xt + i), k.c)),
            k.b);
        _mm256_storeu_ps(ht + i, h);
        __m256 m = _mm256_cmp_ps(h, k.vth, _CMP_GE_OQ);
        _mm256_storeu_ps(v + i, hard ? _mm256_blendv_ps(h, k.vr, m) : _mm256_sub_ps(h, _mm256_and_ps(m, k.vth)));
      }
      if (vec < len) recompute_h_lanes<float>(p, xt, ht, v, vec, len);
    }
    std::memset(g, 0, len * sizeof(float));
    for (int64_t t = steps - 1; t >= 0; --t) {
      const float* ht = hist + t * blk;
      const int64_t off = t * N + a0;
      const int64_t nxt = next_visit(t > 0, (t - 1) * N + a0, a0 + blk, a0 + blk < n1);
      for (int64_t i = 0; i < vec; i += 8) {
        // The next block's first visit reads x (its recompute); a later step, g and gx.
        if (nxt >= 0 && i % 16 == 0) prefetch_lines(t > 0 ? (g_spk ? g_spk + nxt + i : nullptr) : x + nxt + i,
                                                     t > 0 && !st ? gx + nxt + i : nullptr);
        __m256 h = _mm256_loadu_ps(ht + i);
        const __m256 sg = surrogate_ps<SG>(k, _mm256_sub_ps(h, k.vth));
        const __m256 dvdh = dv_dh256(hard, detach, k, h, sg);
        _mm256_storeu_ps(g + i, bwd_step(k, _mm256_loadu_ps(g + i), sg, dvdh, g_spk, g_vlast, g_mem, gx, off + i,
                                         a0 + i, t == steps - 1, st));
      }
      if (vec < len) recompute_grad_lanes<float>(p, ht, g_spk, g_vlast, g_mem, gx, g, t, steps, N, a0, vec, len);
    }
    if (gv0) std::memcpy(gv0 + a0, g, len * sizeof(float));
  }
}

// The short-sequence walks (see kRegisterSteps below) on AVX2, where 16 registers hold
// the state of T <= kRegisterStepsAvx2 steps of 8 (backward) or 16 (forward) neurons.
// Against the blocked AVX2 walks (SNNOPS_CPU_ISA=avx2 on the AVX-512 machine, two
// threads, interleaved): lif-T4 forward 0.85-0.87x, ATan backward 1.00x (its divisions
// set the pace), ATan forward+backward 0.85x (one thread 0.81x), T = 2 0.64x.
constexpr int64_t kRegisterStepsAvx2 = 4;

template <int S>
SNN_AVX2 void fwd_regs_avx2(const LifParams& p, const float* x, const float* v0, float* spk, float* v_last,
                            float* membrane, uint8_t* saved, uint8_t* flat, int64_t N, int64_t n0, int64_t n1) {
  const VecConsts k = make_consts(p);
  const int64_t words = ceil_div(N, 32);
  const bool st = p.stream;
  int64_t i = n0;
  for (; i + 16 <= n1; i += 16) {
    __m256 v[2];
    for (int h2 = 0; h2 < 2; ++h2) v[h2] = v0 ? _mm256_loadu_ps(v0 + i + 8 * h2) : _mm256_setzero_ps();
    for (int t = 0; t < S; ++t) {
      uint32_t win = 0, fired = 0;
      for (int h2 = 0; h2 < 2; ++h2) {
        const int64_t off = t * N + i + 8 * h2;
        const __m256 h = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(v[h2], k.lam), _mm256_mul_ps(_mm256_loadu_ps(x + off), k.c)), k.b);
        const __m256 m = _mm256_cmp_ps(h, k.vth, _CMP_GE_OQ);
        store_out(st, spk + off, _mm256_and_ps(m, k.one));
        v[h2] = p.hard ? _mm256_blendv_ps(h, k.vr, m) : _mm256_sub_ps(h, _mm256_and_ps(m, k.vth));
        if (membrane) store_out(st, membrane + off, v[h2]);
        if (saved) {
          const __m256 w = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(h, k.vth)), k.half, _CMP_LT_OQ);
          win |= (uint32_t)_mm256_movemask_ps(w) << (8 * h2);
        }
        fired |= (uint32_t)_mm256_movemask_ps(m) << (8 * h2);
      }
      if (saved) {
        store_bits16(plane_row(saved, 0, t, S, words), i, win);
        if (p.hard) store_bits16(plane_row(saved, 1, t, S, words), i, fired);
      }
      if (flat) store_bits16(plane_row(flat, 0, t, S, words), i, fired);
    }
    for (int h2 = 0; h2 < 2; ++h2) _mm256_storeu_ps(v_last + i + 8 * h2, v[h2]);
  }
  if (i < n1) fwd_generic<float>(p, x, v0, spk, v_last, membrane, saved, flat, S, N, i, n1);
}

template <int S, int SG>
SNN_AVX2 void bwd_recompute_regs_avx2(const LifParams& p, const float* x, const float* v0, const float* g_spk,
                                      const float* g_vlast, const float* g_mem, float* gx, float* gv0, int64_t N,
                                      int64_t n0, int64_t n1) {
  const VecConsts k = make_consts(p);
  const bool hard = p.hard, detach = p.detach, st = p.stream;
  int64_t i = n0;
  for (; i + 8 <= n1; i += 8) {
    __m256 v = v0 ? _mm256_loadu_ps(v0 + i) : _mm256_setzero_ps();
    __m256 h[S];
    for (int t = 0; t < S; ++t) {
      h[t] = _mm256_add_ps(
          _mm256_add_ps(_mm256_mul_ps(v, k.lam), _mm256_mul_ps(_mm256_loadu_ps(x + t * N + i), k.c)), k.b);
      const __m256 m = _mm256_cmp_ps(h[t], k.vth, _CMP_GE_OQ);
      v = hard ? _mm256_blendv_ps(h[t], k.vr, m) : _mm256_sub_ps(h[t], _mm256_and_ps(m, k.vth));
    }
    __m256 g = _mm256_setzero_ps();
    for (int t = S - 1; t >= 0; --t) {
      const __m256 sg = surrogate_ps<SG>(k, _mm256_sub_ps(h[t], k.vth));
      const __m256 dvdh = dv_dh256(hard, detach, k, h[t], sg);
      g = bwd_step(k, g, sg, dvdh, g_spk, g_vlast, g_mem, gx, t * N + i, i, t == S - 1, st);
    }
    if (gv0) _mm256_storeu_ps(gv0 + i, g);
  }
  if (i < n1) bwd_recompute_generic<float>(p, x, v0, g_spk, g_vlast, g_mem, gx, gv0, S, N, i, n1);
}

// ---------------------------------------------------------------- AVX-512 (float32)
// 16 neurons per vector, with the comparisons landing in mask registers that are stored
// as the saved bits directly (no movemask / bit shuffles): about half the instructions of
// the AVX2 loop, which is not bandwidth-bound at T = 4. All of them walk a block a chunk
// of steps at a time (kChunkSteps); of the AVX2 kernels only the forward does.
SNN_AVX512 static inline void store_out(bool stream, float* a, __m512 v) {
  if (stream) _mm512_stream_ps(a, v);
  else _mm512_storeu_ps(a, v);
}

struct Vec512 {
  __m512 lam, c, b, vth, vr, half, one, inv_a;
};

SNN_AVX512 static inline Vec512 make_consts512(const LifParams& p) {
  return {_mm512_set1_ps((float)p.decay), _mm512_set1_ps((float)p.input_scale), _mm512_set1_ps((float)p.bias),
          _mm512_set1_ps((float)p.v_threshold), _mm512_set1_ps((float)p.v_reset),
          _mm512_set1_ps((float)(p.alpha / 2)), _mm512_set1_ps(1.0f), _mm512_set1_ps(1.0f / (float)p.alpha)};
}

// Up to this many timesteps the AVX-512 forward and recompute backward walk each vector of
// 16 neurons through all its steps with the state in registers (fwd_regs_avx512,
// bwd_recompute_regs_avx512); longer sequences walk blocks in chunks of steps (below).
// AMD EPYC (Zen 4), two threads, against the chunked walks: T = 4 forward 0.72-0.82x the
// time, ATan forward+backward 0.815x; T = 5 ATan forward+backward 0.80x, TT-SNN 0.96x;
// T = 6 TT-SNN 1.09x (its 2T rows of saved bits too many streams), ATan 0.98x; T = 8
// forward 1.35-1.66x, forward+backward 1.18-1.24x.
constexpr int64_t kRegisterSteps = 5;

// One chunk of S steps (rows[0..S), built at neuron a0) of the forward over len neurons:
// the membranes from vin (zero when null) through the chunk to vout, which may be vin.
template <int S>
SNN_AVX512 static inline void fwd_chunk_avx512(const LifParams& p, const Vec512 k, const FwdRow* rows,
                                               const float* vin, float* vout, int64_t a0, int64_t len) {
  const int64_t vec = len / 16 * 16;
  const bool st = p.stream;
  for (int64_t i = 0; i < vec; i += 16) {
    __m512 vv = vin ? _mm512_loadu_ps(vin + i) : _mm512_setzero_ps();
    for (int s = 0; s < S; ++s) {
      const FwdRow& r = rows[s];
      const __m512 h =
          _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(vv, k.lam), _mm512_mul_ps(_mm512_loadu_ps(r.x + i), k.c)), k.b);
      const __mmask16 m = _mm512_cmp_ps_mask(h, k.vth, _CMP_GE_OQ);
      store_out(st, r.spk + i, _mm512_maskz_mov_ps(m, k.one));
      vv = p.hard ? _mm512_mask_mov_ps(h, m, k.vr) : _mm512_mask_sub_ps(h, m, h, k.vth);
      if (r.mem) store_out(st, r.mem + i, vv);
      if (r.win) {
        const __mmask16 w = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(h, k.vth)), k.half, _CMP_LT_OQ);
        store_bits16(r.win, a0 + i, (uint32_t)w);
        if (r.fired) store_bits16(r.fired, a0 + i, (uint32_t)m);
      }
      if (r.flat) store_bits16(r.flat, a0 + i, (uint32_t)m);
    }
    _mm512_storeu_ps(vout + i, vv);
  }
  if (vec < len) {
    for (int64_t j = vec; j < len; ++j) vout[j] = vin ? vin[j] : 0.0f;
    for (int s = 0; s < S; ++s) {
      const FwdRow& r = rows[s];
      fwd_lanes<float>(p, r.x, r.spk, r.mem, vout, vec, len, r.win, r.fired, a0, r.flat);
    }
  }
}

SNN_AVX512 void fwd_avx512(const LifParams& p, const float* x, const float* v0, float* spk, float* v_last,
                           float* membrane, uint8_t* saved, uint8_t* flat, int64_t steps, int64_t N, int64_t n0,
                           int64_t n1) {
  const Vec512 k = make_consts512(p);
  alignas(64) float v[kChunkBlock];
  for (int64_t a0 = n0; a0 < n1; a0 += kChunkBlock) {
    const int64_t len = std::min(kChunkBlock, n1 - a0);
    if (v0) std::memcpy(v, v0 + a0, len * sizeof(float));
    else std::memset(v, 0, len * sizeof(float));
    for (int64_t t0 = 0; t0 < steps; t0 += kChunkSteps) {
      FwdRow rows[kChunkSteps];
      const int64_t n = std::min(kChunkSteps, steps - t0);
      for (int64_t s = 0; s < n; ++s) rows[s] = fwd_row(p, x, spk, membrane, saved, flat, t0 + s, steps, N, a0);
      with_steps<kChunkSteps>(n, [&](auto S) { fwd_chunk_avx512<S()>(p, k, rows, v, v, a0, len); });
    }
    std::memcpy(v_last + a0, v, len * sizeof(float));
  }
}

// The forward for T <= kRegisterSteps: one chunk of all S steps over the thread's range,
// the membrane in a register from v0 to v_last.
template <int S>
SNN_AVX512 void fwd_regs_avx512(const LifParams& p, const float* x, const float* v0, float* spk, float* v_last,
                                float* membrane, uint8_t* saved, uint8_t* flat, int64_t N, int64_t n0, int64_t n1) {
  FwdRow rows[S];
  for (int t = 0; t < S; ++t) rows[t] = fwd_row(p, x, spk, membrane, saved, flat, t, S, N, n0);
  fwd_chunk_avx512<S>(p, make_consts512(p), rows, v0 ? v0 + n0 : nullptr, v_last + n0, n0, n1 - n0);
}

// One chunk of S steps of the bits backward, time running down from rows[0]; the carried
// gradient in a register through the chunk (see kChunkSteps).
template <int S>
SNN_AVX512 static inline void bwd_bits_chunk_avx512(const LifParams& p, const Vec512 k, const BwdRow* rows,
                                                    int64_t t_hi, const float* g_spk, const float* g_vlast,
                                                    const float* g_mem, float* gx, float* g, int64_t steps,
                                                    int64_t N, int64_t a0, int64_t len) {
  const int64_t vec = len / 16 * 16;
  const bool has_last = g_vlast && t_hi == steps - 1, st = p.stream;
  for (int64_t i = 0; i < vec; i += 16) {
    __m512 carried = _mm512_load_ps(g + i);
    for (int s = 0; s < S; ++s) {
      const BwdRow& r = rows[s];
      const __mmask16 win = (__mmask16)load_bits16(r.win, a0 + i);
      const __mmask16 fired = r.fired ? (__mmask16)load_bits16(r.fired, a0 + i) : (__mmask16)0;
      // The AVX2 kernel's arithmetic, in its order (bwd_step): the same rounding.
      __m512 gv = carried;
      if (has_last && s == 0) gv = _mm512_add_ps(gv, _mm512_loadu_ps(g_vlast + a0 + i));
      if (g_mem) gv = _mm512_add_ps(gv, _mm512_loadu_ps(g_mem + r.off + i));
      __m512 gh = _mm512_mul_ps(gv, _mm512_maskz_mov_ps((__mmask16)~fired, k.one));
      if (g_spk)
        gh = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(g_spk + r.off + i), _mm512_maskz_mov_ps(win, k.inv_a)), gh);
      store_out(st, gx + r.off + i, _mm512_mul_ps(gh, k.c));
      carried = _mm512_mul_ps(gh, k.lam);
    }
    _mm512_store_ps(g + i, carried);
  }
  if (vec < len)
    for (int s = 0; s < S; ++s)
      bwd_bits_lanes<float>(p, g_spk, g_vlast, g_mem, rows[s].win, rows[s].fired, gx, g, t_hi - s, steps, N, a0, vec,
                            len);
}

SNN_AVX512 void bwd_bits_avx512(const LifParams& p, const float* g_spk, const float* g_vlast, const float* g_mem,
                                const uint8_t* saved, float* gx, float* gv0, int64_t steps, int64_t N, int64_t n0,
                                int64_t n1) {
  const Vec512 k = make_consts512(p);
  alignas(64) float g[kChunkBlock];
  for (int64_t a0 = n0; a0 < n1; a0 += kChunkBlock) {
    const int64_t len = std::min(kChunkBlock, n1 - a0);
    std::memset(g, 0, len * sizeof(float));
    for (int64_t t_hi = steps - 1; t_hi >= 0; t_hi -= kChunkSteps) {
      BwdRow rows[kChunkSteps];
      const int64_t n = std::min(kChunkSteps, t_hi + 1);
      for (int64_t s = 0; s < n; ++s) rows[s] = bwd_row(p, saved, t_hi - s, steps, N, a0, n1);
      with_steps<kChunkSteps>(n, [&](auto S) {
        bwd_bits_chunk_avx512<S()>(p, k, rows, t_hi, g_spk, g_vlast, g_mem, gx, g, steps, N, a0, len);
      });
    }
    if (gv0) std::memcpy(gv0 + a0, g, len * sizeof(float));
  }
}
// The recompute backward (smooth surrogates, or a reset kept in the graph): the
// AVX2 kernel's walk and arithmetic 16 neurons at a time. The surrogate is the AVX2
// code's operations in its order on all sixteen lanes (the same results, lane for lane,
// as that code run on each 256-bit half, for every surrogate). Against running it on both
// 256-bit halves, backward alone, two threads: Sigmoid 0.70x the time at lif-T4 and
// 0.83x at lif-T16, Dspike 0.83x at lif-T16 (their exp is instructions, not memory);
// the one-division surrogates (ATan, fast sigmoid, triangle) within noise.
SNN_INTRINSICS_UNINIT_BEGIN
// The surrogates' constants on all sixteen lanes (the AVX2 ones, widened), held by value,
// and the kind a template argument: the kernels' stores are intrinsics that may alias
// anything, so constants read through a reference, the kind and the reset flags from
// LifParams were reloaded, re-broadcast and switched on for every vector. Backward alone,
// two threads, interleaved against that code (same gradients): ATan 0.87-0.90x the time
// at T = 4 (register walk), 0.96-0.97x at T = 16; Dspike 0.90x at T = 4, Sigmoid 0.955x
// at T = 16. The AVX2 kernels (SNNOPS_CPU_ISA=avx2): ATan 0.78x at T = 4, 0.86x at
// T = 16, Sigmoid 0.81x at T = 4.
struct Sg512 {
  __m512 a, half, inv_a, vth, one, atan_k, atan_h, dk4;
};
SNN_AVX512 static inline __m512 widen(__m256 v) { return _mm512_broadcast_f32x8(v); }
SNN_AVX512 static inline Sg512 make_sg512(const VecConsts& k) {
  return {widen(k.a), widen(k.half), widen(k.inv_a), widen(k.vth), widen(k.one), widen(k.atan_k), widen(k.atan_h),
          widen(k.dk4)};
}
template <int SG>
SNN_AVX512 static inline __m512 surrogate512(const Sg512 k, __m512 u) {
  const __m512 au = _mm512_andnot_ps(_mm512_set1_ps(-0.0f), u);
  if constexpr (SG == kRectangular) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(au, k.half, _CMP_LT_OQ), k.inv_a);
  } else if constexpr (SG == kTriangle) {
    const __m512 r = _mm512_sub_ps(k.one, _mm512_div_ps(au, k.vth));
    return _mm512_mul_ps(k.a, _mm512_max_ps(r, _mm512_setzero_ps()));
  } else if constexpr (SG == kATan) {
    const __m512 z = _mm512_mul_ps(k.atan_k, u);
    return _mm512_div_ps(k.atan_h, _mm512_fmadd_ps(z, z, k.one));
  } else if constexpr (SG == kSigmoid) {
    const __m512 e = exp_nonpos_ps512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), k.a), au));
    const __m512 d = _mm512_add_ps(k.one, e);
    return _mm512_div_ps(_mm512_mul_ps(k.a, e), _mm512_mul_ps(d, d));
  } else if constexpr (SG == kSuperSpike) {
    const __m512 d = _mm512_fmadd_ps(k.a, au, k.one);
    return _mm512_div_ps(k.one, _mm512_mul_ps(d, d));
  } else {
    static_assert(SG == kDspike, "unknown surrogate");
    const __m512 e = exp_nonpos_ps512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), _mm512_mul_ps(k.a, au)));
    const __m512 d = _mm512_add_ps(k.one, e);
    const __m512 r = _mm512_div_ps(_mm512_mul_ps(k.dk4, e), _mm512_mul_ps(d, d));
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(au, _mm512_set1_ps(0.5f), _CMP_LT_OQ), r);
  }
}

// dv/dh at a recompute step (the portable dv_dh), the reset flags as locals. With
// Plain (v_reset = 0), d + (0 - h) * sg is computed as d - h * sg: the same value bit for
// bit (negation is exact), one operation fewer.
template <bool Plain = false>
SNN_AVX512 static inline __m512 dv_dh512(bool hard, bool detach, const Vec512 q, __m512 h, __m512 sg) {
  if (hard) {
    const __m512 d = _mm512_maskz_mov_ps((__mmask16)~_mm512_cmp_ps_mask(h, q.vth, _CMP_GE_OQ), q.one);
    if (detach) return d;
    return Plain ? _mm512_sub_ps(d, _mm512_mul_ps(h, sg)) : _mm512_add_ps(d, _mm512_mul_ps(_mm512_sub_ps(q.vr, h), sg));
  }
  return detach ? q.one : _mm512_sub_ps(q.one, _mm512_mul_ps(q.vth, sg));
}
SNN_INTRINSICS_UNINIT_END

// h of 16 neurons from their membrane v and their input at xt, in the reference's
// rounding order (Plain: see ckpt_chunk512), and the membrane after the reset.
template <bool Plain>
SNN_AVX512 static inline __m512 h_of512(const Vec512 q, __m512 v, const float* xt) {
  const __m512 xv = _mm512_loadu_ps(xt);
  return Plain ? _mm512_add_ps(_mm512_mul_ps(v, q.lam), xv)
               : _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(v, q.lam), _mm512_mul_ps(xv, q.c)), q.b);
}
SNN_AVX512 static inline __m512 after_reset512(bool hard, const Vec512 q, __m512 h) {
  const __mmask16 m = _mm512_cmp_ps_mask(h, q.vth, _CMP_GE_OQ);
  return hard ? _mm512_mask_mov_ps(h, m, q.vr) : _mm512_mask_sub_ps(h, m, h, q.vth);
}

// The recompute backward for T <= kRegisterSteps: each vector of 16 neurons keeps its
// whole h history in registers, rebuilt from x and run backwards in one visit; no history
// buffer, and the 3T rows it streams are few enough for the hardware prefetcher. Against
// the one-step blocked walk on Intel (ATan backward alone, two threads, interleaved):
// lif-T4 0.84-0.87x the time, T = 2 0.79x, T = 8 0.96x, T = 16 1.03x.
template <int S, int SG>
SNN_AVX512 void bwd_recompute_regs_avx512(const LifParams& p, const float* x, const float* v0, const float* g_spk,
                                          const float* g_vlast, const float* g_mem, float* gx, float* gv0,
                                          int64_t N, int64_t n0, int64_t n1) {
  const Sg512 k = make_sg512(make_consts(p));
  const Vec512 q = make_consts512(p);
  const bool hard = p.hard, detach = p.detach, st = p.stream;
  int64_t i = n0;
  for (; i + 16 <= n1; i += 16) {
    __m512 v = v0 ? _mm512_loadu_ps(v0 + i) : _mm512_setzero_ps();
    __m512 h[S];
    for (int t = 0; t < S; ++t) {
      h[t] = h_of512<false>(q, v, x + t * N + i);
      v = after_reset512(hard, q, h[t]);
    }
    __m512 g = _mm512_setzero_ps();
    for (int t = S - 1; t >= 0; --t) {
      const int64_t off = t * N + i;
      const __m512 sg = surrogate512<SG>(k, _mm512_sub_ps(h[t], q.vth));
      const __m512 dvdh = dv_dh512(hard, detach, q, h[t], sg);
      __m512 gv = g;
      if (g_vlast && t == S - 1) gv = _mm512_add_ps(gv, _mm512_loadu_ps(g_vlast + i));
      if (g_mem) gv = _mm512_add_ps(gv, _mm512_loadu_ps(g_mem + off));
      __m512 gh = _mm512_mul_ps(gv, dvdh);
      if (g_spk) gh = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(g_spk + off), sg), gh);
      store_out(st, gx + off, _mm512_mul_ps(gh, q.c));
      g = _mm512_mul_ps(gh, q.lam);
    }
    if (gv0) _mm512_storeu_ps(gv0 + i, g);
  }
  if (i < n1) bwd_recompute_generic<float>(p, x, v0, g_spk, g_vlast, g_mem, gx, gv0, S, N, i, n1);
}

// Chunk c of the rebuild over a block's vec lanes: from the membrane at its start (ckpt
// row c) through S steps, to the next row. Plain: input_scale 1 and bias 0, so
// h = v * decay + x (the dropped * 1 and + 0 change no value but the sign of a zero h,
// which no later result sees); 1.5-2% of the backward's time on Intel.
template <int S, bool Plain, bool Hard>
SNN_AVX512 static inline void ckpt_chunk512(const Vec512 q, const float* x, float* ckpt, int64_t t0, int64_t N,
                                            int64_t blk, int64_t a0, int64_t vec) {
  const float* c0 = ckpt + (t0 / kChunkSteps) * blk;
  float* c1 = ckpt + (t0 / kChunkSteps + 1) * blk;
  for (int64_t i = 0; i < vec; i += 16) {
    __m512 v = _mm512_load_ps(c0 + i);
    for (int s = 0; s < S; ++s) v = after_reset512(Hard, q, h_of512<Plain>(q, v, x + (t0 + s) * N + a0 + i));
    _mm512_store_ps(c1 + i, v);
  }
}

// The gradient pass over the chunk of S steps from t0, from its checkpoint row ckpt.
template <int S, int SG, bool Plain>
SNN_AVX512 static inline void ckpt_grad_chunk512(const LifParams& p, const Sg512 k, const Vec512 q, const float* x,
                                                 const float* ckpt, int64_t t0, const float* g_spk,
                                                 const float* g_vlast, const float* g_mem, float* gx, float* g,
                                                 int64_t steps, int64_t N, int64_t a0, int64_t vec) {
  const bool hard = p.hard, detach = p.detach, st = p.stream;
  const bool has_last = g_vlast && t0 + S == steps;
  for (int64_t i = 0; i < vec; i += 16) {
    __m512 v = _mm512_load_ps(ckpt + i);
    __m512 h[S];
    for (int s = 0; s < S; ++s) {
      h[s] = h_of512<Plain>(q, v, x + (t0 + s) * N + a0 + i);
      v = after_reset512(hard, q, h[s]);
    }
    __m512 carried = _mm512_load_ps(g + i);
    for (int s = S - 1; s >= 0; --s) {
      const int64_t off = (t0 + s) * N + a0 + i;
      const __m512 sg = surrogate512<SG>(k, _mm512_sub_ps(h[s], q.vth));
      const __m512 dvdh = dv_dh512<Plain>(hard, detach, q, h[s], sg);
      // bwd_step's arithmetic, in its order (Plain: gh * 1 left out)
      __m512 gv = carried;
      if (has_last && s == S - 1) gv = _mm512_add_ps(gv, _mm512_loadu_ps(g_vlast + a0 + i));
      if (g_mem) gv = _mm512_add_ps(gv, _mm512_loadu_ps(g_mem + off));
      __m512 gh = _mm512_mul_ps(gv, dvdh);
      if (g_spk) gh = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(g_spk + off), sg), gh);
      store_out(st, gx + off, Plain ? gh : _mm512_mul_ps(gh, q.c));
      carried = _mm512_mul_ps(gh, q.lam);
    }
    _mm512_store_ps(g + i, carried);
  }
}

// The recompute backward for T > kRegisterSteps, checkpointed: a first pass over a block
// rebuilds the membrane from x chunk by chunk (kChunkSteps) and keeps only its value at
// the start of each chunk; the gradient pass then takes the chunks from the last, rebuilds
// a chunk's h in registers from its checkpoint and the block's x (read again, now from
// L2), and runs the chunk backwards with the carried gradient in a register. No h history
// is stored: the earlier walk wrote h for every step into an L2 buffer and carried the
// gradient through an L1 one. lif-T16 ATan backward alone 0.70-0.78x that walk's time,
// forward+backward 0.81-0.88x; T = 32 and T = 100 0.77x and 0.81x (AMD EPYC Zen 4, two
// threads, interleaved).
template <int SG, bool Plain>
SNN_AVX512 void bwd_recompute_avx512(const LifParams& p, const float* x, const float* v0, const float* g_spk,
                                     const float* g_vlast, const float* g_mem, float* gx, float* gv0, int64_t steps,
                                     int64_t N, int64_t n0, int64_t n1) {
  const Sg512 k = make_sg512(make_consts(p));
  const Vec512 q = make_consts512(p);
  // The block's x (steps x blk floats, at most 1 MiB) is read again from L2; up to 4096
  // neurons (lif-T16 backward against the history walk in the same runs: 1.29-1.42x as
  // fast with 4096, 1.04-1.39x with 1024 and 2048).
  const int64_t blk = std::clamp<int64_t>((int64_t(1) << 20) / (steps * 4) / 16 * 16, 512, 4096);
  const int64_t chunks = ceil_div(steps, kChunkSteps);
  AlignedScratch scratch((chunks + 1) * blk);
  float* ckpt = scratch.get();
  float* g = ckpt + chunks * blk;
  for (int64_t a0 = n0; a0 < n1; a0 += blk) {
    const int64_t len = std::min(blk, n1 - a0);
    const int64_t vec = len / 16 * 16;
    if (v0) std::memcpy(ckpt, v0 + a0, vec * sizeof(float));
    else std::memset(ckpt, 0, vec * sizeof(float));
    for (int64_t c = 0; c + 1 < chunks; ++c)
      with_steps<kChunkSteps>(std::min(kChunkSteps, steps - c * kChunkSteps), [&](auto S) {
        if (p.hard) ckpt_chunk512<S(), Plain, true>(q, x, ckpt, c * kChunkSteps, N, blk, a0, vec);
        else ckpt_chunk512<S(), Plain, false>(q, x, ckpt, c * kChunkSteps, N, blk, a0, vec);
      });
    std::memset(g, 0, vec * sizeof(float));
    for (int64_t c = chunks - 1; c >= 0; --c) {
      const int64_t t0 = c * kChunkSteps;
      with_steps<kChunkSteps>(std::min(kChunkSteps, steps - t0), [&](auto S) {
        ckpt_grad_chunk512<S(), SG, Plain>(p, k, q, x, ckpt + c * blk, t0, g_spk, g_vlast, g_mem, gx, g, steps, N,
                                           a0, vec);
      });
    }
    if (gv0) std::memcpy(gv0 + a0, g, vec * sizeof(float));
    if (vec < len)
      bwd_recompute_generic<float>(p, x, v0, g_spk, g_vlast, g_mem, gx, gv0, steps, N, a0 + vec, a0 + len);
  }
}
#endif  // SNN_HAVE_AVX2

// ---------------------------------------------------------------- packed spikes
// Pack the spikes written by the forward along feature dim `dim` (1..ndim-1) into the
// layout of cpu/spike_pack.h: [T, outer..., inner..., ceil(K/32)], a pass of its own in
// parallel over (t, outer) rows. Only where the fused packing below cannot run (float64,
// or saved-bit groups that straddle its units). The spikes are 0/1 by construction, so
// no value can fail.
template <typename T>
void pack_spikes_into(const T* spk, int64_t rows, int64_t K, int64_t inner, uint32_t* out) {
  const int64_t W = spike_pack::packed_words(K);
  const int isa = use_avx512() ? 2 : use_avx2() ? 1 : 0;
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * inner)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* src = spk + r * K * inner;
      uint32_t* dst = out + r * inner * W;
      if (inner > 1) {
        spike_pack::pack_columns_isa<T>(isa, src, K, inner, inner, dst, W);
        continue;
      }
#if SNN_HAVE_AVX2
      if constexpr (std::is_same_v<T, float>) {
        if (isa >= 1) {
          spike_pack::pack_row_f32(src, K, dst);
          continue;
        }
      }
#endif
      spike_pack::pack_row<T>(src, K, dst);
    }
  });
}

// The packed output along a feature dim that is not last, fused into the forward, in
// units of 32 features of one outer index: unit u = (o, w) covers the contiguous neurons
// [o K inner + 32 w inner, o K inner + min(K, 32 w + 32) inner) of each step. Against
// the separate pass (two threads, interleaved): [4, 32, 128, 16, 16] packed along the
// channels 0.81x the forward's time (0.86x with bits saved for backward), [16, 32, 128,
// 8, 8] 0.84x, 32x32 images 0.81x; AVX2 0.84x and 0.95x.
struct ColumnPack {
  int64_t K, inner, outer;
  int64_t words() const { return spike_pack::packed_words(K); }
  int64_t units() const { return outer * words(); }
  int64_t start(int64_t u) const { return (u / words()) * K * inner + (u % words()) * 32 * inner; }
  int64_t end(int64_t u) const {
    return (u / words()) * K * inner + std::min(K, (u % words() + 1) * 32) * inner;
  }
  // Packs unit u of step t (spk: that step's spikes) into word u % words() of its positions.
  void pack(const float* spk, int64_t t, int64_t u, int isa, uint32_t* out) const {
    const int64_t o = u / words(), w = u % words(), k = std::min<int64_t>(32, K - 32 * w);
    spike_pack::pack_columns_isa<float>(isa, spk + start(u), k, inner, inner,
                                        out + (t * outer + o) * inner * words() + w, words());
  }
};

std::vector<int64_t> packed_shape(at::IntArrayRef shape, int64_t dim) {
  std::vector<int64_t> out;
  for (int64_t d = 0; d < (int64_t)shape.size(); ++d)
    if (d != dim) out.push_back(shape[d]);
  out.push_back(spike_pack::packed_words(shape[dim]));
  return out;
}

// ---------------------------------------------------------------- ATen entry points
LifParams make_params(double decay, double input_scale, double v_threshold,
                      std::optional<double> v_reset, int64_t surrogate, double alpha,
                      bool detach_reset) {
  TORCH_CHECK(decay >= 0.0 && decay <= 1.0, "snnops.lif: decay must be in [0, 1], got ", decay);
  TORCH_CHECK(surrogate >= kRectangular && surrogate <= kDspike,
              "snnops.lif: unknown surrogate id ", surrogate);
  TORCH_CHECK(alpha > 0.0, "snnops.lif: the surrogate parameter must be positive, got ", alpha);
  TORCH_CHECK(surrogate != kTriangle || v_threshold > 0.0,
              "snnops.lif: the triangle surrogate needs v_threshold > 0, got ", v_threshold);
  LifParams p;
  p.decay = decay;
  p.input_scale = input_scale;
  p.v_threshold = v_threshold;
  p.hard = v_reset.has_value();
  p.v_reset = v_reset.value_or(0.0);
  p.bias = (1.0 - decay) * p.v_reset;
  p.detach = detach_reset;
  p.surrogate = surrogate;
  p.alpha = alpha;
  p.dspike_k = alpha / (2.0 * std::tanh(alpha / 2.0));
  return p;
}

bool saves_bits(const LifParams& p) { return p.surrogate == kRectangular && p.detach; }
int64_t bit_planes(const LifParams& p) { return p.hard ? 2 : 1; }

at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kDouble) ? at::kDouble : at::kFloat;
}

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, "snnops.lif: x_seq needs a leading time dimension [T, ...], got a 0-d tensor");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "snnops.lif: x_seq must be a floating-point tensor, got ", x.scalar_type());
}

// Outputs of 8 MiB and more (spikes and membrane in the forward, grad_x in the backward)
// are written with streaming stores, which skip reading each line before writing it, as
// the spike GEMM and TT conv outputs of that size are: the next op does not find them in
// cache anyway. Against plain stores (lif-T4 shape over the batch, AMD EPYC Zen 4, two
// threads, interleaved), with a consumer reading the spikes and grad_x right after:
// 2 MiB 1.13-1.22x the time, 4 MiB 0.94-0.99x, 6 MiB 0.87-0.90x, 8-32 MiB 0.81-0.93x
// (AVX2 0.77-0.92x).
// Rows need 64-byte alignment: N a multiple of 16 and a 64-byte aligned tensor.

bool streams(const at::Tensor& out, int64_t N) {
  return (double)out.numel() * out.element_size() >= kStreamOutputBytes && N % 16 == 0 &&
         reinterpret_cast<uintptr_t>(out.data_ptr()) % 64 == 0;
}

// A thread's streaming stores are weakly ordered: fence them before its work is done.
inline void end_streaming(bool stream) {
#if SNN_HAVE_AVX2
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

// Neurons per parallel task: whole 64-neuron groups (so no two threads write one
// saved word), enough work per task to amortize the thread wake-up.
int64_t group_grain(int64_t steps) { return std::max<int64_t>(1, 16384 / (64 * std::max<int64_t>(steps, 1))); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_fwd_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& v0_in, double decay,
    double input_scale, double v_threshold, std::optional<double> v_reset, int64_t surrogate,
    double alpha, bool detach_reset, bool return_membrane, bool save_for_backward,
    std::optional<int64_t> pack_dim) {
  check_input(x_in);
  if (pack_dim.has_value()) {
    TORCH_CHECK(*pack_dim >= 1 && *pack_dim < x_in.dim(),
                "snnops.lif: pack_dim must name a non-time dimension (1..", x_in.dim() - 1, "), got ", *pack_dim);
  }
  LifParams p = make_params(decay, input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset);
  const auto out_type = x_in.scalar_type();
  const auto ct = compute_type(out_type);
  const int64_t steps = x_in.size(0);
  const int64_t N = steps > 0 ? x_in.numel() / steps : c10::multiply_integers(x_in.sizes().slice(1));
  at::Tensor x = cached_contiguous(x_in, ct);
  at::Tensor v0;
  if (v0_in.has_value() && v0_in->defined()) {
    TORCH_CHECK(v0_in->sizes() == x_in.sizes().slice(1), "snnops.lif: v must have the shape of one timestep ",
                x_in.sizes().slice(1), ", got ", v0_in->sizes());
    v0 = v0_in->to(ct).contiguous();
  }
  at::Tensor spikes = cached_empty(x.sizes(), x.options());
  at::Tensor v_last = cached_empty(x_in.sizes().slice(1), x.options());
  at::Tensor membrane = return_membrane ? cached_empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  const bool bits = save_for_backward && saves_bits(p);
  const int64_t words = ceil_div(N, 32);
  at::Tensor saved = bits ? cached_empty({bit_planes(p), steps, words}, x.options().dtype(at::kInt))
                          : at::empty({0}, x.options().dtype(at::kInt));
  // The kernels write only the bits of real neurons: clear the padding of the last word.
  if (bits && N % 32 != 0) saved.select(2, words - 1).zero_();
  // Packing along the last dim, whose size is a multiple of 32: the packed words are the
  // spikes' bits in flat order, one row of N / 32 words per step, so the kernels write
  // them as they fire (measured: a separate packing pass added 40% to the forward).
  at::Tensor packed;
  const bool flat_pack = pack_dim.has_value() && *pack_dim == x.dim() - 1 && x.size(-1) % 32 == 0;
  if (pack_dim.has_value()) packed = cached_empty(packed_shape(x.sizes(), *pack_dim), x.options().dtype(at::kInt));
  else packed = at::empty({0}, x.options().dtype(at::kInt));
  uint8_t* fp = flat_pack && packed.numel() > 0 ? reinterpret_cast<uint8_t*>(packed.data_ptr<int32_t>()) : nullptr;
  // Packing along another dim (float32): fused into the forward when every unit of 32
  // features starts on a whole saved-bit group of 64 neurons (or no bits are saved).
  std::optional<ColumnPack> column_pack;
  if (pack_dim.has_value() && !flat_pack && ct == at::kFloat && packed.numel() > 0) {
    ColumnPack cp{x.size(*pack_dim), c10::multiply_integers(x.sizes().slice(*pack_dim + 1)), 0};
    cp.outer = N / std::max<int64_t>(1, cp.K * cp.inner);
    if (cp.K > 0 && (!bits || ((32 * cp.inner) % 64 == 0 && (cp.K * cp.inner) % 64 == 0))) column_pack = cp;
  }
  if (steps == 0 || N == 0) {
    if (v0.defined()) v_last.copy_(v0); else v_last.zero_();
  } else if (ct == at::kFloat) {
    const float* xp = x.data_ptr<float>();
    const float* vp = v0.defined() ? v0.data_ptr<float>() : nullptr;
    float* sp = spikes.data_ptr<float>();
    float* vl = v_last.data_ptr<float>();
    float* mp = return_membrane ? membrane.data_ptr<float>() : nullptr;
    uint8_t* bp = bits ? reinterpret_cast<uint8_t*>(saved.data_ptr<int32_t>()) : nullptr;
    const bool avx2 = use_avx2(), avx512 = use_avx512();
    // Not when packing along a non-last dim: that reads the spikes back from L2.
    p.stream = (avx2 || avx512) && !column_pack.has_value() && streams(spikes, N) &&
               (!return_membrane || streams(membrane, N));
    auto run = [&](int64_t n0, int64_t n1) {
#if SNN_HAVE_AVX2
      if (avx512) {
        if (steps <= kRegisterSteps)
          with_steps<kRegisterSteps>(steps, [&](auto S) {
            fwd_regs_avx512<S()>(p, xp, vp, sp, vl, mp, bp, fp, N, n0, n1);
          });
        else fwd_avx512(p, xp, vp, sp, vl, mp, bp, fp, steps, N, n0, n1);
        return end_streaming(p.stream);
      }
      if (avx2) {
        if (steps <= kRegisterStepsAvx2)
          with_steps<kRegisterStepsAvx2>(steps, [&](auto S) {
            fwd_regs_avx2<S()>(p, xp, vp, sp, vl, mp, bp, fp, N, n0, n1);
          });
        else fwd_avx2(p, xp, vp, sp, vl, mp, bp, fp, steps, N, n0, n1);
        return end_streaming(p.stream);
      }
#endif
      (void)avx2;
      fwd_generic<float>(p, xp, vp, sp, vl, mp, bp, fp, steps, N, n0, n1);
    };
    if (column_pack.has_value()) {
      const ColumnPack& cp = *column_pack;
      uint32_t* out = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
      const int isa = avx512 ? 2 : avx2 ? 1 : 0;
      // Units of 32 features of one outer index (one packed word per position) are
      // contiguous neurons: run a few units through every step, then pack their spikes
      // while they are still in L2 (at most 512 KiB of them).
      const int64_t unit = 32 * cp.inner, limit = std::max<int64_t>(unit, (int64_t(1) << 17) / steps);
      const int64_t grain = std::max<int64_t>(1, 16384 / (steps * unit));
      at::parallel_for(0, cp.units(), grain, [&](int64_t u0, int64_t u1) {
        for (int64_t a = u0; a < u1;) {
          int64_t b = a + 1;
          while (b < u1 && cp.end(b) - cp.start(a) <= limit) ++b;
          run(cp.start(a), cp.end(b - 1));
          for (int64_t t = 0; t < steps; ++t)
            for (int64_t u = a; u < b; ++u) cp.pack(sp + t * N, t, u, isa, out);
          a = b;
        }
      });
    } else {
      at::parallel_for(0, ceil_div(N, 64), group_grain(steps), [&](int64_t g0, int64_t g1) {
        run(g0 * 64, std::min(N, g1 * 64));
      });
    }
  } else {
    const double* xp = x.data_ptr<double>();
    const double* vp = v0.defined() ? v0.data_ptr<double>() : nullptr;
    double* mp = return_membrane ? membrane.data_ptr<double>() : nullptr;
    uint8_t* bp = bits ? reinterpret_cast<uint8_t*>(saved.data_ptr<int32_t>()) : nullptr;
    double* sp = spikes.data_ptr<double>();
    double* vl = v_last.data_ptr<double>();
    at::parallel_for(0, ceil_div(N, 64), group_grain(steps), [&](int64_t g0, int64_t g1) {
      fwd_generic<double>(p, xp, vp, sp, vl, mp, bp, fp, steps, N, g0 * 64, std::min(N, g1 * 64));
    });
  }
  if (pack_dim.has_value() && !flat_pack && !column_pack.has_value()) {
    const int64_t d = *pack_dim;
    const int64_t K = x.size(d);
    const int64_t inner = c10::multiply_integers(x.sizes().slice(d + 1));
    const int64_t rows = c10::multiply_integers(x.sizes().slice(0, d));
    if (packed.numel() > 0 && K > 0) {
      uint32_t* out = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
      if (ct == at::kFloat) pack_spikes_into<float>(spikes.data_ptr<float>(), rows, K, inner, out);
      else pack_spikes_into<double>(spikes.data_ptr<double>(), rows, K, inner, out);
    }
  }
  if (out_type != ct) {
    spikes = spikes.to(out_type);
    v_last = v_last.to(out_type);
    membrane = membrane.to(out_type);
  }
  return {spikes, v_last, membrane, saved, packed};
}

at::Tensor grad_or_undefined(const std::optional<at::Tensor>& g, at::ScalarType ct) {
  if (!g.has_value() || !g->defined() || g->numel() == 0) return at::Tensor();
  return cached_contiguous(*g, ct);
}

std::tuple<at::Tensor, at::Tensor> lif_bwd_cpu(
    const std::optional<at::Tensor>& grad_spikes_in, const std::optional<at::Tensor>& grad_v_last_in,
    const std::optional<at::Tensor>& grad_membrane_in, const std::optional<at::Tensor>& x_in,
    const std::optional<at::Tensor>& v0_in, const at::Tensor& saved, at::IntArrayRef shape,
    at::ScalarType dtype, bool has_v0, double decay, double input_scale, double v_threshold,
    std::optional<double> v_reset, int64_t surrogate, double alpha, bool detach_reset) {
  LifParams p = make_params(decay, input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset);
  TORCH_CHECK(shape.size() >= 1, "snnops.lif_bwd: shape needs a time dimension");
  const auto ct = compute_type(dtype);
  const int64_t steps = shape[0];
  const int64_t N = c10::multiply_integers(shape.slice(1));
  const bool bits = saves_bits(p);
  at::Tensor gs = grad_or_undefined(grad_spikes_in, ct);
  at::Tensor gvl = grad_or_undefined(grad_v_last_in, ct);
  at::Tensor gm = grad_or_undefined(grad_membrane_in, ct);
  auto opts = at::TensorOptions().dtype(ct).device(at::kCPU);
  at::Tensor gx = cached_empty(shape, opts);
  at::Tensor gv0 = has_v0 ? cached_empty(shape.slice(1), opts) : at::empty({0}, opts);
  at::Tensor x, v0;
  if (bits) {
    TORCH_CHECK(saved.scalar_type() == at::kInt && saved.dim() == 3 && saved.size(0) == bit_planes(p) &&
                    saved.size(1) == steps && saved.size(2) == ceil_div(N, 32),
                "snnops.lif_bwd: saved bits have the wrong layout ", saved.sizes());
  } else {
    TORCH_CHECK(x_in.has_value() && x_in->defined(), "snnops.lif_bwd: this configuration needs x");
    x = cached_contiguous(*x_in, ct);
    if (v0_in.has_value() && v0_in->defined()) v0 = v0_in->to(ct).contiguous();
  }
  if (steps == 0 || N == 0) {
    gv0.zero_();
    if (gvl.defined() && has_v0 && steps == 0) gv0.copy_(gvl);
  } else if (ct == at::kFloat) {
    const float* gsp = gs.defined() ? gs.data_ptr<float>() : nullptr;
    const float* gvp = gvl.defined() ? gvl.data_ptr<float>() : nullptr;
    const float* gmp = gm.defined() ? gm.data_ptr<float>() : nullptr;
    const float* xp = x.defined() ? x.data_ptr<float>() : nullptr;
    const float* vp = v0.defined() ? v0.data_ptr<float>() : nullptr;
    const uint8_t* bp = bits ? reinterpret_cast<const uint8_t*>(saved.data_ptr<int32_t>()) : nullptr;
    float* gxp = gx.data_ptr<float>();
    float* g0p = has_v0 ? gv0.data_ptr<float>() : nullptr;
    const bool avx2 = use_avx2(), avx512 = use_avx512();
    // The papers' form (h = decay * v + x, reset to 0): the AVX-512 recompute backward
    // drops its multiplications by 1 and additions of 0.
    const bool plain = (float)p.input_scale == 1.0f && (float)p.bias == 0.0f && (float)p.v_reset == 0.0f;
    p.stream = (avx2 || avx512) && streams(gx, N);
    at::parallel_for(0, ceil_div(N, 64), group_grain(steps), [&](int64_t g0, int64_t g1) {
      const int64_t n0 = g0 * 64, n1 = std::min(N, g1 * 64);
#if SNN_HAVE_AVX2
      if (avx512) {
        if (bits) bwd_bits_avx512(p, gsp, gvp, gmp, bp, gxp, g0p, steps, N, n0, n1);
        else if (steps <= kRegisterSteps)
          with_surrogate(p, [&](auto SG) {
            with_steps<kRegisterSteps>(steps, [&](auto S) {
              bwd_recompute_regs_avx512<S(), SG()>(p, xp, vp, gsp, gvp, gmp, gxp, g0p, N, n0, n1);
            });
          });
        else
          with_surrogate(p, [&](auto SG) {
            if (plain) bwd_recompute_avx512<SG(), true>(p, xp, vp, gsp, gvp, gmp, gxp, g0p, steps, N, n0, n1);
            else bwd_recompute_avx512<SG(), false>(p, xp, vp, gsp, gvp, gmp, gxp, g0p, steps, N, n0, n1);
          });
        return end_streaming(p.stream);
      }
      if (avx2) {
        if (bits) {
          bwd_bits_avx2(p, gsp, gvp, gmp, bp, gxp, g0p, steps, N, n0, n1);
        } else {
          with_surrogate(p, [&](auto SG) {
            if (steps <= kRegisterStepsAvx2)
              with_steps<kRegisterStepsAvx2>(steps, [&](auto S) {
                bwd_recompute_regs_avx2<S(), SG()>(p, xp, vp, gsp, gvp, gmp, gxp, g0p, N, n0, n1);
              });
            else bwd_recompute_avx2<SG()>(p, xp, vp, gsp, gvp, gmp, gxp, g0p, steps, N, n0, n1);
          });
        }
        return end_streaming(p.stream);
      }
#endif
      (void)avx2;
      if (bits) return bwd_bits_generic<float>(p, gsp, gvp, gmp, bp, gxp, g0p, steps, N, n0, n1);
      bwd_recompute_generic<float>(p, xp, vp, gsp, gvp, gmp, gxp, g0p, steps, N, n0, n1);
    });
  } else {
    const double* gsp = gs.defined() ? gs.data_ptr<double>() : nullptr;
    const double* gvp = gvl.defined() ? gvl.data_ptr<double>() : nullptr;
    const double* gmp = gm.defined() ? gm.data_ptr<double>() : nullptr;
    const double* xp = x.defined() ? x.data_ptr<double>() : nullptr;
    const double* vp = v0.defined() ? v0.data_ptr<double>() : nullptr;
    const uint8_t* bp = bits ? reinterpret_cast<const uint8_t*>(saved.data_ptr<int32_t>()) : nullptr;
    double* gxp = gx.data_ptr<double>();
    double* g0p = has_v0 ? gv0.data_ptr<double>() : nullptr;
    at::parallel_for(0, ceil_div(N, 64), group_grain(steps), [&](int64_t g0, int64_t g1) {
      const int64_t n0 = g0 * 64, n1 = std::min(N, g1 * 64);
      if (bits) return bwd_bits_generic<double>(p, gsp, gvp, gmp, bp, gxp, g0p, steps, N, n0, n1);
      bwd_recompute_generic<double>(p, xp, vp, gsp, gvp, gmp, gxp, g0p, steps, N, n0, n1);
    });
  }
  if (dtype != ct) {
    gx = gx.to(dtype);
    gv0 = gv0.to(dtype);
  }
  return {gx, gv0};
}

}  // namespace

TORCH_LIBRARY_IMPL(snnops, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
}

}  // namespace snnops
