// Fused tensor-train convolutions (CPU): ptt_conv and the TT block after G1.
//
//   ptt_conv:  y = (conv3x1(o, W2) + conv1x3(o, W3)) / 2                 (r -> r)
//   tt_block:  y = G4(ptt(o))  or  G4(G3(G2(o)))  [, 2x2 max-pool]       (o = G1(x))
//              with an HTT schedule, images of half steps are y = G4(o)
//
// Every step is a GEMM over channels-last rows (csrc/cpu/tt_gemm.h). One work unit is
// a band of image rows of one image: its input rows (plus one halo row each side) are
// copied once into a zero-padded channels-last buffer of (rows + 2) x (W + 2) pixels,
// so the 3x1 / 1x3 taps are pixel offsets inside that buffer, and the rank-r
// intermediates (the PTT output, the STT middle maps) never leave the thread's cache:
// the only tensors written are the block's output (and the pool's argmax codes).
//
// The cross of a 3x1 and a 1x3 kernel has 5 distinct taps, not 6: both centre taps
// read the same pixel, so the centre weight is (W2[:, :, 1] + W3[:, :, 1]) / 2 and the
// fused pass does 5/6 of the two convolutions' multiply-adds.
//
// Backward recomputes the PTT / STT intermediates from the saved input o (5r^2 MACs a
// pixel, cheaper than writing and re-reading them), runs G4^T, the transposed taps and
// all weight gradients on the same band while it is in cache, and reduces the weight
// gradients of the threads in a fixed order (deterministic for a given thread count).
//
// tt_conv is the whole layer from bit-packed spikes: G1 runs inside the same band
// loop as the packed spike GEMM (spike_rows_gemm_f32, csrc/cpu/spike_gemm.h), so the
// rank-r map o = G1(s) never leaves the cache either, and the only activation the
// backward needs is the packed input (1 bit per spike): it recomputes o from the
// bits, and G1's own gradients are a dense GEMM (grad of the spikes) and a scatter of
// the rank-r gradient rows over the set bits (grad of G1).
//
// Outputs are channels-last in memory (the GEMMs write one row of channels per pixel).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#include <memory>
#include <vector>

#include "cpu/cached_alloc.h"
#include "cpu/simd.h"
#include "cpu/spike_gemm.h"
#include "cpu/spike_gemm_kernels.h"
#include "cpu/spike_pack.h"
#include "cpu/transpose.h"
#include "cpu/tt_gemm.h"

namespace snnops {
namespace {

using tt::gemm_rows;

// Weights and band scratch on 64-byte boundaries: with rows a multiple of 16 floats
// apart, every zmm load and store of the GEMMs then stays inside one cache line
// (malloc's 16-byte alignment made most of them line splits).
template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};
template <typename T>
using avec = std::vector<T, Aligned64<T>>;

// A per-call weight buffer (packed weights, weight-gradient accumulators) from the block
// cache (cached_alloc.h), uninitialized: every user writes all of it. Through new /
// malloc the r = 176 layers' buffers (about 14 MB a backward, with the per-thread
// gradient slots) came from fresh pages on every call, and each was zeroed first.
template <typename T>
struct Buf {
  at::Tensor storage;
  T* p = nullptr;
  int64_t n = 0;
  void alloc(int64_t count) {
    storage = cached_empty({std::max<int64_t>(count, 1)}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    p = storage.data_ptr<T>();
    n = count;
  }
  // Read-only use of a contiguous weight as it is (held here: it may be a temporary).
  void view(const at::Tensor& contiguous) {
    storage = contiguous;
    p = const_cast<T*>(contiguous.data_ptr<T>());
    n = contiguous.numel();
  }
  T* data() { return p; }
  const T* data() const { return p; }
  T& operator[](int64_t i) { return p[i]; }
  const T& operator[](int64_t i) const { return p[i]; }
};

#if SNN_HAVE_AVX2
// 16 full rows from src, as many whole 16-column blocks as there are; returns the
// columns done.
SNN_AVX512 int64_t transpose_rows16_avx512(const float* src, int64_t cols, int64_t lds, float* dst, int64_t ldd) {
  int64_t j0 = 0;
  for (; j0 + 16 <= cols; j0 += 16) transpose16x16(src + j0, lds, dst + j0 * ldd, ldd);
  return j0;
}
#endif

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols: 16 x 16 register
// transposes where AVX-512 runs (float), scalar 16 x 16 tiles otherwise; in parallel
// over row tiles. Weight packing and the weight gradients' unpacking are such
// transposes; element by element they were about 30% of the r = 176 layers' fixed cost
// per call (0.7 ms of a 3.3 ms forward+backward at batch 1, one thread).
template <typename T>
void transpose_matrix(const T* src, int64_t rows, int64_t cols, int64_t lds, T* dst, int64_t ldd) {
  constexpr int64_t k = 16;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(k * cols, 1));
  const bool vec = std::is_same<T, float>::value && tt::isa_level() >= 2;
  (void)vec;
  at::parallel_for(0, ceil_div(rows, k), grain, [&](int64_t t0, int64_t t1) {
    for (int64_t i0 = t0 * k; i0 < std::min(rows, t1 * k); i0 += k) {
      const int64_t ni = std::min(k, rows - i0);
      int64_t done = 0;
#if SNN_HAVE_AVX2
      if constexpr (std::is_same<T, float>::value) {
        if (vec && ni == k) done = transpose_rows16_avx512(src + i0 * lds, cols, lds, dst + i0, ldd);
      }
#endif
      for (int64_t j0 = done; j0 < cols; j0 += k) {
        const int64_t nj = std::min(k, cols - j0);
        for (int64_t i = i0; i < i0 + ni; ++i)
          for (int64_t j = j0; j < j0 + nj; ++j) dst[j * ldd + i] = src[i * lds + j];
      }
    }
  });
}

// fn(i, j) over [0, rows) x [0, cols), in 16 x 16 tiles, in parallel over row tiles:
// the STT cores' three-tap transposed copies, whose strided side then stays in L1.
template <typename F>
void tiled(int64_t rows, int64_t cols, const F& fn) {
  constexpr int64_t k = 16;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(k * cols, 1));
  at::parallel_for(0, ceil_div(rows, k), grain, [&](int64_t t0, int64_t t1) {
    for (int64_t i0 = t0 * k; i0 < std::min(rows, t1 * k); i0 += k)
      for (int64_t j0 = 0; j0 < cols; j0 += k)
        for (int64_t i = i0; i < std::min(rows, i0 + k); ++i)
          for (int64_t j = j0; j < std::min(cols, j0 + k); ++j) fn(i, j);
  });
}

// Per-thread weight-gradient accumulators, one slot of `total` per thread. A slot is
// zeroed by the thread that first fills it (in parallel; a serial fill was 2.7 MB a call
// for the r = 176 layers) and only filled slots are summed, in slot order.
template <typename T>
struct GradSlots {
  int64_t total = 0, count = 0;
  Buf<T> data;
  std::vector<uint8_t> used;
  void reset(int64_t per_slot, int64_t slots) {
    total = per_slot;
    count = slots;
    data.alloc(per_slot * slots);
    used.assign(slots, 0);
  }
  T* slot(int64_t s) {
    T* p = data.data() + s * total;
    if (!used[s]) {
      std::fill(p, p + total, T(0));
      used[s] = 1;
    }
    return p;
  }
};

// A strided [N, C, H, W] tensor.
template <typename T>
struct View4 {
  T* p;
  int64_t sn, sc, sh, sw;
  T* at(int64_t n, int64_t c, int64_t h, int64_t w) const { return p + n * sn + c * sc + h * sh + w * sw; }
};

template <typename T>
View4<const T> cview4(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Image rows [h0, h1) of g consecutive images (g > 1 only for whole images) held in
// a padded buffer of (g * (h1 - h0 + 1) + 1) x (W + 2) pixels: the images are stacked
// vertically with one zero row between them, which is the bottom pad of one image
// and the top pad of the next, so the 3x1 taps never mix two images. Buffer pixel
// (j * (h1 - h0 + 1) + h - h0 + 1) * (W + 2) + (w + 1) is pixel (h, w) of image j.
// (With g = 1 the halo rows h0 - 1 and h1 are the buffer's first and last rows.)
// Grouping small images is what makes 8x8 and 4x4 maps efficient: every GEMM gets
// g times more pixel rows, the weight gradients g times longer sums between their
// read-modify-writes of the accumulators, and G1's spike GEMM one call per group.
struct Band {
  int64_t H, W, h0, h1, g = 1;
  int64_t wp() const { return W + 2; }
  int64_t rows() const { return h1 - h0; }
  int64_t seg() const { return h1 - h0 + 1; }  // buffer rows per image
  int64_t buffer_pixels() const { return (g * seg() + 1) * (W + 2); }
  int64_t at(int64_t j, int64_t h, int64_t w) const { return (j * seg() + h - h0 + 1) * (W + 2) + (w + 1); }
  int64_t at(int64_t h, int64_t w) const { return at(0, h, w); }
  // first pixel of the band's rows, including the left pad column
  int64_t first_row_pixel() const { return W + 2; }
  // pixels from first_row_pixel() to the end of the last image's rows (the zero
  // separator rows included: sums over them add zeros)
  int64_t span_pixels() const { return (g * seg() - 1) * (W + 2); }
};

// Zero a padded buffer and copy image rows [lo, hi) (clipped to the image) of the
// band's images n0 .. n0 + g - 1.
template <typename T>
void fill_padded(T* buf, int64_t ch, const Band& b, const View4<const T>& src, int64_t n0, int64_t lo,
                 int64_t hi) {
  std::memset(buf, 0, sizeof(T) * b.buffer_pixels() * ch);
  lo = std::max<int64_t>(lo, 0);
  hi = std::min(hi, b.H);
  for (int64_t j = 0; j < b.g; ++j)
  for (int64_t h = lo; h < hi; ++h) {
    for (int64_t w = 0; w < b.W; ++w) {
      T* d = buf + b.at(j, h, w) * ch;
      const T* s = src.at(n0 + j, 0, h, w);
      if (src.sc == 1) {
        std::memcpy(d, s, sizeof(T) * ch);
      } else {
        for (int64_t c = 0; c < ch; ++c) d[c] = s[c * src.sc];
      }
    }
  }
}

// Pointers to the pixels of image rows [lo, hi) (clipped) of every image of the band
// inside a padded buffer, image by image.
template <typename T>
int64_t padded_rows(std::vector<T*>& rows, T* buf, int64_t ch, const Band& b, int64_t lo, int64_t hi) {
  lo = std::max<int64_t>(lo, 0);
  hi = std::min(hi, b.H);
  rows.resize(b.g * std::max<int64_t>(hi - lo, 0) * b.W);
  int64_t i = 0;
  for (int64_t j = 0; j < b.g; ++j)
    for (int64_t h = lo; h < hi; ++h)
      for (int64_t w = 0; w < b.W; ++w) rows[i++] = buf + b.at(j, h, w) * ch;
  return i;
}

// Pointers to consecutive rows of a compact [pixels, ch] block.
template <typename T>
void compact_rows(std::vector<T*>& rows, T* base, int64_t ch, int64_t count) {
  rows.resize(count);
  for (int64_t i = 0; i < count; ++i) rows[i] = base + i * ch;
}

// Pixel offsets (in elements) of the taps inside a padded buffer of `ch` channels.
// PTT order: (-1,0) (+1,0) (0,-1) (0,+1) (0,0); vertical: (-1,0) (0,0) (+1,0);
// horizontal: (0,-1) (0,0) (0,+1).
struct Taps {
  int n;
  int64_t off[5];
};
Taps ptt_taps(const Band& b, int64_t ch, int64_t sign) {
  const int64_t v = b.wp() * ch;
  return {5, {-v * sign, v * sign, -ch * sign, ch * sign, 0}};
}
Taps vertical_taps(const Band& b, int64_t ch, int64_t sign) {
  const int64_t v = b.wp() * ch;
  return {3, {-v * sign, 0, v * sign, 0, 0}};
}
Taps horizontal_taps(int64_t ch, int64_t sign) { return {3, {-ch * sign, 0, ch * sign, 0, 0}}; }
const int64_t kZeroTap[1] = {0};

// ---------------------------------------------------------------- packed weights
// Forward B matrices are [tap][in][out] (rows of output channels); backward ones
// [tap][out][in]. PTT taps carry the 1/2 of the mean.
template <typename T>
struct Packed {
  Buf<T> ptt_f, ptt_b;  // [5][r][r]
  Buf<T> g2_f, g2_b;    // [3][r1][r2], [3][r2][r1]
  Buf<T> g3_f, g3_b;    // [3][r2][r3], [3][r3][r2]
  Buf<T> g4_f;          // [r3][cout]   (G4^T)
  Buf<T> g4_b;          // [cout][r3]   (G4)
  Buf<T> g1, g1_t;      // [r1][cin] (G1), [cin][r1] (G1^T), tt_conv only
  // G1 by table lookup (g1_table_rows_avx512): for each group q of 4 input channels,
  // the 16 sums of subsets of their G1^T rows, rows padded to `tab_width` floats.
  Buf<float> g1_tab;    // [tab_groups][16][tab_width]
  int64_t tab_groups = 0, tab_width = 0;
  Buf<float> g41_t;     // [cin][cout] (G4 G1)^T for HTT half steps (pack_g41)
  int64_t g41_most = -1;  // used for image rows averaging at most this many spikes a pixel
};

template <typename T>
T w2at(const at::Tensor& w, int64_t o, int64_t i, int64_t k) {  // w [out, in, 3, 1]
  return w.data_ptr<T>()[((o * w.size(1) + i) * 3 + k)];
}

template <typename T>
Packed<T> pack_weights(const at::Tensor& w2c, const at::Tensor& w3c, const at::Tensor& w4c, bool parallel,
                       bool has_g4, bool backward) {
  Packed<T> P;
  const int64_t r1 = w2c.size(1), r2 = w2c.size(0), r3 = w3c.size(0);
  const T* w2 = w2c.data_ptr<T>();  // [r2][r1][3]
  const T* w3 = w3c.data_ptr<T>();  // [r3][r2][3]
  if (parallel) {
    const int64_t r = r1;
    // The backward layout [t][co][ci] is the weights' own order: written in a row pass,
    // then transposed tap by tap into the forward one (a scratch block without backward).
    P.ptt_f.alloc(5 * r * r);
    Buf<T> rows_first;
    Buf<T>& pb = backward ? P.ptt_b : rows_first;
    pb.alloc(5 * r * r);
    at::parallel_for(0, r, std::max<int64_t>(1, 2048 / std::max<int64_t>(r, 1)), [&](int64_t c0, int64_t c1) {
      for (int64_t co = c0; co < c1; ++co)
        for (int64_t ci = 0; ci < r; ++ci) {
          const T* a = w2 + (co * r + ci) * 3;
          const T* c = w3 + (co * r + ci) * 3;
          const T v[5] = {a[0] / 2, a[2] / 2, c[0] / 2, c[2] / 2, (a[1] + c[1]) / 2};
          for (int t = 0; t < 5; ++t) pb[(t * r + co) * r + ci] = v[t];
        }
    });
    for (int t = 0; t < 5; ++t) transpose_matrix<T>(pb.data() + t * r * r, r, r, r, P.ptt_f.data() + t * r * r, r);
  } else {
    P.g2_f.alloc(3 * r1 * r2);
    P.g3_f.alloc(3 * r2 * r3);
    if (backward) {
      P.g2_b.alloc(3 * r1 * r2);
      P.g3_b.alloc(3 * r2 * r3);
    }
    tiled(r2, r1, [&](int64_t b, int64_t a) {
      for (int t = 0; t < 3; ++t) {
        const T v = w2[(b * r1 + a) * 3 + t];
        P.g2_f[(t * r1 + a) * r2 + b] = v;
        if (backward) P.g2_b[(t * r2 + b) * r1 + a] = v;
      }
    });
    tiled(r3, r2, [&](int64_t c, int64_t b) {
      for (int t = 0; t < 3; ++t) {
        const T v = w3[(c * r2 + b) * 3 + t];
        P.g3_f[(t * r2 + b) * r3 + c] = v;
        if (backward) P.g3_b[(t * r3 + c) * r2 + b] = v;
      }
    });
  }
  if (has_g4) {
    const int64_t cout = w4c.size(0);
    const T* w4 = w4c.data_ptr<T>();  // [cout][r3]
    if (backward) {  // G4^T is the forward's alone (the backward recomputes up to G4's input)
      P.g4_b.view(w4c);
    } else {
      P.g4_f.alloc(r3 * cout);
      transpose_matrix<T>(w4, cout, r3, r3, P.g4_f.data(), cout);
    }
  }
  return P;
}

// Subset-sum tables for G1 when the rank is one or two vectors wide and the tables
// stay in L1 / L2 (64 KiB): then a pixel costs ceil(Cin / 4) vector loads and adds
// whatever its spikes, where the bit scan pays a loop trip (and a mispredicted exit
// per row) for every spike to add one or two vectors.
constexpr int64_t kTableBytes = 64 * 1024;

template <typename T>
void pack_g1(Packed<T>& P, const at::Tensor& g1c) {
  const int64_t r1 = g1c.size(0), cin = g1c.size(1);
  const T* g = g1c.data_ptr<T>();
  P.g1.view(g1c);
  P.g1_t.alloc(r1 * cin);
  transpose_matrix<T>(g, r1, cin, cin, P.g1_t.data(), r1);
  P.tab_groups = 0;
  if constexpr (std::is_same<T, float>::value) {
    const int64_t width = ceil_div(r1, 16) * 16, groups = ceil_div(cin, 4);
    if (tt::isa_level() >= 2 && width <= 32 && groups * 16 * width * 4 <= kTableBytes) {
      P.tab_groups = groups;
      P.tab_width = width;
      P.g1_tab.alloc(groups * 16 * width);
      float* tab = P.g1_tab.data();
      const float* gt = P.g1_t.data();
      for (int64_t q = 0; q < groups; ++q) {
        float* tq = tab + q * 16 * width;
        std::fill(tq, tq + width, 0.0f);  // the empty subset
        for (int e = 1; e < 16; ++e) {
          // entry e = entry e without its highest bit + that channel's row
          const int hi = 31 - __builtin_clz((unsigned)e);
          const int64_t c = q * 4 + hi;
          const float* base = tq + (e & ~(1 << hi)) * width;
          float* d = tq + e * width;
          for (int64_t a = 0; a < width; ++a) d[a] = base[a] + ((c < cin && a < r1) ? gt[c * r1 + a] : 0.0f);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- problem and bands
struct Problem {
  int64_t N, H, W, r1, r2, r3, cout;
  bool parallel, pool, has_g4;
  std::vector<uint8_t> full;  // per image: 1 = full step, 0 = HTT half step
  int64_t band_rows, bands;
  int64_t group = 1;  // whole images per unit (band_rows == H when above 1)
  // tt_conv: o = G1(s) from packed spikes [N, H, W, words] instead of a tensor o.
  // With `spikes` (float 0/1, NCHW contiguous) the band packs them itself and writes
  // its rows of `bits` (the op's packed output, kept for backward).
  const uint32_t* bits = nullptr;
  const void* spikes = nullptr;
  bool spikes_cl = false;  // the float spikes are channels-last (NHWC) instead
  int64_t words = 0, cin = 0;
  mutable std::atomic<int64_t>* bad_spike = nullptr;  // first non-binary value found
  int64_t steps = 1;  // timesteps of the schedule (1 without one)
  // The kernel family (tt::isa_level()), read once per op call: it reads the
  // environment, too slow for every band.
  int isa = 0;

  // Groups of `group` consecutive images of one timestep (the last group of a step
  // may be smaller), dealt round-robin over the timesteps so that at::parallel_for's
  // contiguous split gives every thread the same mix of full and half steps (in time
  // order, FFHH would hand one thread all the full steps and the other all the half
  // ones, and the half steps would save no wall time).
  int64_t groups_per_step() const { return ceil_div(N / steps, group); }
  int64_t groups() const { return steps * groups_per_step(); }
  // First image of the k-th group and its number of images.
  int64_t image(int64_t k, int64_t* count) const {
    const int64_t per = N / steps, q = k / steps;
    *count = std::min(group, per - q * group);
    return (k % steps) * per + q * group;
  }
  // The band of the u-th unit of work (group u / bands, band u % bands); its first image in *n0.
  struct Band band(int64_t u, int64_t* n0) const {
    int64_t g = 1;
    *n0 = image(u / bands, &g);
    const int64_t k = u % bands;
    return Band{H, W, k * band_rows, std::min(H, (k + 1) * band_rows), g};
  }
  int64_t units() const { return groups() * bands; }
};

// Rows per band: whole images when their working set fits in about half of L2;
// fewer rows (even, for the pool) when it does not, or when there are too few
// images to keep every thread busy.
void choose_bands(Problem& p, size_t elem) {
  p.isa = tt::isa_level();
  const int64_t per_row = p.W * (2 * p.r1 + 2 * p.r2 + 2 * p.r3 + p.cout + p.cin) * (int64_t)elem * 2;
  int64_t rows = std::max<int64_t>(1, (int64_t)(1 << 20) / std::max<int64_t>(per_row, 1));
  const int64_t want_units = 4 * (int64_t)at::get_num_threads();
  if (p.N < want_units) {
    const int64_t per_image = ceil_div(want_units, std::max<int64_t>(p.N, 1));
    rows = std::min(rows, std::max<int64_t>(4, ceil_div(p.H, per_image)));
  }
  rows = std::min(rows, std::max<int64_t>(p.H, 1));
  if (p.pool && rows % 2 && rows < p.H) rows += 1;
  rows = std::max<int64_t>(rows, 1);
  p.band_rows = rows;
  p.bands = ceil_div(std::max<int64_t>(p.H, 1), rows);
  // Whole images that fit several to the budget go in groups, as long as every
  // thread still gets about four units. (Group budgets of 256 KiB / 1 / 2 / 4 MiB on
  // MS-ResNet18's 512->512 r176 4x4 layer, T*B = 64, one thread: about 42 / 32 / 30 /
  // 31 ms forward+backward; 2 MiB made the 128->128 r16 16x16 layer slower: 1 MiB kept.)
  p.group = 1;
  if (p.bands == 1 && p.H > 0) {
    const int64_t per_step = std::max<int64_t>(p.N / std::max<int64_t>(p.steps, 1), 1);
    // Ranks of 128 and more: 4 MiB. Each unit adds its weight gradients into the
    // thread's accumulators (r = 176: 1.3 MB of them), so larger units mean fewer of
    // those passes: the 512->512 r = 176 4x4 layer (HTT, T*B = 64) took 0.89x the time
    // forward+backward on two threads, 0.945x on one; its pooled 256->512 8x8 layer
    // 0.98-0.99x.
    const int64_t group_bytes = p.r1 >= 128 ? int64_t(4) << 20 : int64_t(1) << 20;
    const int64_t budget = std::max<int64_t>(1, group_bytes / std::max<int64_t>(per_row * p.H, 1));
    const int64_t spread = std::max<int64_t>(1, p.N / want_units);
    p.group = std::max<int64_t>(1, std::min({budget, spread, per_step}));
  }
}

std::vector<uint8_t> image_steps(int64_t N, const c10::List<bool>& schedule) {
  std::vector<uint8_t> full(N, 1);
  const int64_t T = (int64_t)schedule.size();
  if (T == 0) return full;
  TORCH_CHECK(N % T == 0, "snnops.tt_block: ", N, " images are not a whole number of the schedule's ", T,
              " timesteps");
  const int64_t per = N / T;
  for (int64_t n = 0; n < N; ++n) full[n] = schedule.get(n / per) ? 1 : 0;
  return full;
}

// ---------------------------------------------------------------- G1 from packed spikes
// o[i, :] = sum over the set bits c of row i of G1^T[c, :], rows i < R.
template <typename T>
void g1_bits_generic(const Problem& pb, const T* g1_t, const uint32_t* A, int64_t R, T* out) {
  for (int64_t i = 0; i < R; ++i) {
    T* o = out + i * pb.r1;
    std::fill(o, o + pb.r1, T(0));
    for (int64_t wd = 0; wd < pb.words; ++wd) {
      uint32_t m = A[i * pb.words + wd];
      while (m) {
        const int64_t c = wd * 32 + __builtin_ctz(m);
        m &= m - 1;
        const T* g = g1_t + c * pb.r1;
        for (int64_t a = 0; a < pb.r1; ++a) o[a] += g[a];
      }
    }
  }
}

// HTT half steps, y = G4 (G1 s): a pixel with few spikes costs less as one scan of its
// set bits over the rows of the merged weight (G4 G1)^T (Cout / 16 vector adds a spike)
// than as G1 then G4 (G1's table loads, then r Cout multiply-adds). The forward sends
// each image row of a half step whose pixels average at most `g41_most` spikes the
// merged way (half_step_merged). Costs in
// units of 10 ps a pixel, measured on half steps (AVX-512, one thread, Cin = Cout = 128,
// r = 32, 16x16): merged ~1250 + 26 per vector add; G4 ~18.5 per r x vector
// multiply-add; G1 as in use_table below. The merged weight is kept to 64 KiB, where
// these were measured (L1 / L2).
template <typename T>
void pack_g41(const Problem& pb, Packed<T>& P) {
  P.g41_most = -1;
  if constexpr (std::is_same<T, float>::value) {
    bool half = false;
    for (uint8_t f : pb.full) half = half || !f;
    if (!half || !pb.parallel || !pb.has_g4 || pb.bits == nullptr || pb.isa < 2 || pb.r1 != pb.r3 ||
        pb.cout > 12 * 16 || pb.cin * pb.cout > 16 * 1024)
      return;
    const int64_t nv = ceil_div(pb.cout, 16);
    const int64_t g4 = 185 * pb.r1 * nv / 10;
    int64_t most;
    if (P.tab_groups > 0) {  // G1 by tables: a fixed cost a pixel
      most = (38 * P.tab_groups * P.tab_width / 16 + g4 - 1250) / (26 * nv);
    } else {  // G1 by the scan, 1500 + 94 a spike: merged wins below a crossing, if any
      most = 26 * nv <= 94 ? pb.cin : (250 + g4) / (26 * nv - 94);
    }
    most = std::min(most, pb.cin);
    if (most < 1) return;
    P.g41_most = most;
    P.g41_t.alloc(pb.cin * pb.cout);
    std::vector<const float*> arow(pb.cin);
    std::vector<float*> crow(pb.cin);
    for (int64_t c = 0; c < pb.cin; ++c) {
      arow[c] = P.g1_t.data() + c * pb.r1;
      crow[c] = P.g41_t.data() + c * pb.cout;
    }
    tt::gemm_rows<float>(pb.isa, pb.cin, pb.cout, pb.r1, arow.data(), 1, kZeroTap, 1, P.g4_f.data(), pb.cout,
                         crow.data(), false);
  }
}

// Whether the tables beat the bit scan on these rows. Measured per row (AVX-512, one
// thread, half steps of 64 images): the scan ~15 ns plus ~0.94 ns per spike, the tables
// ~0.38 ns per vector load. (Forward of half steps, scan -> table, density 0.1: Cin 64,
// r 16, 32x32: 2.68 -> 1.70 ms; Cin 128, r 16, 16x16: 1.26 -> 0.93; Cin 128, r 32:
// 3.19 -> 2.75; density 0.02: about equal.)
// `spikes`: the rows' set bits when the caller has counted them, else -1.
inline bool use_table(const uint32_t* A, int64_t words, int64_t R, int64_t loads_per_row, int64_t spikes = -1) {
  // The hardware popcount (the portable one calls libgcc's: 1.2% of a half-step layer).
  // Tables are only built for the AVX-512 kernels, on CPUs that all have POPCNT and BMI.
  if (spikes < 0) spikes = spike_kernels::popcount_words(A, R * words, true);
  return 38 * loads_per_row * R <= 1500 * R + 94 * spikes;
}

#if SNN_HAVE_AVX2
// out[i][:r1] = sum over groups q of tab[q][nibble q of row i] (four independent sums,
// added at the end): NV = table width / 16.
template <int NV>
SNN_AVX512 void g1_table_rows_avx512(const float* tab, int64_t groups, const uint32_t* A, int64_t words, int64_t R,
                                     int64_t r1, float* out) {
  constexpr int64_t width = 16 * NV;
  const int64_t rem = r1 - 16 * (NV - 1);  // 1..16 columns in the last vector
  const __mmask16 tail = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1);
  for (int64_t i = 0; i < R; ++i) {
    const uint32_t* a = A + i * words;
    __m512 acc[4][NV];
    for (int c = 0; c < 4; ++c)
      for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_setzero_ps();
    int64_t q = 0;
    for (; q + 8 <= groups; q += 8) {  // one word: 8 nibbles
      const uint32_t w = a[q >> 3];
      for (int k = 0; k < 8; ++k) {
        const float* t = tab + ((q + k) * 16 + ((w >> (4 * k)) & 15)) * width;
        for (int v = 0; v < NV; ++v) acc[k & 3][v] = _mm512_add_ps(acc[k & 3][v], _mm512_load_ps(t + 16 * v));
      }
    }
    for (; q < groups; ++q) {
      const float* t = tab + (q * 16 + ((a[q >> 3] >> (4 * (q & 7))) & 15)) * width;
      for (int v = 0; v < NV; ++v) acc[q & 3][v] = _mm512_add_ps(acc[q & 3][v], _mm512_load_ps(t + 16 * v));
    }
    float* o = out + i * r1;
    for (int v = 0; v < NV; ++v) {
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0][v], acc[1][v]), _mm512_add_ps(acc[2][v], acc[3][v]));
      if (v < NV - 1)
        _mm512_storeu_ps(o + 16 * v, sum);
      else
        _mm512_mask_storeu_ps(o + 16 * v, tail, sum);
    }
  }
}
#endif

#if SNN_HAVE_AVX2
// out[i][:r1] = sum of the G1^T rows (g1t, [cin][r1]) of row i's set bits, read in
// place: NV vectors of accumulators (two sets, alternate spikes, when few vectors would
// leave the adds waiting on each other). The packed spike GEMM it replaces here copied
// its weight panel on every call, once per band: 360 KB per 48 pixels at r = 176.
// With `stream`, streaming stores (out 64-byte aligned, r1 a multiple of 16; the
// caller fences).
template <int NV>
SNN_AVX512 void g1_scan_rows_avx512(const float* g1t, int64_t r1, const uint32_t* A, int64_t words, int64_t R,
                                    float* out, bool stream = false) {
  constexpr int S = NV <= 4 ? 2 : 1;
  const int64_t rem = r1 - 16 * (NV - 1);
  const __mmask16 tail = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1);
  for (int64_t i = 0; i < R; ++i) {
    __m512 acc[S][NV];
    for (int k = 0; k < S; ++k)
      for (int v = 0; v < NV; ++v) acc[k][v] = _mm512_setzero_ps();
    int k = 0;
    // Two words per walk, as in the dG1 scatter (HTT layers 256->256 r = 176 8x8 and
    // 512->512 r = 176 4x4, forward+backward: 0.96-0.98x the time of one word).
    const uint32_t* row = A + i * words;
    for (int64_t wd = 0; wd < words; wd += 2) {
      uint64_t m = row[wd];
      if (wd + 1 < words) m |= (uint64_t)row[wd + 1] << 32;
      while (m) {
        const float* g = g1t + (wd * 32 + __builtin_ctzll(m)) * r1;
        m &= m - 1;
        for (int v = 0; v < NV - 1; ++v) acc[k][v] = _mm512_add_ps(acc[k][v], _mm512_loadu_ps(g + 16 * v));
        acc[k][NV - 1] = _mm512_add_ps(acc[k][NV - 1], _mm512_maskz_loadu_ps(tail, g + 16 * (NV - 1)));
        if constexpr (S == 2) k ^= 1;
      }
    }
    float* o = out + i * r1;
    for (int v = 0; v < NV; ++v) {
      const __m512 sum = S == 2 ? _mm512_add_ps(acc[0][v], acc[S - 1][v]) : acc[0][v];
      if (stream)
        _mm512_stream_ps(o + 16 * v, sum);
      else if (v < NV - 1)
        _mm512_storeu_ps(o + 16 * v, sum);
      else
        _mm512_mask_storeu_ps(o + 16 * v, tail, sum);
    }
  }
}

template <int NV = 1>
SNN_AVX512 void g1_scan_any_avx512(int64_t nv, const float* g1t, int64_t r1, const uint32_t* A, int64_t words,
                                   int64_t R, float* out, bool stream = false) {
  if constexpr (NV < 12) {
    if (nv > NV) return g1_scan_any_avx512<NV + 1>(nv, g1t, r1, A, words, R, out, stream);
  }
  g1_scan_rows_avx512<NV>(g1t, r1, A, words, R, out, stream);
}
#endif

template <typename T>
void g1_from_bits(const Problem& pb, const Packed<T>& P, const uint32_t* A, int64_t R, T* out,
                  int64_t spikes = -1) {
#if SNN_HAVE_AVX2
  if constexpr (std::is_same<T, float>::value) {
    if (P.tab_groups > 0 && use_table(A, pb.words, R, P.tab_groups * P.tab_width / 16, spikes)) {
      if (P.tab_width == 16)
        g1_table_rows_avx512<1>(P.g1_tab.data(), P.tab_groups, A, pb.words, R, pb.r1, out);
      else
        g1_table_rows_avx512<2>(P.g1_tab.data(), P.tab_groups, A, pb.words, R, pb.r1, out);
      return;
    }
    if (pb.isa >= 2 && pb.r1 <= 12 * 16 && pb.r1 > 0) {
      g1_scan_any_avx512(ceil_div(pb.r1, 16), P.g1_t.data(), pb.r1, A, pb.words, R, out);
      return;
    }
  }
#endif
  if constexpr (std::is_same<T, float>::value) {
    // The project's packed spike GEMM (its nested at::parallel_for runs inline on this
    // thread). Measured on one band of 256 pixels, Cin 128, r 32, density 0.2: 3.5 ms
    // per 128 images against 2.7 ms for a bare bit-scan here (it copies its weight
    // panel per call); about 3% of the layer's forward+backward.
    spike_rows_gemm_f32(A, pb.words, R, pb.cin, P.g1.data(), 1, pb.cin, pb.r1, out, pb.r1, 1, nullptr);
  } else {
    g1_bits_generic<T>(pb, P.g1_t.data(), A, R, out);
  }
}

// Pack image rows [lo, hi) of the float spikes (NCHW or NHWC) into `out` ([pixels,
// words]). A non-binary value is recorded in pb.bad_spike (its flat index in NCHW
// order), and false returned.
template <typename T>
bool pack_rows(const Problem& pb, int64_t n, int64_t lo, int64_t hi, uint32_t* out) {
  const int64_t hw = pb.H * pb.W, count = (hi - lo) * pb.W;
  int64_t bad = -1;
  if (pb.spikes_cl) {  // one row of channels per pixel
    const T* x = static_cast<const T*>(pb.spikes) + (n * pb.H + lo) * pb.W * pb.cin;
    for (int64_t i = 0; i < count && bad < 0; ++i) {
      int64_t k;
      if constexpr (std::is_same<T, float>::value)
        k = spike_kernels::pack_row(x + i * pb.cin, pb.cin, out + i * pb.words, pb.isa >= 1);
      else
        k = spike_pack::pack_row<T>(x + i * pb.cin, pb.cin, out + i * pb.words);
      if (k >= 0) bad = k * count + i;
    }
  } else {
    const T* x = static_cast<const T*>(pb.spikes) + (n * pb.cin * pb.H + lo) * pb.W;
    bad = spike_pack::pack_columns_isa<T>(pb.isa, x, pb.cin, hw, count, out, pb.words);
  }
  if (bad < 0) return true;
  const int64_t c = bad / count, i = bad % count;  // channel, pixel within the rows
  int64_t none = -1;
  pb.bad_spike->compare_exchange_strong(none, n * pb.cin * hw + c * hw + lo * pb.W + i);
  return false;
}

// The band's input rows [lo, hi) into the padded buffer: read from the tensor o, or
// computed by G1 from the packed spikes (packed here first when given as floats).
template <typename T>
void fill_input(const Problem& pb, const Packed<T>& P, const View4<const T>& o, T* buf, const Band& b, int64_t n0,
                int64_t lo, int64_t hi, avec<T>& tmp, std::vector<uint32_t>& bit_tmp) {
  if (pb.bits == nullptr) return fill_padded<T>(buf, pb.r1, b, o, n0, lo, hi);
  std::memset(buf, 0, sizeof(T) * b.buffer_pixels() * pb.r1);
  lo = std::max<int64_t>(lo, 0);
  hi = std::min(hi, b.H);
  const int64_t Rj = (hi - lo) * b.W;  // rows per image; a group has whole images, contiguous
  const int64_t R = b.g * Rj;
  if (R <= 0) return;
  const uint32_t* A = pb.bits + (n0 * b.H + lo) * b.W * pb.words;
  if (pb.spikes != nullptr) {
    // Pack while the rows are in cache; the halo rows go to a scratch only (the
    // neighbouring band owns them), the band's own rows also to the packed output.
    bit_tmp.resize(R * pb.words);
    for (int64_t j = 0; j < b.g; ++j) {
      const int64_t n = n0 + j;
      uint32_t* bt = bit_tmp.data() + j * Rj * pb.words;
      if (!pack_rows<T>(pb, n, lo, hi, bt)) return;
      uint32_t* own = const_cast<uint32_t*>(pb.bits) + (n * b.H + b.h0) * b.W * pb.words;
      std::memcpy(own, bt + (b.h0 - lo) * b.W * pb.words, sizeof(uint32_t) * b.rows() * b.W * pb.words);
    }
    A = bit_tmp.data();
  }
  tmp.resize(R * pb.r1);
  g1_from_bits<T>(pb, P, A, R, tmp.data());
  for (int64_t j = 0; j < b.g; ++j)
    for (int64_t h = lo; h < hi; ++h)
      std::memcpy(buf + b.at(j, h, 0) * pb.r1, tmp.data() + (j * (hi - lo) + h - lo) * b.W * pb.r1,
                  sizeof(T) * b.W * pb.r1);
}

// o = G1(s) for the band's own rows only, compact ([pixels, r1]): what an HTT half
// step needs (no halo, no zero padding: the middle, which reads them, is skipped).
// Packs the float spikes straight into the op's packed output first when given.
// Returns false after recording a non-binary spike.
template <typename T>
bool g1_band_compact(const Problem& pb, const Packed<T>& P, const Band& b, int64_t n0, T* out) {
  const int64_t Rj = b.rows() * b.W;
  uint32_t* A = const_cast<uint32_t*>(pb.bits) + (n0 * b.H + b.h0) * b.W * pb.words;
  if (pb.spikes != nullptr) {
    for (int64_t j = 0; j < b.g; ++j) {
      if (!pack_rows<T>(pb, n0 + j, b.h0, b.h1, A + j * b.H * b.W * pb.words)) return false;
    }
  }
  // Band rows of consecutive images are contiguous only for whole-image bands (the
  // only case with more than one image per unit).
  g1_from_bits<T>(pb, P, A, b.g * Rj, out);
  return true;
}

template <typename T>
struct FwdScratch {
  avec<T> opad, mid, p, ytile, tmp;
  std::vector<uint32_t> bits;
  std::vector<int64_t> counts, runs;  // half_step_merged
  std::vector<T*> arow, crow, prow;
};

#if SNN_HAVE_AVX2
// An HTT half step's band of tt_conv, y = G4 G1 s into yb ([pixels, cout], the band's
// rows). Image rows whose pixels average at most P.g41_most spikes go by the merged
// weight, the others by G1 then G4 (pack_g41). Chosen per image row, not per band, so
// that the result does not depend on how the bands fall (the thread count); not per
// pixel, whose mispredicted branches and scattered rows cost more than the choice
// saved. Streaming stores for the merged rows when `stream`. Packs the float spikes
// first when given; returns false after recording a non-binary spike.
inline bool half_step_merged(const Problem& pb, const Packed<float>& P, const Band& b, int64_t n0, float* yb,
                             bool stream, FwdScratch<float>& s) {
  const int64_t W = b.W, nrows = b.g * b.rows(), words = pb.words;
  uint32_t* A = const_cast<uint32_t*>(pb.bits) + (n0 * b.H + b.h0) * W * words;
  if (pb.spikes != nullptr)
    for (int64_t j = 0; j < b.g; ++j)
      if (!pack_rows<float>(pb, n0 + j, b.h0, b.h1, A + j * b.H * W * words)) return false;
  if (nrows == 0 || W == 0) return true;
  const bool st = stream && pb.cout % 16 == 0 && reinterpret_cast<uintptr_t>(yb) % 64 == 0;
  const int64_t nv = ceil_div(pb.cout, 16), most = P.g41_most * W;
  s.counts.resize(nrows);
  spike_kernels::popcount_rows(A, W * words, nrows, s.counts.data(), true);
  // Runs of image rows [runs[3k], runs[3k+1]) that go by G1 then G4, with their spikes
  // (counted once: G1 chooses its tables or its scan by them).
  s.runs.clear();
  int64_t k0 = 0, spikes = 0, px = 0;
  for (int64_t k = 0; k <= nrows; ++k) {
    const bool merged = s.counts[k0] <= most;
    if (k == nrows || (s.counts[k] <= most) != merged) {  // the run [k0, k) ends
      if (merged) {
        g1_scan_any_avx512(nv, P.g41_t.data(), pb.cout, A + k0 * W * words, words, (k - k0) * W,
                           yb + k0 * W * pb.cout, st);
      } else {
        s.runs.insert(s.runs.end(), {k0, k, spikes});
        px += (k - k0) * W;
      }
      k0 = k;
      spikes = 0;
    }
    if (k < nrows) spikes += s.counts[k];
  }
  if (px == 0) return true;
  s.tmp.resize(px * pb.r1);
  s.arow.resize(px);
  s.crow.resize(px);
  int64_t done = 0;
  for (size_t r = 0; r < s.runs.size(); r += 3) {
    const int64_t p0 = s.runs[r] * W, np = (s.runs[r + 1] - s.runs[r]) * W;
    g1_from_bits<float>(pb, P, A + p0 * words, np, s.tmp.data() + done * pb.r1, s.runs[r + 2]);
    for (int64_t i = 0; i < np; ++i) {
      s.arow[done + i] = s.tmp.data() + (done + i) * pb.r1;
      s.crow[done + i] = yb + (p0 + i) * pb.cout;
    }
    done += np;
  }
  gemm_rows<float>(pb.isa, px, pb.cout, pb.r1, s.arow.data(), 1, kZeroTap, 1, P.g4_f.data(), pb.cout,
                   s.crow.data(), false);
  return true;
}
#endif

// gemm_rows (one tap, ask 1) whose A rows are read in place from a tensor that is not
// in cache, the incoming gradient of tt_conv's backward (G4^T). A tile of 8 rows
// otherwise waits on each new line of its rows (the hardware prefetcher does not follow
// 8 streams of 8 lines). For 17..32 columns (AVX-512) each tile prefetches the next
// tile's rows a line every other k step; otherwise chunks of 16 rows, each prefetched
// whole while the chunk before it is computed. The 128->128 r = 32 layer's forward +
// backward, PTT and HTT, interleaved: chunks against no prefetch 0.96-0.97x the time on
// one thread, 0.96-1.00x on two (8 and 32 rows no better); in-tile against chunks 0.97x on
// one thread, 0.94-0.96x on two. Where the chunks remain, none instead took 1.03x the
// time at r = 16 and 1.01x at r = 64 (two threads).
template <typename T>
void gemm_rows_streamed(int isa, int64_t M, int64_t N, int64_t K, T* const* arow, T* const* crow, const T* B,
                        int64_t ldb) {
#if SNN_HAVE_AVX2
  if constexpr (std::is_same<T, float>::value) {
    if (isa >= 2 && tt::gemm_rows_streamed_avx512(M, N, K, arow, B, ldb, crow)) return;
  }
#endif
  constexpr int64_t chunk = 16;
  const int64_t row_bytes = K * (int64_t)sizeof(T);
  auto prefetch = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const char* a = reinterpret_cast<const char*>(arow[i]);
      for (int64_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(a + o, 0, 3);
    }
  };
  prefetch(0, std::min(M, chunk));
  for (int64_t i0 = 0; i0 < M; i0 += chunk) {
    const int64_t m = std::min(chunk, M - i0);
    prefetch(i0 + m, std::min(M, i0 + m + chunk));
    gemm_rows<T>(isa, m, N, K, arow + i0, 1, kZeroTap, 1, B, ldb, crow + i0, false);
  }
}

// ---------------------------------------------------------------- forward
// The rank-r result of the middle of the block for the band (PTT, STT, or the input
// itself at a half step), as row pointers in `rows` (one per pixel, row-major).
template <typename T>
void middle_forward(int isa, const Problem& pb, const Packed<T>& P, const Band& b, bool full, FwdScratch<T>& s,
                    std::vector<T*>& rows, T* dest_or_null) {
  const int64_t M = padded_rows(s.arow, s.opad.data(), pb.r1, b, b.h0, b.h1);
  if (pb.parallel && !full) {  // HTT half step: the middle is skipped
    rows = s.arow;
    return;
  }
  if (dest_or_null == nullptr) {
    s.p.resize(M * pb.r3);
    compact_rows(rows, s.p.data(), pb.r3, M);
  } else {
    compact_rows(rows, dest_or_null, pb.r3, M);
  }
  if (pb.parallel) {
    const Taps tp = ptt_taps(b, pb.r1, 1);
    gemm_rows<T>(isa, M, pb.r1, pb.r1, s.arow.data(), 1, tp.off, tp.n, P.ptt_f.data(), pb.r1, rows.data(), false);
  } else {
    s.mid.assign(b.buffer_pixels() * pb.r2, T(0));
    std::vector<T*>& mrow = s.crow;
    padded_rows(mrow, s.mid.data(), pb.r2, b, b.h0, b.h1);
    const Taps tv = vertical_taps(b, pb.r1, 1);
    gemm_rows<T>(isa, M, pb.r2, pb.r1, s.arow.data(), 1, tv.off, tv.n, P.g2_f.data(), pb.r2, mrow.data(), false);
    const Taps th = horizontal_taps(pb.r2, 1);
    gemm_rows<T>(isa, M, pb.r3, pb.r2, mrow.data(), 1, th.off, th.n, P.g3_f.data(), pb.r3, rows.data(), false);
  }
}

#if SNN_HAVE_AVX2
// pool_band's max and argmax over a 2x2 window for 16 channels at a time, with its
// rule: a later value replaces the best when greater or NaN. Returns the channels
// done (the scalar loop was ~19% of a pooled layer's forward on two threads).
SNN_INTRINSICS_UNINIT_BEGIN
SNN_AVX512 int64_t pool_pixel_avx512(const float* const* q, int64_t C, float* out, uint8_t* idx) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    __m512 best = _mm512_loadu_ps(q[0] + c);
    __m512i arg = _mm512_setzero_si512();
    for (int d = 1; d < 4; ++d) {
      const __m512 v = _mm512_loadu_ps(q[d] + c);
      const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      best = _mm512_mask_mov_ps(best, take, v);
      arg = _mm512_mask_mov_epi32(arg, take, _mm512_set1_epi32(d));
    }
    _mm512_storeu_ps(out + c, best);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(idx + c), _mm512_cvtepi32_epi8(arg));
  }
  return c;
}
SNN_INTRINSICS_UNINIT_END
#endif

template <typename T>
void pool_band(const Problem& pb, const Band& b, const T* ytile, T* out, uint8_t* idx, int64_t n0) {
  const int64_t Hp = pb.H / 2, Wp = pb.W / 2, C = pb.cout;
  const bool vec = pb.isa >= 2;
  (void)vec;
  for (int64_t j = 0; j < b.g; ++j, ytile += b.rows() * pb.W * C) {
  const int64_t n = n0 + j;
  for (int64_t ph = b.h0 / 2; ph < std::min(Hp, b.h1 / 2); ++ph) {
    for (int64_t pw = 0; pw < Wp; ++pw) {
      const int64_t o = ((n * Hp + ph) * Wp + pw) * C;
      const T* q[4];
      for (int d = 0; d < 4; ++d) q[d] = ytile + ((2 * ph + d / 2 - b.h0) * pb.W + 2 * pw + d % 2) * C;
      int64_t c = 0;
#if SNN_HAVE_AVX2
      if constexpr (std::is_same<T, float>::value) {
        if (vec) c = pool_pixel_avx512(q, C, out + o, idx + o);
      }
#endif
      for (; c < C; ++c) {
        T best = q[0][c];
        uint8_t arg = 0;
        for (uint8_t d = 1; d < 4; ++d) {
          const T v = q[d][c];
          if (v > best || std::isnan(v)) {  // the first maximum, NaN wins (as F.max_pool2d)
            best = v;
            arg = d;
          }
        }
        out[o + c] = best;
        idx[o + c] = arg;
      }
    }
  }
  }
}

template <typename T>
void block_forward(const Problem& pb, const Packed<T>& P, const View4<const T>& o, T* out, uint8_t* idx) {
  const int isa = pb.isa;
  // Outputs of several MiB leave the cache anyway: the merged half steps write theirs
  // with streaming stores, skipping the read of each line before it is written (as
  // the spike GEMM does from 8 MiB).
  const bool stream = !pb.pool && (double)pb.N * pb.H * pb.W * pb.cout * sizeof(T) >= kStreamOutputBytes;
  at::parallel_for(0, pb.units(), 1, [&](int64_t u0, int64_t u1) {
    FwdScratch<T> s;
    std::vector<T*> rows, yrow;
    bool streamed = false;
    for (int64_t u = u0; u < u1; ++u) {
      int64_t n = 0;
      const Band b = pb.band(u, &n);
      const int64_t M = b.g * b.rows() * pb.W;
      const int64_t out_ch = pb.has_g4 ? pb.cout : pb.r3;
      T* dest = out + (n * pb.H + b.h0) * pb.W * out_ch;
      if (pb.bits != nullptr && pb.has_g4 && pb.parallel && !pb.full[n]) {
        // HTT half step of tt_conv: y = G4(G1 s) straight from a compact o, no padded
        // buffer to clear and fill (half / full step forward 0.655 -> 0.625x; Cin = Cout
        // = 128, r = 32, 128 images of 16x16, packed input, one thread).
#if SNN_HAVE_AVX2
        if constexpr (std::is_same<T, float>::value) {
          if (P.g41_t.n > 0) {  // sparse image rows by the merged weight G4 G1
            T* yb = dest;
            if (pb.pool) {
              s.ytile.resize(M * pb.cout);
              yb = s.ytile.data();
            }
            if (!half_step_merged(pb, P, b, n, yb, stream, s)) continue;
            streamed = streamed || stream;
            if (pb.pool) pool_band<T>(pb, b, s.ytile.data(), out, idx, n);
            continue;
          }
        }
#endif
        s.tmp.resize(M * pb.r1);
        if (!g1_band_compact<T>(pb, P, b, n, s.tmp.data())) continue;
        compact_rows(rows, s.tmp.data(), pb.r1, M);
      } else {
        s.opad.resize(b.buffer_pixels() * pb.r1);
        fill_input<T>(pb, P, o, s.opad.data(), b, n, b.h0 - 1, b.h1 + 1, s.tmp, s.bits);
        if (!pb.has_g4) {  // ptt_conv: the middle is the output
          middle_forward<T>(isa, pb, P, b, true, s, rows, dest);
          continue;
        }
        middle_forward<T>(isa, pb, P, b, pb.full[n] != 0, s, rows, nullptr);
      }
      T* ybase = dest;
      if (pb.pool) {
        s.ytile.resize(M * pb.cout);
        ybase = s.ytile.data();
      }
      compact_rows(yrow, ybase, pb.cout, M);
      gemm_rows<T>(isa, M, pb.cout, pb.r3, rows.data(), 1, kZeroTap, 1, P.g4_f.data(), pb.cout, yrow.data(), false);
      if (pb.pool) pool_band<T>(pb, b, s.ytile.data(), out, idx, n);
    }
#if SNN_HAVE_AVX2
    if (streamed) _mm_sfence();
#endif
  });
}

// ---------------------------------------------------------------- backward
template <typename T>
struct Grads {
  bool o, w2, w3, w4;
  bool x = false, g1 = false;  // tt_conv: the spikes' and G1's gradients (o is then internal)
};

#if SNN_HAVE_AVX2
// dG1^T[c][:] += go[i][:] over the set bits c of row i: the row of go (up to 64
// channels per pass) sits in registers, each set bit is a read-add-write of one
// L1-resident row of the accumulator. (The portable loop took 6.5 ms of a 41 ms
// backward here, r 32, density 0.2.)
template <int NV>
SNN_AVX2 void g1_scatter_pass_avx2(const Problem& pb, const uint32_t* A, int64_t R, const float* go, float* acc,
                                   int64_t j0, int64_t tail) {
  const __m256i mask = tail_mask(tail);
  const int64_t r = pb.r1;
  for (int64_t i = 0; i < R; ++i) {
    __m256 g[NV];
    for (int v = 0; v < NV; ++v)
      g[v] = (tail && v == NV - 1) ? _mm256_maskload_ps(go + i * r + j0 + 8 * v, mask)
                                   : _mm256_loadu_ps(go + i * r + j0 + 8 * v);
    for (int64_t wd = 0; wd < pb.words; ++wd) {
      uint32_t m = A[i * pb.words + wd];
      while (m) {
        float* d = acc + (wd * 32 + __builtin_ctz(m)) * r + j0;
        m &= m - 1;
        for (int v = 0; v < NV; ++v) {
          if (tail && v == NV - 1)
            _mm256_maskstore_ps(d + 8 * v, mask, _mm256_add_ps(_mm256_maskload_ps(d + 8 * v, mask), g[v]));
          else
            _mm256_storeu_ps(d + 8 * v, _mm256_add_ps(_mm256_loadu_ps(d + 8 * v), g[v]));
        }
      }
    }
  }
}

SNN_AVX2 void g1_scatter_avx2(const Problem& pb, const uint32_t* A, int64_t R, const float* go, float* acc) {
  for (int64_t j0 = 0; j0 < pb.r1; j0 += 64) {
    const int64_t nb = std::min<int64_t>(64, pb.r1 - j0);
    const int64_t tail = nb % 8;
    switch (ceil_div(nb, 8)) {
      case 1: g1_scatter_pass_avx2<1>(pb, A, R, go, acc, j0, tail); break;
      case 2: g1_scatter_pass_avx2<2>(pb, A, R, go, acc, j0, tail); break;
      case 3: g1_scatter_pass_avx2<3>(pb, A, R, go, acc, j0, tail); break;
      case 4: g1_scatter_pass_avx2<4>(pb, A, R, go, acc, j0, tail); break;
      case 5: g1_scatter_pass_avx2<5>(pb, A, R, go, acc, j0, tail); break;
      case 6: g1_scatter_pass_avx2<6>(pb, A, R, go, acc, j0, tail); break;
      case 7: g1_scatter_pass_avx2<7>(pb, A, R, go, acc, j0, tail); break;
      default: g1_scatter_pass_avx2<8>(pb, A, R, go, acc, j0, tail); break;
    }
  }
}

// The same with zmm rows: up to 128 channels of go per pass in 8 registers.
template <int NV>
SNN_AVX512 void g1_scatter_pass_avx512(const Problem& pb, const uint32_t* A, int64_t R, const float* go, float* acc,
                                       int64_t j0, __mmask16 tail) {
  const int64_t r = pb.r1;
  for (int64_t i = 0; i < R; ++i) {
    __m512 g[NV];
    for (int v = 0; v < NV; ++v)
      g[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, go + i * r + j0 + 16 * v) : _mm512_loadu_ps(go + i * r + j0 + 16 * v);
    // Two words per walk over the set bits: each walk ends in a mispredicted branch
    // (128->128 r = 32 layer, forward+backward: 0.96-0.98x the time of one word).
    const uint32_t* row = A + i * pb.words;
    for (int64_t wd = 0; wd < pb.words; wd += 2) {
      uint64_t m = row[wd];
      if (wd + 1 < pb.words) m |= (uint64_t)row[wd + 1] << 32;
      while (m) {
        float* d = acc + (wd * 32 + __builtin_ctzll(m)) * r + j0;
        m &= m - 1;
        for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(d + 16 * v, _mm512_add_ps(_mm512_loadu_ps(d + 16 * v), g[v]));
        float* e = d + 16 * (NV - 1);
        _mm512_mask_storeu_ps(e, tail, _mm512_add_ps(_mm512_maskz_loadu_ps(tail, e), g[NV - 1]));
      }
    }
  }
}

SNN_AVX512 void g1_scatter_avx512(const Problem& pb, const uint32_t* A, int64_t R, const float* go, float* acc) {
  for (int64_t j0 = 0; j0 < pb.r1; j0 += 128) {
    const int64_t nb = std::min<int64_t>(128, pb.r1 - j0);
    const int64_t rem = nb % 16;
    const __mmask16 tail = rem ? (__mmask16)((1u << rem) - 1) : (__mmask16)0xFFFF;
    switch (ceil_div(nb, 16)) {
      case 1: g1_scatter_pass_avx512<1>(pb, A, R, go, acc, j0, tail); break;
      case 2: g1_scatter_pass_avx512<2>(pb, A, R, go, acc, j0, tail); break;
      case 3: g1_scatter_pass_avx512<3>(pb, A, R, go, acc, j0, tail); break;
      case 4: g1_scatter_pass_avx512<4>(pb, A, R, go, acc, j0, tail); break;
      case 5: g1_scatter_pass_avx512<5>(pb, A, R, go, acc, j0, tail); break;
      case 6: g1_scatter_pass_avx512<6>(pb, A, R, go, acc, j0, tail); break;
      case 7: g1_scatter_pass_avx512<7>(pb, A, R, go, acc, j0, tail); break;
      default: g1_scatter_pass_avx512<8>(pb, A, R, go, acc, j0, tail); break;
    }
  }
}
#endif

// dG1^T[c][:] += go[i][:] for every set bit c of row i (work in proportion to the spikes).
template <typename T>
void g1_grad_scatter(const Problem& pb, const uint32_t* A, int64_t R, const T* go, T* acc) {
#if SNN_HAVE_AVX2
  if constexpr (std::is_same<T, float>::value) {
    if (pb.isa == 2) return g1_scatter_avx512(pb, A, R, go, acc);
    if (pb.isa == 1) return g1_scatter_avx2(pb, A, R, go, acc);
  }
#endif
  const int64_t r = pb.r1;
  for (int64_t i = 0; i < R; ++i) {
    const T* g = go + i * r;
    for (int64_t wd = 0; wd < pb.words; ++wd) {
      uint32_t m = A[i * pb.words + wd];
      while (m) {
        const int64_t c = wd * 32 + __builtin_ctz(m);
        m &= m - 1;
        T* d = acc + c * r;
        for (int64_t a = 0; a < r; ++a) d[a] += g[a];
      }
    }
  }
}

template <typename T>
struct BwdScratch {
  FwdScratch<T> f;
  avec<T> gy, gp, g2, go;
  std::vector<T*> gyrow, gprow, g2row, orow, tmp;
};

// Weight-gradient accumulators of one thread: [ptt: 5][r][r] rows (tap, in) or STT
// dW2 [3][r1][r2] + dW3 [3][r2][r3]; then dG4^T [r3][cout].
struct AccLayout {
  int64_t taps_a, taps_b, g4, g1, total;
};

AccLayout acc_layout(const Problem& pb) {
  AccLayout L{};
  if (pb.parallel) {
    L.taps_a = 5 * pb.r1 * pb.r1;
    L.taps_b = 0;
  } else {
    L.taps_a = 3 * pb.r1 * pb.r2;
    L.taps_b = 3 * pb.r2 * pb.r3;
  }
  L.g4 = pb.has_g4 ? pb.r3 * pb.cout : 0;
  L.g1 = pb.bits ? pb.cin * pb.r1 : 0;  // dG1^T [cin][r1]
  L.total = (L.taps_a + L.taps_b + L.g4 + L.g1 + 15) / 16 * 16;  // each thread's slot 64-byte aligned
  return L;
}

// Weight gradient of taps: C[(t, i)][j] += sum over the band's pixels (pad columns
// included: `grad` is zero there) of act[pixel + shift_t][i] * grad[pixel][j].
template <typename T>
void tap_weight_grad(int isa, const Band& b, const T* act, int64_t ci, const Taps& tp, const T* grad, int64_t co,
                     T* acc, std::vector<T*>& arow, std::vector<T*>& crow) {
  const int64_t q0 = b.first_row_pixel();
  const int64_t K = b.span_pixels();
  arow.resize(tp.n * ci);
  crow.resize(tp.n * ci);
  for (int t = 0; t < tp.n; ++t)
    for (int64_t i = 0; i < ci; ++i) {
      arow[t * ci + i] = const_cast<T*>(act) + q0 * ci + tp.off[t] + i;
      crow[t * ci + i] = acc + (t * ci + i) * co;
    }
  gemm_rows<T>(isa, tp.n * ci, co, K, arow.data(), ci, kZeroTap, 1, grad + q0 * co, co, crow.data(), true);
}

#if SNN_HAVE_AVX2
// planes_to_rows's whole blocks of 16 channels x 16 pixels (rows contiguous, sw == 1).
SNN_AVX512 void plane_blocks_avx512(const float* src, int64_t sc, int64_t W, int64_t C, float* dst) {
  for (int64_t c = 0; c + 16 <= C; c += 16)
    for (int64_t w = 0; w + 16 <= W; w += 16) {
      // One line from each of 16 planes: too many streams for the hardware prefetcher,
      // so fetch the same planes' next row (the caller's next call).
      for (int64_t i = 0; i < 16; ++i)
        _mm_prefetch(reinterpret_cast<const char*>(src + (c + i) * sc + w + W), _MM_HINT_T0);
      transpose16x16(src + c * sc + w, sc, dst + w * C + c, C);
    }
}

SNN_AVX2 void plane_blocks_avx2(const float* src, int64_t sc, int64_t W, int64_t C, float* dst) {
  for (int64_t c = 0; c + 8 <= C; c += 8)
    for (int64_t w = 0; w + 8 <= W; w += 8) transpose8x8(src + c * sc + w, sc, dst + w * C + c, C);
}
#endif

// One row h of NCHW planes (channel stride sc, pixel stride sw) as W channels-last rows
// of C (dst[w * C + c]): 16x16 (AVX-512) or 8x8 (AVX2) in-register transposes when the
// plane rows are contiguous. (Element by element this gather was 12% of an HTT layer's
// forward + backward on an NCHW gradient; blocked, 6%.)
template <typename T>
void planes_to_rows(int isa, const T* src, int64_t sc, int64_t sw, int64_t W, int64_t C, T* dst) {
  int64_t c_done = 0, w_done = 0;
#if SNN_HAVE_AVX2
  if constexpr (std::is_same<T, float>::value) {
    const int64_t blk = isa >= 2 ? 16 : isa == 1 ? 8 : 0;
    if (blk && sw == 1 && C >= blk && W >= blk) {
      c_done = C / blk * blk;
      w_done = W / blk * blk;
      if (blk == 16)
        plane_blocks_avx512(src, sc, W, C, dst);
      else
        plane_blocks_avx2(src, sc, W, C, dst);
    }
  }
#endif
  (void)isa;
  for (int64_t c = 0; c < C; ++c) {
    const T* g = src + c * sc;
    for (int64_t w = c < c_done ? w_done : 0; w < W; ++w) dst[w * C + c] = g[w * sw];
  }
}

#if SNN_HAVE_AVX2
// unpool_pixel for 16 channels at a time: each window row gets the gradient where the
// pool index picked it and zero elsewhere (whole rows written, no gather of indices).
SNN_INTRINSICS_UNINIT_BEGIN
SNN_AVX512 void unpool_pixel_avx512(const float* g, const uint8_t* code, int64_t C, float* const* win) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    const __m512 v = _mm512_loadu_ps(g + c);
    const __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(code + c)));
    for (int q = 0; q < 4; ++q)
      if (win[q] != nullptr)
        _mm512_storeu_ps(win[q] + c, _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(q)), v));
  }
  for (; c < C; ++c)
    for (int q = 0; q < 4; ++q)
      if (win[q] != nullptr) win[q][c] = code[c] == q ? g[c] : 0.0f;
}
SNN_INTRINSICS_UNINIT_END
#endif

// The pooled gradient of one pixel's C channels (stride sc) sent back to the 2x2 window
// position each channel's max came from (code 0..3, row-major in the window); the
// window's other positions get zero. win[q]: the channels-last row of position q, or
// null when outside the band.
template <typename T>
void unpool_pixel(int isa, const T* g, int64_t sc, const uint8_t* code, int64_t C, T* const* win) {
#if SNN_HAVE_AVX2
  if constexpr (std::is_same<T, float>::value) {
    if (isa >= 2 && sc == 1) return unpool_pixel_avx512(g, code, C, win);
  }
#endif
  (void)isa;
  for (int64_t c = 0; c < C; ++c)
    for (int q = 0; q < 4; ++q)
      if (win[q] != nullptr) win[q][c] = code[c] == q ? g[c * sc] : T(0);
}

template <typename T>
void block_backward(const Problem& pb, const Packed<T>& P, const View4<const T>& gy_in, const uint8_t* idx,
                    const View4<const T>& o, const Grads<T>& need, T* go_out, T* gx_out, GradSlots<T>& acc_all) {
  const int isa = pb.isa;
  const AccLayout L = acc_layout(pb);
  const int64_t slots = std::max<int64_t>(1, at::get_num_threads());
  acc_all.reset(L.total, slots);
  const int64_t gch = pb.has_g4 ? pb.cout : pb.r3;  // channels of the incoming gradient
  const bool gy_rows_direct = !pb.pool && gy_in.sc == 1 && gy_in.sw == gch && gy_in.sh == pb.W * gch &&
                              (pb.group == 1 || gy_in.sn == pb.H * pb.W * gch);
  const bool need_taps = need.w2 || need.w3;
  // the gradient of o: an output (tt_block, ptt_conv) or what G1's backward needs (tt_conv)
  const bool need_go = pb.bits ? (need.x || need.g1) : need.o;
  at::parallel_for(0, pb.units(), 1, [&](int64_t u0, int64_t u1) {
    const int64_t slot = std::min<int64_t>(at::get_thread_num(), slots - 1);
    T* acc = acc_all.slot(slot);
    BwdScratch<T> s;
    std::vector<T*> mrows, gp_band, g2_band, crow;
    for (int64_t u = u0; u < u1; ++u) {
      int64_t n = 0;  // the band's first image (of b.g consecutive ones of one timestep)
      const Band b = pb.band(u, &n);
      const bool full = !pb.parallel || pb.full[n];
      const int64_t M = b.g * b.rows() * pb.W;
      const int64_t lo = std::max<int64_t>(b.h0 - 1, 0), hi = std::min(pb.H, b.h1 + 1);
      const int64_t Mj = (hi - lo) * pb.W;  // rows [lo, hi) of one image
      const int64_t Mh = b.g * Mj;
      // HTT half step of tt_conv: no middle, so no padded input, no halo, and go = gp
      // written compact where G1's backward reads it (half / full step backward 0.668
      // -> 0.633x, same shape as the forward's).
      const bool half_bits = pb.bits != nullptr && pb.has_g4 && pb.parallel && !full;
      if (!half_bits) {
        s.f.opad.resize(b.buffer_pixels() * pb.r1);
        fill_input<T>(pb, P, o, s.f.opad.data(), b, n, b.h0 - 1, b.h1 + 1, s.f.tmp, s.f.bits);
      }

      // Incoming gradient rows [lo, hi): straight from the tensor when it is
      // channels-last, else gathered (or un-pooled) into a compact scratch.
      const T* gy_band;  // pixel (h0, 0) of a block with pixel stride gch
      s.gyrow.resize(Mh);
      if (gy_rows_direct) {
        // rows [lo, hi) of each image are consecutive pixels here (no divisions per row)
        for (int64_t j = 0, i = 0; j < b.g; ++j) {
          T* row = const_cast<T*>(gy_in.at(n + j, 0, lo, 0));
          for (int64_t q = 0; q < Mj; ++q, ++i) s.gyrow[i] = row + q * gch;
        }
        gy_band = gy_in.at(n, 0, b.h0, 0);
      } else {
        // Every pixel is written below but an odd last row / column a pool leaves out.
        if (pb.pool && (pb.H % 2 || pb.W % 2))
          s.gy.assign(Mh * gch, T(0));
        else
          s.gy.resize(Mh * gch);
        for (int64_t j = 0; j < b.g; ++j) {
          const int64_t nj = n + j;
          T* gyj = s.gy.data() + j * Mj * gch;
          if (pb.pool) {
            const int64_t Hp = pb.H / 2, Wq = pb.W / 2;
            for (int64_t ph = lo / 2; ph < std::min(Hp, (hi + 1) / 2); ++ph)
              for (int64_t pw = 0; pw < Wq; ++pw) {
                const T* g = gy_in.at(nj, 0, ph, pw);
                const uint8_t* code = idx + ((nj * Hp + ph) * Wq + pw) * gch;
                T* win[4];  // the 2x2 window's rows in the scratch (null: outside [lo, hi))
                for (int k = 0; k < 4; ++k) {
                  const int64_t h = 2 * ph + k / 2, w = 2 * pw + k % 2;
                  win[k] = (h >= lo && h < hi) ? gyj + ((h - lo) * pb.W + w) * gch : nullptr;
                }
                unpool_pixel<T>(isa, g, gy_in.sc, code, gch, win);
              }
          } else {
            // Read along the input's rows (an NCHW gradient: one plane row per channel),
            // write transposed into the cache-resident scratch.
            for (int64_t h = lo; h < hi; ++h)
              planes_to_rows<T>(isa, gy_in.at(nj, 0, h, 0), gy_in.sc, gy_in.sw, pb.W, gch,
                                gyj + (h - lo) * pb.W * gch);
          }
        }
        for (int64_t i = 0; i < Mh; ++i) s.gyrow[i] = s.gy.data() + i * gch;
        gy_band = s.gy.data() + (b.h0 - lo) * pb.W * gch;
      }

      if (half_bits) {
        const int64_t Mb = b.rows() * pb.W;  // one image's band pixels
        s.go.resize(M * pb.r1);
        compact_rows(s.orow, s.go.data(), pb.r1, M);
        s.gprow.resize(M);
        for (int64_t j = 0, i = 0; j < b.g; ++j)
          for (int64_t q = 0; q < Mb; ++q, ++i) s.gprow[i] = s.gyrow[j * Mj + (b.h0 - lo) * pb.W + q];
        gemm_rows_streamed<T>(isa, M, pb.r3, pb.cout, s.gprow.data(), s.orow.data(), P.g4_b.data(), pb.r3);
        if (need.w4) {  // dG4^T += o^T gy, o = G1(s) recomputed compact
          s.f.p.resize(M * pb.r1);
          if (!g1_band_compact<T>(pb, P, b, n, s.f.p.data())) continue;
          s.tmp.resize(pb.r3);
          crow.resize(pb.r3);
          for (int64_t c = 0; c < pb.r3; ++c) {
            s.tmp[c] = s.f.p.data() + c;
            crow[c] = acc + L.taps_a + L.taps_b + c * pb.cout;
          }
          gemm_rows<T>(isa, pb.r3, pb.cout, M, s.tmp.data(), pb.r3, kZeroTap, 1, gy_band, pb.cout, crow.data(),
                       true);
        }
      } else {
        // gp = G4^T gy (the gradient of the middle's output), padded, rows [lo, hi).
        s.gp.resize(b.buffer_pixels() * pb.r3);
        std::memset(s.gp.data(), 0, sizeof(T) * s.gp.size());
        padded_rows(s.gprow, s.gp.data(), pb.r3, b, lo, hi);
        if (pb.has_g4) {
          gemm_rows_streamed<T>(isa, Mh, pb.r3, pb.cout, s.gyrow.data(), s.gprow.data(), P.g4_b.data(), pb.r3);
        } else {
          for (int64_t i = 0; i < Mh; ++i) std::memcpy(s.gprow[i], s.gyrow[i], sizeof(T) * pb.r3);
        }

        // dG4^T[c][o] += sum over band pixels of mid[pixel][c] * gy[pixel][o], the middle
        // recomputed (5r^2 MACs a pixel for PTT; o itself at a half step).
        if (pb.has_g4 && need.w4) {
          middle_forward<T>(isa, pb, P, b, full, s.f, mrows, nullptr);
          if (pb.parallel && !full) {  // make the half step's middle (o) compact
            s.f.p.resize(M * pb.r3);
            for (int64_t i = 0; i < M; ++i) std::memcpy(s.f.p.data() + i * pb.r3, mrows[i], sizeof(T) * pb.r3);
          }
          const T* mid = s.f.p.data();
          s.tmp.resize(pb.r3);
          crow.resize(pb.r3);
          for (int64_t c = 0; c < pb.r3; ++c) {
            s.tmp[c] = const_cast<T*>(mid) + c;
            crow[c] = acc + L.taps_a + L.taps_b + c * pb.cout;
          }
          gemm_rows<T>(isa, pb.r3, pb.cout, M, s.tmp.data(), pb.r3, kZeroTap, 1, gy_band, pb.cout, crow.data(), true);
        }

        // Band rows of the gradient of o: the channels-last output tensor, or (tt_conv)
        // a scratch that G1's backward reads right after.
        std::vector<T*>& gorow = s.orow;
        T* go_base = go_out != nullptr ? go_out + (n * pb.H + b.h0) * pb.W * pb.r1 : nullptr;
        if (pb.bits) {
          s.go.resize(M * pb.r1);
          go_base = s.go.data();
        }
        if (go_base != nullptr) compact_rows(gorow, go_base, pb.r1, M);
        padded_rows(gp_band, s.gp.data(), pb.r3, b, b.h0, b.h1);

        if (pb.parallel && !full) {  // half step: go = gp
          if (need_go)
            for (int64_t i = 0; i < M; ++i) std::memcpy(gorow[i], gp_band[i], sizeof(T) * pb.r1);
        } else if (pb.parallel) {
          if (need_taps)
            tap_weight_grad<T>(isa, b, s.f.opad.data(), pb.r1, ptt_taps(b, pb.r1, 1), s.gp.data(), pb.r1, acc, s.tmp,
                               s.g2row);
          if (need_go) {
            const Taps tb = ptt_taps(b, pb.r1, -1);
            gemm_rows<T>(isa, M, pb.r1, pb.r1, gp_band.data(), 1, tb.off, tb.n, P.ptt_b.data(), pb.r1, gorow.data(),
                         false);
          }
        } else {
          // STT: mid1 = G2(o) (band rows) for dW3; g2 = G3^T gp (rows [lo, hi)) for dW2 and go.
          if (need.w3) {
            s.f.mid.assign(b.buffer_pixels() * pb.r2, T(0));
            padded_rows(s.f.crow, s.f.mid.data(), pb.r2, b, b.h0, b.h1);
            padded_rows(s.f.arow, s.f.opad.data(), pb.r1, b, b.h0, b.h1);
            const Taps tv = vertical_taps(b, pb.r1, 1);
            gemm_rows<T>(isa, M, pb.r2, pb.r1, s.f.arow.data(), 1, tv.off, tv.n, P.g2_f.data(), pb.r2,
                         s.f.crow.data(), false);
            tap_weight_grad<T>(isa, b, s.f.mid.data(), pb.r2, horizontal_taps(pb.r2, 1), s.gp.data(), pb.r3,
                               acc + L.taps_a, s.tmp, s.g2row);
          }
          if (need_go || need.w2) {
            s.g2.assign(b.buffer_pixels() * pb.r2, T(0));
            padded_rows(s.g2row, s.g2.data(), pb.r2, b, lo, hi);
            const Taps th = horizontal_taps(pb.r3, -1);
            gemm_rows<T>(isa, Mh, pb.r2, pb.r3, s.gprow.data(), 1, th.off, th.n, P.g3_b.data(), pb.r2,
                         s.g2row.data(), false);
            if (need.w2)
              tap_weight_grad<T>(isa, b, s.f.opad.data(), pb.r1, vertical_taps(b, pb.r1, 1), s.g2.data(), pb.r2, acc,
                                 s.tmp, s.gyrow);
            if (need_go) {
              padded_rows(g2_band, s.g2.data(), pb.r2, b, b.h0, b.h1);
              const Taps tv = vertical_taps(b, pb.r2, -1);
              gemm_rows<T>(isa, M, pb.r1, pb.r2, g2_band.data(), 1, tv.off, tv.n, P.g2_b.data(), pb.r1,
                           gorow.data(), false);
            }
          }
        }
      }
      if (!pb.bits) continue;

      // G1's backward (tt_conv). Spikes' gradient, channels-last like the spikes the
      // models feed (and the LIF that produced them reads its gradient in): one row of
      // channels per pixel, gx[pixel][:] = go[pixel][:] . G1. (NCHW planes made every
      // LIF and BN+LIF backward copy the gradient to channels-last first: 8% of a PTT
      // MS-ResNet18 step.)
      const uint32_t* A = pb.bits + (n * pb.H + b.h0) * pb.W * pb.words;
      if (need.x) {
        const int64_t Mb = b.rows() * pb.W;  // one image's pixels
        s.tmp.resize(Mb);
        crow.resize(Mb);
        for (int64_t j = 0; j < b.g; ++j) {
          for (int64_t q = 0; q < Mb; ++q) {
            s.tmp[q] = s.go.data() + (j * Mb + q) * pb.r1;
            crow[q] = gx_out + (((n + j) * pb.H + b.h0) * pb.W + q) * pb.cin;
          }
          gemm_rows<T>(isa, Mb, pb.cin, pb.r1, s.tmp.data(), 1, kZeroTap, 1, P.g1.data(), pb.cin, crow.data(), false);
        }
      }
      if (need.g1) g1_grad_scatter<T>(pb, A, M, s.go.data(), acc + L.taps_a + L.taps_b + L.g4);
    }
  });
}

// ---------------------------------------------------------------- checks and ops
void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor here, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_cores(const at::Tensor& o, const at::Tensor& w2, const at::Tensor& w3, const char* op, bool parallel) {
  check_float(o, op, "o");
  TORCH_CHECK(o.dim() == 4, op, ": o must be [N, r, H, W], got ", o.sizes());
  TORCH_CHECK(w2.dim() == 4 && w2.size(2) == 3 && w2.size(3) == 1 && w2.size(1) == o.size(1), op,
              ": w2 must be [r2, r1, 3, 1] with r1 = o's channels (", o.size(1), "), got ", w2.sizes());
  TORCH_CHECK(w3.dim() == 4 && w3.size(2) == 1 && w3.size(3) == 3 && w3.size(1) == w2.size(0), op,
              ": w3 must be [r3, r2, 1, 3] with r2 = w2's outputs (", w2.size(0), "), got ", w3.sizes());
  if (parallel)
    TORCH_CHECK(w2.size(0) == o.size(1) && w3.size(0) == o.size(1) && w3.size(1) == o.size(1), op,
                ": the parallel form needs w2 and w3 both [r, r, ...] with r = ", o.size(1), ", got ", w2.sizes(),
                " and ", w3.sizes());
  TORCH_CHECK(w2.scalar_type() == o.scalar_type() && w3.scalar_type() == o.scalar_type(), op,
              ": o, w2, w3 must share a dtype, got ", o.scalar_type(), ", ", w2.scalar_type(), ", ",
              w3.scalar_type());
}

at::TensorOptions cl_opts(const at::Tensor& like) {
  return like.options().memory_format(at::MemoryFormat::ChannelsLast);
}

Problem make_problem(const at::Tensor& o, const at::Tensor& w2, const at::Tensor& w3, const at::Tensor* w4,
                     bool parallel, bool pool, const c10::List<bool>& schedule) {
  Problem p;
  p.N = o.size(0);
  p.H = o.size(2);
  p.W = o.size(3);
  p.r1 = o.size(1);
  p.r2 = w2.size(0);
  p.r3 = w3.size(0);
  p.has_g4 = w4 != nullptr;
  p.cout = w4 ? w4->size(0) : p.r3;
  p.parallel = parallel;
  p.pool = pool;
  p.full = image_steps(p.N, schedule);
  p.steps = std::max<int64_t>(1, (int64_t)schedule.size());
  choose_bands(p, o.element_size());
  return p;
}

at::Tensor ptt_conv_cpu(const at::Tensor& o, const at::Tensor& w2, const at::Tensor& w3) {
  const char* op = "snnops.ptt_conv";
  check_cores(o, w2, w3, op, true);
  at::Tensor out = cached_empty(o.sizes(), cl_opts(o));
  if (out.numel() == 0) return out;
  const Problem pb = make_problem(o, w2, w3, nullptr, true, false, c10::List<bool>());
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "ptt_conv", [&] {
    const auto P = pack_weights<scalar_t>(w2.contiguous(), w3.contiguous(), at::Tensor(), true, false, false);
    block_forward<scalar_t>(pb, P, cview4<scalar_t>(o), out.data_ptr<scalar_t>(), nullptr);
  });
  return out;
}

template <typename T>
void write_weight_grads(const Problem& pb, const GradSlots<T>& slots, at::Tensor& gw2, at::Tensor& gw3,
                        at::Tensor* gw4, bool need2, bool need3, bool need4, at::Tensor* gg1 = nullptr) {
  const AccLayout L = acc_layout(pb);
  // The filled slots summed in slot order (the first one copied, not added to zeros).
  Buf<T> acc;
  acc.alloc(L.total);
  at::parallel_for(0, L.total, 16384, [&](int64_t i0, int64_t i1) {
    bool first = true;
    for (int64_t s = 0; s < slots.count; ++s) {
      if (!slots.used[s]) continue;
      const T* a = slots.data.data() + s * L.total;
      if (first)
        std::copy(a + i0, a + i1, acc.data() + i0);
      else
        for (int64_t i = i0; i < i1; ++i) acc[i] += a[i];
      first = false;
    }
    if (first) std::fill(acc.data() + i0, acc.data() + i1, T(0));
  });
  T* g2 = need2 ? gw2.data_ptr<T>() : nullptr;  // [r2][r1][3]
  T* g3 = need3 ? gw3.data_ptr<T>() : nullptr;  // [r3][r2][3]
  // The transposed writes, in tiles (r = 176: 335 K values).
  if (pb.parallel) {
    const int64_t r = pb.r1;
    // acc rows (t, ci), columns co: sum of gp[co] * o_shift[ci]; each tap carries 1/2.
    // Each tap transposed to [co][ci] first, then interleaved into [co][ci][3] in a row pass.
    if (g2 || g3) {
      Buf<T> u;
      u.alloc(5 * r * r);
      for (int t = 0; t < 5; ++t) transpose_matrix<T>(acc.data() + t * r * r, r, r, r, u.data() + t * r * r, r);
      at::parallel_for(0, r, std::max<int64_t>(1, 2048 / std::max<int64_t>(r, 1)), [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          for (int64_t ci = 0; ci < r; ++ci) {
            auto a = [&](int t) { return u[(t * r + co) * r + ci] / 2; };
            if (g2) {
              T* d = g2 + (co * r + ci) * 3;
              d[0] = a(0), d[1] = a(4), d[2] = a(1);
            }
            if (g3) {
              T* d = g3 + (co * r + ci) * 3;
              d[0] = a(2), d[1] = a(4), d[2] = a(3);
            }
          }
      });
    }
  } else {
    if (g2)
      tiled(pb.r2, pb.r1, [&](int64_t b, int64_t a) {
        for (int t = 0; t < 3; ++t) g2[(b * pb.r1 + a) * 3 + t] = acc[(t * pb.r1 + a) * pb.r2 + b];
      });
    if (g3)
      tiled(pb.r3, pb.r2, [&](int64_t c, int64_t b) {
        for (int t = 0; t < 3; ++t) g3[(c * pb.r2 + b) * 3 + t] = acc[L.taps_a + (t * pb.r2 + b) * pb.r3 + c];
      });
  }
  if (gw4 && need4) {
    T* g4 = gw4->data_ptr<T>();  // [cout][r3]
    transpose_matrix<T>(acc.data() + L.taps_a + L.taps_b, pb.r3, pb.cout, pb.cout, g4, pb.r3);
  }
  if (gg1) {
    T* g1 = gg1->data_ptr<T>();  // [r1][cin]
    const T* a = acc.data() + L.taps_a + L.taps_b + L.g4;
    transpose_matrix<T>(a, pb.cin, pb.r1, pb.r1, g1, pb.cin);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ptt_conv_bwd_cpu(const at::Tensor& grad, const at::Tensor& o,
                                                                const at::Tensor& w2, const at::Tensor& w3,
                                                                std::array<bool, 3> mask) {
  const char* op = "snnops.ptt_conv_bwd";
  check_cores(o, w2, w3, op, true);
  check_float(grad, op, "grad");
  TORCH_CHECK(grad.sizes() == o.sizes(), op, ": grad must have o's shape ", o.sizes(), ", got ", grad.sizes());
  at::Tensor go = mask[0] ? cached_empty(o.sizes(), cl_opts(o)) : at::empty({0}, o.options());
  at::Tensor gw2 = mask[1] ? cached_zeros(w2.sizes(), w2.options()) : at::empty({0}, w2.options());
  at::Tensor gw3 = mask[2] ? cached_zeros(w3.sizes(), w3.options()) : at::empty({0}, w3.options());
  if (o.numel() == 0 || !(mask[0] || mask[1] || mask[2])) return {go, gw2, gw3};
  const Problem pb = make_problem(o, w2, w3, nullptr, true, false, c10::List<bool>());
  at::Tensor g = grad.to(o.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "ptt_conv_bwd", [&] {
    const auto P = pack_weights<scalar_t>(w2.contiguous(), w3.contiguous(), at::Tensor(), true, false, true);
    GradSlots<scalar_t> acc;
    scalar_t* gop = mask[0] ? go.data_ptr<scalar_t>() : nullptr;
    block_backward<scalar_t>(pb, P, cview4<scalar_t>(g), nullptr, cview4<scalar_t>(o),
                             Grads<scalar_t>{mask[0], mask[1], mask[2], false}, gop, nullptr, acc);
    write_weight_grads<scalar_t>(pb, acc, gw2, gw3,
                                 nullptr, mask[1], mask[2], false);
  });
  return {go, gw2, gw3};
}

void check_block(const at::Tensor& o, const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& w4,
                 bool parallel, const c10::List<bool>& schedule, const char* op) {
  check_cores(o, w2, w3, op, parallel);
  TORCH_CHECK(w4.dim() == 4 && w4.size(1) == w3.size(0) && w4.size(2) == 1 && w4.size(3) == 1, op,
              ": w4 must be [Cout, r3, 1, 1] with r3 = ", w3.size(0), ", got ", w4.sizes());
  TORCH_CHECK(w4.scalar_type() == o.scalar_type(), op, ": w4 must have o's dtype ", o.scalar_type());
  if (!parallel)
    for (size_t t = 0; t < schedule.size(); ++t)
      TORCH_CHECK(schedule.get(t), op, ": half steps (a schedule with False) need the parallel form");
}

std::tuple<at::Tensor, at::Tensor> tt_block_cpu(const at::Tensor& o, const at::Tensor& w2, const at::Tensor& w3,
                                                const at::Tensor& w4, bool parallel, c10::List<bool> schedule,
                                                bool pool) {
  const char* op = "snnops.tt_block";
  check_block(o, w2, w3, w4, parallel, schedule, op);
  const int64_t N = o.size(0), H = o.size(2), W = o.size(3), C = w4.size(0);
  at::Tensor y = pool ? cached_empty({N, C, H / 2, W / 2}, cl_opts(o)) : cached_empty({N, C, H, W}, cl_opts(o));
  at::Tensor idx = pool ? cached_empty({N, C, H / 2, W / 2}, cl_opts(o).dtype(at::kByte)) : at::empty({0}, o.options().dtype(at::kByte));
  if (N == 0 || H == 0 || W == 0 || C == 0) return {y, idx};
  const Problem pb = make_problem(o, w2, w3, &w4, parallel, pool, schedule);
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "tt_block", [&] {
    const auto P = pack_weights<scalar_t>(w2.contiguous(), w3.contiguous(), w4.contiguous(), parallel, true, false);
    block_forward<scalar_t>(pb, P, cview4<scalar_t>(o), y.data_ptr<scalar_t>(),
                            pool ? idx.data_ptr<uint8_t>() : nullptr);
  });
  return {y, idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tt_block_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& o, const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& w4,
    const at::Tensor& pool_index, bool parallel, c10::List<bool> schedule, bool pool, std::array<bool, 4> mask) {
  const char* op = "snnops.tt_block_bwd";
  check_block(o, w2, w3, w4, parallel, schedule, op);
  check_float(grad_y, op, "grad_y");
  const int64_t N = o.size(0), H = o.size(2), W = o.size(3), C = w4.size(0);
  const std::vector<int64_t> ys = pool ? std::vector<int64_t>{N, C, H / 2, W / 2} : std::vector<int64_t>{N, C, H, W};
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef(ys), op, ": grad_y must be ", at::IntArrayRef(ys), ", got ",
              grad_y.sizes());
  at::Tensor pidx;
  if (pool) {
    TORCH_CHECK(pool_index.scalar_type() == at::kByte && pool_index.sizes() == at::IntArrayRef(ys), op,
                ": pool_index must be uint8 ", at::IntArrayRef(ys), ", got ", pool_index.scalar_type(), " ",
                pool_index.sizes());
    pidx = pool_index.contiguous(at::MemoryFormat::ChannelsLast);
  }
  at::Tensor go = mask[0] ? cached_empty(o.sizes(), cl_opts(o)) : at::empty({0}, o.options());
  at::Tensor gw2 = mask[1] ? cached_zeros(w2.sizes(), w2.options()) : at::empty({0}, w2.options());
  at::Tensor gw3 = mask[2] ? cached_zeros(w3.sizes(), w3.options()) : at::empty({0}, w3.options());
  at::Tensor gw4 = mask[3] ? cached_zeros(w4.sizes(), w4.options()) : at::empty({0}, w4.options());
  if (o.numel() == 0 || C == 0 || !(mask[0] || mask[1] || mask[2] || mask[3])) {
    if (mask[0]) go.zero_();
    return {go, gw2, gw3, gw4};
  }
  const Problem pb = make_problem(o, w2, w3, &w4, parallel, pool, schedule);
  at::Tensor g = grad_y.to(o.scalar_type());
  if (pool) g = g.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "tt_block_bwd", [&] {
    const auto P = pack_weights<scalar_t>(w2.contiguous(), w3.contiguous(), w4.contiguous(), parallel, true, true);
    GradSlots<scalar_t> acc;
    scalar_t* gop = mask[0] ? go.data_ptr<scalar_t>() : nullptr;
    block_backward<scalar_t>(pb, P, cview4<scalar_t>(g), pool ? pidx.data_ptr<uint8_t>() : nullptr,
                             cview4<scalar_t>(o), Grads<scalar_t>{mask[0], mask[1], mask[2], mask[3]}, gop, nullptr,
                             acc);
    write_weight_grads<scalar_t>(pb, acc, gw2, gw3,
                                 &gw4, mask[1], mask[2], mask[3]);
  });
  return {go, gw2, gw3, gw4};
}

// ---------------------------------------------------------------- tt_conv: the layer from packed spikes
struct ConvShape {
  int64_t N, H, W, cin;
};

ConvShape check_conv(const at::Tensor& packed, const at::Tensor& g1, const at::Tensor& w2, const at::Tensor& w3,
                     const at::Tensor& w4, bool parallel, const c10::List<bool>& schedule, const char* op) {
  TORCH_CHECK(packed.device().is_cpu(), op, ": packed must be a CPU tensor here, got ", packed.device());
  TORCH_CHECK(packed.scalar_type() == at::kInt && packed.dim() == 4, op,
              ": packed spikes must be int32 [N, H, W, ceil(Cin/32)], got ", packed.scalar_type(), " ",
              packed.sizes());
  check_float(g1, op, "g1");
  TORCH_CHECK(g1.dim() == 4 && g1.size(2) == 1 && g1.size(3) == 1, op, ": g1 must be [r1, Cin, 1, 1], got ",
              g1.sizes());
  const int64_t cin = g1.size(1);
  TORCH_CHECK(packed.size(3) == ceil_div(cin, 32), op, ": packed spikes have ", packed.size(3),
              " words per pixel but g1 expects Cin = ", cin, " channels, ceil(Cin/32) = ", ceil_div(cin, 32));
  // check the rest as tt_block would on an o of g1's rank
  at::Tensor o_like = at::empty({0, g1.size(0), 0, 0}, g1.options());
  check_block(o_like, w2, w3, w4, parallel, schedule, op);
  return {packed.size(0), packed.size(1), packed.size(2), cin};
}

Problem conv_problem(const ConvShape& cs, const at::Tensor& packed, const at::Tensor& g1, const at::Tensor& w2,
                     const at::Tensor& w3, const at::Tensor& w4, bool parallel, bool pool,
                     const c10::List<bool>& schedule) {
  Problem p;
  p.N = cs.N;
  p.H = cs.H;
  p.W = cs.W;
  p.r1 = g1.size(0);
  p.r2 = w2.size(0);
  p.r3 = w3.size(0);
  p.has_g4 = true;
  p.cout = w4.size(0);
  p.parallel = parallel;
  p.pool = pool;
  p.full = image_steps(p.N, schedule);
  p.steps = std::max<int64_t>(1, (int64_t)schedule.size());
  p.bits = reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>());
  p.words = packed.size(3);
  p.cin = cs.cin;
  choose_bands(p, g1.element_size());
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tt_conv_cpu(
    const std::optional<at::Tensor>& packed_opt, const std::optional<at::Tensor>& x_opt, const at::Tensor& g1,
    const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& w4, bool parallel, c10::List<bool> schedule,
    bool pool) {
  const char* op = "snnops.tt_conv";
  const bool has_packed = packed_opt.has_value() && packed_opt->defined();
  const bool has_x = x_opt.has_value() && x_opt->defined();
  TORCH_CHECK(has_packed || has_x, op, ": give the packed spikes, the float spikes x, or both");
  at::Tensor x, packed;
  if (has_x) {
    x = *x_opt;
    check_float(x, op, "x");
    TORCH_CHECK(x.dim() == 4 && x.size(1) == g1.size(1), op, ": x must be the float spikes [N, Cin = ", g1.size(1),
                ", H, W], got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == g1.scalar_type(), op, ": x must have g1's dtype ", g1.scalar_type(), ", got ",
                x.scalar_type());
  }
  if (has_packed) {
    packed = packed_opt->contiguous();
  } else {
    // packed here, inside the band loop; returned for the backward
    packed = cached_empty({x.size(0), x.size(2), x.size(3), ceil_div(g1.size(1), 32)}, g1.options().dtype(at::kInt));
  }
  const ConvShape cs = check_conv(packed, g1, w2, w3, w4, parallel, schedule, op);
  if (has_x)
    TORCH_CHECK(x.size(0) == cs.N && x.size(2) == cs.H && x.size(3) == cs.W, op, ": x ", x.sizes(),
                " and the packed spikes ", packed.sizes(), " disagree");
  const int64_t C = w4.size(0);
  auto opts = g1.options().memory_format(at::MemoryFormat::ChannelsLast);
  at::Tensor y = pool ? cached_empty({cs.N, C, cs.H / 2, cs.W / 2}, opts) : cached_empty({cs.N, C, cs.H, cs.W}, opts);
  at::Tensor idx = pool ? cached_empty({cs.N, C, cs.H / 2, cs.W / 2}, opts.dtype(at::kByte))
                        : at::empty({0}, g1.options().dtype(at::kByte));
  at::Tensor packed_out = has_packed ? at::empty({0}, g1.options().dtype(at::kInt)) : packed;
  if (cs.N == 0 || cs.H == 0 || cs.W == 0) return {y, idx, packed_out};
  at::Tensor xc;
  std::atomic<int64_t> bad{-1};
  Problem pb = conv_problem(cs, packed, g1, w2, w3, w4, parallel, pool, schedule);
  if (!has_packed) {
    // Spikes from a channels-last network are packed as they lie; any other layout is
    // copied to NCHW first (into a cached block: no fresh pages to fault in).
    pb.spikes_cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    xc = pb.spikes_cl ? x : cached_contiguous(x, x.scalar_type());
    pb.spikes = xc.data_ptr();
    pb.bad_spike = &bad;
  }
  AT_DISPATCH_FLOATING_TYPES(g1.scalar_type(), "tt_conv", [&] {
    auto P = pack_weights<scalar_t>(w2.contiguous(), w3.contiguous(), w4.contiguous(), parallel, true, false);
    pack_g1<scalar_t>(P, g1.contiguous());
    pack_g41<scalar_t>(pb, P);
    block_forward<scalar_t>(pb, P, View4<const scalar_t>{nullptr, 0, 0, 0, 0}, y.data_ptr<scalar_t>(),
                            pool ? idx.data_ptr<uint8_t>() : nullptr);
  });
  const int64_t at_ = bad.load();
  if (at_ >= 0) {
    const int64_t hw = cs.H * cs.W;
    const int64_t n = at_ / (cs.cin * hw), c = (at_ / hw) % cs.cin, h = (at_ % hw) / cs.W, w = at_ % cs.W;
    TORCH_CHECK(false, op, ": x must hold 0/1 spikes; found ", xc.index({n, c, h, w}).item<double>(), " at [", n,
                ", ", c, ", ", h, ", ", w, "]");
  }
  return {y, idx, packed_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tt_conv_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& packed_in, const at::Tensor& g1, const at::Tensor& w2,
    const at::Tensor& w3, const at::Tensor& w4, const at::Tensor& pool_index, bool parallel,
    c10::List<bool> schedule, bool pool, std::array<bool, 5> mask) {
  const char* op = "snnops.tt_conv_bwd";
  const ConvShape cs = check_conv(packed_in, g1, w2, w3, w4, parallel, schedule, op);
  check_float(grad_y, op, "grad_y");
  const int64_t C = w4.size(0);
  const std::vector<int64_t> ys = pool ? std::vector<int64_t>{cs.N, C, cs.H / 2, cs.W / 2}
                                       : std::vector<int64_t>{cs.N, C, cs.H, cs.W};
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef(ys), op, ": grad_y must be ", at::IntArrayRef(ys), ", got ",
              grad_y.sizes());
  at::Tensor pidx;
  if (pool) {
    TORCH_CHECK(pool_index.scalar_type() == at::kByte && pool_index.sizes() == at::IntArrayRef(ys), op,
                ": pool_index must be uint8 ", at::IntArrayRef(ys), ", got ", pool_index.scalar_type(), " ",
                pool_index.sizes());
    pidx = pool_index.contiguous(at::MemoryFormat::ChannelsLast);
  }
  auto empty = [&](const at::Tensor& like) { return at::empty({0}, like.options()); };
  at::Tensor gx = mask[0] ? cached_empty({cs.N, cs.cin, cs.H, cs.W}, g1.options().memory_format(at::MemoryFormat::ChannelsLast))
                          : empty(g1);
  at::Tensor gg1 = mask[1] ? cached_zeros(g1.sizes(), g1.options()) : empty(g1);
  at::Tensor gw2 = mask[2] ? cached_zeros(w2.sizes(), w2.options()) : empty(w2);
  at::Tensor gw3 = mask[3] ? cached_zeros(w3.sizes(), w3.options()) : empty(w3);
  at::Tensor gw4 = mask[4] ? cached_zeros(w4.sizes(), w4.options()) : empty(w4);
  if (cs.N == 0 || cs.H == 0 || cs.W == 0 || C == 0 || !(mask[0] || mask[1] || mask[2] || mask[3] || mask[4]))
    return {gx, gg1, gw2, gw3, gw4};
  at::Tensor packed = packed_in.contiguous();
  const Problem pb = conv_problem(cs, packed, g1, w2, w3, w4, parallel, pool, schedule);
  at::Tensor g = grad_y.to(g1.scalar_type());
  if (pool) g = g.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(g1.scalar_type(), "tt_conv_bwd", [&] {
    auto P = pack_weights<scalar_t>(w2.contiguous(), w3.contiguous(), w4.contiguous(), parallel, true, true);
    pack_g1<scalar_t>(P, g1.contiguous());
    GradSlots<scalar_t> acc;
    Grads<scalar_t> need{false, mask[2], mask[3], mask[4]};
    need.x = mask[0];
    need.g1 = mask[1];
    block_backward<scalar_t>(pb, P, cview4<scalar_t>(g), pool ? pidx.data_ptr<uint8_t>() : nullptr,
                             View4<const scalar_t>{nullptr, 0, 0, 0, 0}, need, nullptr,
                             mask[0] ? gx.data_ptr<scalar_t>() : nullptr, acc);
    write_weight_grads<scalar_t>(pb, acc, gw2, gw3,
                                 &gw4, mask[2], mask[3], mask[4], mask[1] ? &gg1 : nullptr);
  });
  return {gx, gg1, gw2, gw3, gw4};
}

}  // namespace

TORCH_LIBRARY_IMPL(snnops, CPU, m) {
  m.impl("ptt_conv", &ptt_conv_cpu);
  m.impl("ptt_conv_bwd", &ptt_conv_bwd_cpu);
  m.impl("tt_block", &tt_block_cpu);
  m.impl("tt_block_bwd", &tt_block_bwd_cpu);
  m.impl("tt_conv", &tt_conv_cpu);
  m.impl("tt_conv_bwd", &tt_conv_bwd_cpu);
}

}  // namespace snnops
