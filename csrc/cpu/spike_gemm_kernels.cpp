// Raw kernels of the spike GEMMs: see cpu/spike_gemm_kernels.h. No torch headers.
//
// AVX2 bit-scan, per task (rows x a chunk of 64 or 128 columns):
//   1. the B rows of a block of c are made contiguous in a panel (copied, or transposed
//      with 8x8 shuffles when B is W^T), or read in place when B is already row-major;
//   2. per row of A, the set-bit positions of the block's words are written to an index
//      list, eight per 64-bit word regardless of its count (tzcnt/blsr, no loop exit to
//      mispredict on the common sparse word);
//   3. the columns are held in 8 or 16 AVX2 registers while the indexed panel rows are
//      added (one load+add per 8 floats: two per cycle, the bound of this loop).
// AVX-512 (4 or 8 zmm) adds: index lists by vpcompressd, 16x16 transposes of W, the nibble
// scan (a table of the 16 subset sums of each 4 panel rows, one table row per non-zero
// nibble), packing fused row by row into the scan for float spikes, and the subset-sum
// tables of table_rows_task / table_dw_task (32 KiB per word, 8 table rows per word of a
// row, work independent of the density) for dense spikes. outer_dw_task (dW by outer
// products) also has AVX2 and portable versions. Measured reasons: docs/spike_gemm.md.
#include "cpu/spike_gemm_kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <cstring>

#include "cpu/simd.h"
#include "cpu/spike_pack.h"
#include "cpu/transpose.h"

#if SNN_HAVE_AVX2
#define SNN_AVX2_BITS __attribute__((target("avx2,fma,popcnt,bmi,bmi2")))
#define SNN_HAVE_AVX512 1
#define SNN_AVX512_BITS __attribute__((target("avx512f,avx2,fma,popcnt,bmi,bmi2")))
#define SNN_AVX512_POPCNT __attribute__((target("avx512f,avx512vpopcntdq,avx2,fma,popcnt,bmi,bmi2")))
#else
#define SNN_HAVE_AVX512 0
#endif

namespace snnops {
namespace spike_kernels {
namespace {

// Panel of copied B rows: 128 KiB stays in L2 next to the output tile.
constexpr int64_t kPanelBytes = 128 * 1024;
// In-place row-major B (dY for dW): bytes of B rows per block (L2; 32 KiB to 256 KiB
// measured within noise of each other on gemm-conv1x1).
constexpr int64_t kDirectBytes = 128 * 1024;
// Subset-sum tables of the nibble scan (4x the B rows they come from): L2.
constexpr int64_t kTableBytes = 512 * 1024;
// Portable kernel's column chunk.
constexpr int64_t kGenericChunk = 64;

inline int64_t words_of(int64_t c) { return (c + 31) / 32; }

inline uint32_t last_word_mask(int64_t C) {
  const int64_t rem = C % 32;
  return rem == 0 ? 0xFFFFFFFFu : ((1u << rem) - 1u);
}

// panel[c * NC + j] = B[c0 + c, n0 + j] for c < cc, j < nn; zero for j in [nn, NC).
template <typename T>
void build_panel(const BitGemm<T>& g, int64_t c0, int64_t cc, int64_t n0, int64_t nn, int64_t NC, T* panel) {
  if (g.ldb_c == 1) {
    for (int64_t j = 0; j < nn; ++j) {
      const T* src = g.B + c0 + (n0 + j) * g.ldb_n;
      for (int64_t c = 0; c < cc; ++c) panel[c * NC + j] = src[c];
    }
  } else {
    for (int64_t c = 0; c < cc; ++c) {
      const T* src = g.B + (c0 + c) * g.ldb_c + n0 * g.ldb_n;
      for (int64_t j = 0; j < nn; ++j) panel[c * NC + j] = src[j * g.ldb_n];
    }
  }
  if (nn < NC)
    for (int64_t c = 0; c < cc; ++c) std::fill(panel + c * NC + nn, panel + (c + 1) * NC, T(0));
}

template <typename T>
void write_tile(const BitGemm<T>& g, const T* tile, int64_t NC, int64_t r0, int64_t rows, int64_t n0, int64_t nn) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < nn; ++j) g.out[(r0 + r) * g.ldo_r + (n0 + j) * g.ldo_n] = tile[r * NC + j];
}

// ------------------------------------------------------------------ portable

// Fused packing of rows [r0, r1): -1 or r * C + k of the first bad value.
template <typename T>
int64_t pack_task_rows(const BitGemm<T>& g, int64_t r0, int64_t r1, bool avx2) {
  uint32_t* dst = const_cast<uint32_t*>(g.A);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t bad = pack_row(g.src + r * g.src_ld, g.C, dst + r * g.lda, avx2);
    if (bad >= 0) return r * g.C + bad;
  }
  return -1;
}

template <typename T>
int64_t task_generic(const BitGemm<T>& g, int64_t r0, int64_t r1, int64_t n0, AlignedVector<T>& panel,
                     AlignedVector<T>& tile) {
  if (g.src) {
    const int64_t bad = pack_task_rows(g, r0, r1, false);
    if (bad >= 0) return bad;
  }
  constexpr int64_t NC = kGenericChunk;
  const int64_t nn = std::min(NC, g.N - n0);
  const int64_t CW = words_of(g.C);
  const uint32_t lastmask = last_word_mask(g.C);
  const int64_t rows = r1 - r0;
  tile.assign(rows * NC, T(0));
  if (g.bias)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < nn; ++j) tile[r * NC + j] = g.bias[n0 + j];
  const int64_t cb = std::max<int64_t>(32, (kPanelBytes / (NC * (int64_t)sizeof(T))) / 32 * 32);
  panel.resize(std::min(cb, std::max<int64_t>(g.C, 1)) * NC);
  for (int64_t c0 = 0; c0 < g.C; c0 += cb) {
    const int64_t cc = std::min(cb, g.C - c0);
    build_panel<T>(g, c0, cc, n0, nn, NC, panel.data());
    const int64_t w0 = c0 / 32, w1 = words_of(c0 + cc);
    for (int64_t r = r0; r < r1; ++r) {
      T* acc = tile.data() + (r - r0) * NC;
      const uint32_t* a = g.A + r * g.lda;
      for (int64_t w = w0; w < w1; ++w) {
        uint32_t bits = a[w];
        if (w == CW - 1) bits &= lastmask;
        const T* base = panel.data() + (w * 32 - c0) * NC;
        while (bits) {
          const T* p = base + (int64_t)__builtin_ctz(bits) * NC;
          bits &= bits - 1;
          for (int64_t j = 0; j < NC; ++j) acc[j] += p[j];
        }
      }
    }
  }
  write_tile<T>(g, tile.data(), NC, r0, rows, n0, nn);
  return -1;
}

template <typename T>
void outer_generic(const uint32_t* S, int64_t K, const T* dY, int64_t ldy, int64_t m0, int64_t m1, int64_t n0,
                   int64_t nn, T* P) {
  const int64_t W = words_of(K);
  for (int64_t m = m0; m < m1; ++m) {
    const uint32_t* a = S + m * W;
    const T* y = dY + m * ldy + n0;
    for (int64_t w = 0; w < W; ++w) {
      uint32_t bits = a[w];
      if (w == W - 1) bits &= last_word_mask(K);
      while (bits) {
        T* p = P + (w * 32 + (int64_t)__builtin_ctz(bits)) * kOuterStride;
        bits &= bits - 1;
        for (int64_t j = 0; j < nn; ++j) p[j] += y[j];
      }
    }
  }
}

#if SNN_HAVE_AVX2
// ------------------------------------------------------------------ AVX2

// The panel of W^T (B[c, n] = W[n, c], ldb_c == 1) by 8x8 transposes; else the copy.
SNN_AVX2 void build_panel_avx2(const BitGemm<float>& g, int64_t c0, int64_t cc, int64_t n0, int64_t nn,
                               int64_t NC, float* panel) {
  if (g.ldb_c != 1) return build_panel<float>(g, c0, cc, n0, nn, NC, panel);
  const int64_t n8 = nn / 8 * 8, c8 = cc / 8 * 8;
  for (int64_t j = 0; j < n8; j += 8)
    for (int64_t c = 0; c < c8; c += 8) transpose8x8(g.B + c0 + c + (n0 + j) * g.ldb_n, g.ldb_n, panel + c * NC + j, NC);
  for (int64_t j = 0; j < nn; ++j) {
    const float* src = g.B + c0 + (n0 + j) * g.ldb_n;
    for (int64_t c = (j < n8 ? c8 : 0); c < cc; ++c) panel[c * NC + j] = src[c];
  }
  if (nn < NC)
    for (int64_t c = 0; c < cc; ++c) std::fill(panel + c * NC + nn, panel + (c + 1) * NC, 0.0f);
}

#if SNN_HAVE_AVX512
// build_panel_avx2 by 16x16 AVX-512 transposes (whole cache lines of W per load): the
// transposes took half of gemm-fc's forward; 16x16 measured 3-10% faster there than 8x8.
SNN_AVX512_BITS void build_panel_avx512(const BitGemm<float>& g, int64_t c0, int64_t cc, int64_t n0, int64_t nn,
                                        int64_t NC, float* panel) {
  if (g.ldb_c != 1 || nn % 16 != 0 || cc % 16 != 0) return build_panel_avx2(g, c0, cc, n0, nn, NC, panel);
  for (int64_t j = 0; j < nn; j += 16)
    for (int64_t c = 0; c < cc; c += 16) {
      // The 16 rows of W are 16 KiB apart on gemm-fc, too many streams for the hardware
      // prefetcher: fetch the next 16 rows' line into L1 and these rows' line of the next
      // panel into L2 (gemm-fc forward at density 0.1: 14.2 -> 12.3 ms, 1 thread).
      if (j + 16 < nn)
        for (int i = 0; i < 16; ++i)
          _mm_prefetch(reinterpret_cast<const char*>(g.B + c0 + c + (n0 + j + 16 + i) * g.ldb_n), _MM_HINT_T0);
      if (c0 + cc + c < g.C)
        for (int i = 0; i < 16; ++i)
          _mm_prefetch(reinterpret_cast<const char*>(g.B + c0 + cc + c + (n0 + j + i) * g.ldb_n), _MM_HINT_T1);
      transpose16x16(g.B + c0 + c + (n0 + j) * g.ldb_n, g.ldb_n, panel + c * NC + j, NC);
    }
  if (nn < NC)
    for (int64_t c = 0; c < cc; ++c) std::fill(panel + c * NC + nn, panel + (c + 1) * NC, 0.0f);
}
#endif

// Indices (c - 32 * w0) of the set bits of words [w0, w1) of row a; returns the count.
// Writes up to 16 slots past the count (scratch): idx needs (w1 - w0) * 32 + 16 entries.
SNN_AVX2_BITS static inline int64_t extract_bits(const uint32_t* a, int64_t w0, int64_t w1, int64_t CW,
                                                 uint32_t lastmask, int32_t* idx) {
  int64_t n = 0;
  for (int64_t w = w0; w < w1; w += 2) {
    uint64_t lo = a[w];
    if (w == CW - 1) lo &= lastmask;
    uint64_t hi = 0;
    if (w + 1 < w1) {
      hi = a[w + 1];
      if (w + 1 == CW - 1) hi &= lastmask;
    }
    uint64_t x = lo | (hi << 32);
    const int32_t base = (int32_t)((w - w0) * 32);
    const int64_t cnt = (int64_t)_mm_popcnt_u64(x);
    int32_t* o = idx + n;
    for (int i = 0; i < 8; ++i) {
      o[i] = base + (int32_t)_tzcnt_u64(x);
      x = _blsr_u64(x);
    }
    if (cnt > 8) {
      for (int i = 8; i < 16; ++i) {
        o[i] = base + (int32_t)_tzcnt_u64(x);
        x = _blsr_u64(x);
      }
      for (int i = 16; x != 0; ++i) {
        o[i] = base + (int32_t)_tzcnt_u64(x);
        x = _blsr_u64(x);
      }
    }
    n += cnt;
  }
  return n;
}

// Table rows of the non-zero nibbles of words [w0, w1) of row a: nibble q (bits 4q..4q+3
// counted from word w0) with value v != 0 gives 16 q + v. Returns the count; writes up
// to 8 slots past it: idx needs (w1 - w0) * 8 + 8 entries.
SNN_AVX2_BITS static inline int64_t extract_nibbles(const uint32_t* a, int64_t w0, int64_t w1, int64_t CW,
                                                    uint32_t lastmask, int32_t* idx) {
  constexpr uint64_t kLow = 0x1111111111111111ull;
  int64_t n = 0;
  for (int64_t w = w0; w < w1; w += 2) {
    uint64_t lo = a[w];
    if (w == CW - 1) lo &= lastmask;
    uint64_t hi = 0;
    if (w + 1 < w1) {
      hi = a[w + 1];
      if (w + 1 == CW - 1) hi &= lastmask;
    }
    const uint64_t x = lo | (hi << 32);
    uint64_t nz = (x | (x >> 1) | (x >> 2) | (x >> 3)) & kLow;  // bit 4q set: nibble q non-zero
    const int64_t cnt = (int64_t)_mm_popcnt_u64(nz);
    const int32_t base = (int32_t)((w - w0) * 128);  // 8 nibbles x 16 rows per word
    int32_t* o = idx + n;
    for (int i = 0; i < 8; ++i) {  // fixed trip count: no mispredicted exit on the common case
      const int64_t pos = (int64_t)_tzcnt_u64(nz);
      o[i] = base + (int32_t)(pos * 4 + (int64_t)((x >> (pos & 63)) & 15u));
      nz = _blsr_u64(nz);
    }
    for (int i = 8; nz != 0; ++i) {
      const int64_t pos = (int64_t)_tzcnt_u64(nz);
      o[i] = base + (int32_t)(pos * 4 + (int64_t)((x >> pos) & 15u));
      nz = _blsr_u64(nz);
    }
    n += cnt;
  }
  return n;
}

// Rows [r0, r1) of A over one block of B rows (panel rows at stride lds): per row, the
// set-bit list, then tile row = (first block ? init : tile row) + the indexed panel rows,
// NC = 8 * NV columns held in NV AVX2 registers.
template <int NV>
SNN_AVX2_BITS void scan_rows_avx2(const uint32_t* A, int64_t lda, int64_t r0, int64_t r1, int64_t w0, int64_t w1,
                                  int64_t CW, uint32_t lastmask, int32_t* idx, const float* panel, int64_t lds,
                                  const float* init, float* tile, int64_t ldt, bool stream, const char* pf,
                                  int64_t pf_stride, int64_t pf_lines) {
  for (int64_t r = r0; r < r1; ++r) {
    if (pf)  // the float spikes of the next rows to pack, fetched while these rows compute
      for (int64_t l = 0; l < pf_lines; ++l) _mm_prefetch(pf + (r - r0) * pf_stride + 64 * l, _MM_HINT_T0);
    const int64_t n = extract_bits(A + r * lda, w0, w1, CW, lastmask, idx);
    float* t = tile + (r - r0) * ldt;
    const float* src = init ? init : t;
    __m256 acc[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_loadu_ps(src + 8 * v);
    for (int64_t i = 0; i < n; ++i) {
      const float* p = panel + (int64_t)idx[i] * lds;
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[v] = _mm256_add_ps(acc[v], _mm256_loadu_ps(p + 8 * v));
    }
    if (stream) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) _mm256_stream_ps(t + 8 * v, acc[v]);
    } else {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(t + 8 * v, acc[v]);
    }
  }
  if (stream) _mm_sfence();
}

#if SNN_HAVE_AVX512
// extract_bits with AVX-512 compress: 16 bits a step, the positions of the set ones
// compressed out of an index vector and stored whole (the slots past the count are
// scratch). Writes up to 16 slots past the count.
SNN_AVX512_BITS static inline int64_t extract_bits_avx512(const uint32_t* a, int64_t w0, int64_t w1, int64_t CW,
                                                          uint32_t lastmask, int32_t* idx) {
  __m512i base = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i sixteen = _mm512_set1_epi32(16);
  int64_t n = 0;
  for (int64_t w = w0; w < w1; ++w) {
    uint32_t bits = a[w];
    if (w == CW - 1) bits &= lastmask;
    const __mmask16 lo = (__mmask16)(bits & 0xFFFFu), hi = (__mmask16)(bits >> 16);
    _mm512_storeu_si512(idx + n, _mm512_maskz_compress_epi32(lo, base));
    n += _mm_popcnt_u32(bits & 0xFFFFu);
    base = _mm512_add_epi32(base, sixteen);
    _mm512_storeu_si512(idx + n, _mm512_maskz_compress_epi32(hi, base));
    n += _mm_popcnt_u32(bits >> 16);
    base = _mm512_add_epi32(base, sixteen);
  }
  return n;
}
#endif

#if SNN_HAVE_AVX512
// pack_row_f32 with AVX-512 compares into mask registers (16 features per compare, no
// movemask); false when a value is neither 0 nor 1 (the caller finds it).
SNN_AVX512_BITS static inline bool pack_row_avx512(const float* x, int64_t K, uint32_t* words) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  __mmask16 ok = 0xFFFF;
  const int64_t full = K / 32;
  for (int64_t w = 0; w < full; ++w) {
    const __m512 v0 = _mm512_loadu_ps(x + 32 * w), v1 = _mm512_loadu_ps(x + 32 * w + 16);
    const __mmask16 e0 = _mm512_cmp_ps_mask(v0, one, _CMP_EQ_OQ), e1 = _mm512_cmp_ps_mask(v1, one, _CMP_EQ_OQ);
    ok &= (__mmask16)((e0 | _mm512_cmp_ps_mask(v0, zero, _CMP_EQ_OQ)) & (e1 | _mm512_cmp_ps_mask(v1, zero, _CMP_EQ_OQ)));
    words[w] = (uint32_t)e0 | ((uint32_t)e1 << 16);
  }
  const int64_t rem = K - 32 * full;
  if (rem > 0) {  // masked loads: the lanes past K read as 0
    const uint32_t m = (uint32_t)((1ull << rem) - 1);
    const __mmask16 m0 = (__mmask16)(m & 0xFFFF), m1 = (__mmask16)(m >> 16);
    const __m512 v0 = _mm512_maskz_loadu_ps(m0, x + 32 * full), v1 = _mm512_maskz_loadu_ps(m1, x + 32 * full + 16);
    const __mmask16 e0 = _mm512_cmp_ps_mask(v0, one, _CMP_EQ_OQ), e1 = _mm512_cmp_ps_mask(v1, one, _CMP_EQ_OQ);
    ok &= (__mmask16)((e0 | _mm512_cmp_ps_mask(v0, zero, _CMP_EQ_OQ)) & (e1 | _mm512_cmp_ps_mask(v1, zero, _CMP_EQ_OQ)));
    words[full] = ((uint32_t)e0 | ((uint32_t)e1 << 16)) & m;
  }
  return ok == 0xFFFF;
}

// The same with NZ AVX-512 registers of 16 floats (NC = 16 * NZ): half the loads and
// adds per spike, on CPUs that have it (MKL uses it there too).
// PACK (forward from float spikes): row r is first packed from the floats psrc + r *
// psrc_ld (K of them) into A, with the floats `pf_rows` rows ahead prefetched, so that the
// loads of the floats overlap the additions of earlier rows row by row (packing blocks
// of rows before scanning them left the memory idle during the adds). Returns -1, or the
// first row holding a value other than 0 or 1 (nothing after it is computed).
template <int NZ, bool NIB, bool PACK>
SNN_AVX512_BITS int64_t scan_rows_avx512(const uint32_t* A, int64_t lda, int64_t r0, int64_t r1, int64_t w0,
                                         int64_t w1, int64_t CW, uint32_t lastmask, int32_t* idx, const float* panel,
                                         int64_t lds, const float* init, float* tile, int64_t ldt, bool stream,
                                         const float* psrc, int64_t psrc_ld, int64_t pk, int64_t pf_rows) {
  const int64_t pf_lines = PACK ? (CW * 128 + 63) / 64 : 0;
  for (int64_t r = r0; r < r1; ++r) {
    if constexpr (PACK) {
      if (r + pf_rows < r1) {
        const char* f = reinterpret_cast<const char*>(psrc + (r + pf_rows) * psrc_ld);
        // Into L1 (T0). Into L2 (T1) measured 10% faster on a quiet machine but 15-40% slower
        // while other jobs loaded the memory (gemm-tt-in and gemm-conv1x1 at density 0.1);
        // NTA 2x slower, none 10% slower.
        for (int64_t l = 0; l < pf_lines; ++l) _mm_prefetch(f + 64 * l, _MM_HINT_T0);
      }
      if (!pack_row_avx512(psrc + r * psrc_ld, pk, const_cast<uint32_t*>(A + r * lda))) return r;
    }
    const int64_t n = NIB ? extract_nibbles(A + r * lda, w0, w1, CW, lastmask, idx)
                          : extract_bits_avx512(A + r * lda, w0, w1, CW, lastmask, idx);
    float* t = tile + (r - r0) * ldt;
    const float* src = init ? init : t;
    // Two accumulator sets take alternate spikes: each add then waits on the add two
    // spikes back, not one (the add latency bound the loop with a single set).
    __m512 acc[NZ], acc2[NZ];
#pragma GCC unroll 16
    for (int v = 0; v < NZ; ++v) {
      acc[v] = _mm512_loadu_ps(src + 16 * v);
      acc2[v] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const float* p = panel + (int64_t)idx[i] * lds;
      const float* q = panel + (int64_t)idx[i + 1] * lds;
#pragma GCC unroll 16
      for (int v = 0; v < NZ; ++v) {
        acc[v] = _mm512_add_ps(acc[v], _mm512_loadu_ps(p + 16 * v));
        acc2[v] = _mm512_add_ps(acc2[v], _mm512_loadu_ps(q + 16 * v));
      }
    }
    if (i < n) {
      const float* p = panel + (int64_t)idx[i] * lds;
#pragma GCC unroll 16
      for (int v = 0; v < NZ; ++v) acc[v] = _mm512_add_ps(acc[v], _mm512_loadu_ps(p + 16 * v));
    }
#pragma GCC unroll 16
    for (int v = 0; v < NZ; ++v) acc[v] = _mm512_add_ps(acc[v], acc2[v]);
    if (stream) {
#pragma GCC unroll 16
      for (int v = 0; v < NZ; ++v) _mm512_stream_ps(t + 16 * v, acc[v]);
    } else {
#pragma GCC unroll 16
      for (int v = 0; v < NZ; ++v) _mm512_storeu_ps(t + 16 * v, acc[v]);
    }
  }
  if (stream) _mm_sfence();
  return -1;
}
#endif

// outer_dw_task with the 64 columns of one dY row in 8 ymm / 4 zmm registers, added to
// the P rows of the row's set bits (one load, add and store of P per vector).
// Returns the dY row to use (a zero-padded copy for a last partial chunk).
static inline const float* outer_row(const float* y, int64_t nn, float* pad) {
  if (nn >= kOuterChunk) return y;
  std::memcpy(pad, y, nn * sizeof(float));
  std::fill(pad + nn, pad + kOuterChunk, 0.0f);
  return pad;
}

SNN_AVX2_BITS void outer_avx2(const uint32_t* S, int64_t K, const float* dY, int64_t ldy, int64_t m0, int64_t m1,
                              int64_t n0, int64_t nn, float* P, int32_t* idx) {
  constexpr int64_t NC = kOuterChunk;
  const int64_t W = words_of(K);
  const uint32_t lastmask = last_word_mask(K);
  alignas(64) float pad[NC];
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t n = extract_bits(S + m * W, 0, W, W, lastmask, idx);
    if (n == 0) continue;
    const float* y = outer_row(dY + m * ldy + n0, nn, pad);
    __m256 yv[8];
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) yv[v] = _mm256_loadu_ps(y + 8 * v);
    for (int64_t i = 0; i < n; ++i) {
      float* p = P + (int64_t)idx[i] * kOuterStride;
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) _mm256_storeu_ps(p + 8 * v, _mm256_add_ps(_mm256_loadu_ps(p + 8 * v), yv[v]));
    }
  }
}

#if SNN_HAVE_AVX512
SNN_AVX512_BITS void outer_avx512(const uint32_t* S, int64_t K, const float* dY, int64_t ldy, int64_t m0, int64_t m1,
                                  int64_t n0, int64_t nn, float* P, int32_t* idx) {
  constexpr int64_t NC = kOuterChunk;
  const int64_t W = words_of(K);
  const uint32_t lastmask = last_word_mask(K);
  alignas(64) float pad[NC];
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t n = extract_bits(S + m * W, 0, W, W, lastmask, idx);
    if (n == 0) continue;
    {  // the dY row 16 ahead (a stride of N floats the prefetcher may not follow for N > 64)
      const char* f = reinterpret_cast<const char*>(dY + std::min(m + 16, m1 - 1) * ldy + n0);
      for (int l = 0; l < 4; ++l) _mm_prefetch(f + 64 * l, _MM_HINT_T0);
    }
    const float* y = outer_row(dY + m * ldy + n0, nn, pad);
    const __m512 y0 = _mm512_loadu_ps(y), y1 = _mm512_loadu_ps(y + 16);
    const __m512 y2 = _mm512_loadu_ps(y + 32), y3 = _mm512_loadu_ps(y + 48);
    for (int64_t i = 0; i < n; ++i) {
      float* p = P + (int64_t)idx[i] * kOuterStride;
      _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), y0));
      _mm512_storeu_ps(p + 16, _mm512_add_ps(_mm512_loadu_ps(p + 16), y1));
      _mm512_storeu_ps(p + 32, _mm512_add_ps(_mm512_loadu_ps(p + 32), y2));
      _mm512_storeu_ps(p + 48, _mm512_add_ps(_mm512_loadu_ps(p + 48), y3));
    }
  }
}
#endif

#if SNN_HAVE_AVX512
// table[(16 q + v) * NC, + NC) = sum of the B rows 4q + i (i < 4, bit i of v set) read
// from src (row c at src + c * lds, rows >= cc count as zero), for q < ceil(cc / 4):
// each of the 15 non-zero subsets is one earlier subset plus one row.
template <int NZ>
SNN_AVX512_BITS void build_table(const float* src, int64_t lds, int64_t cc, float* table) {
  constexpr int64_t NC = 16 * NZ;
  const int64_t ng = (cc + 3) / 4;
  for (int64_t q = 0; q < ng; ++q) {
    float* tq = table + q * 16 * NC;
#pragma GCC unroll 8
    for (int v = 0; v < NZ; ++v) _mm512_store_ps(tq + 16 * v, _mm512_setzero_ps());
    for (int64_t v = 1; v < 16; ++v) {
      const int64_t i = __builtin_ctzll((unsigned long long)v), c = 4 * q + i;
      const float* prev = tq + (v & (v - 1)) * NC;
      float* dst = tq + v * NC;
      if (c < cc) {
        const float* row = src + c * lds;
#pragma GCC unroll 8
        for (int z = 0; z < NZ; ++z)
          _mm512_store_ps(dst + 16 * z, _mm512_add_ps(_mm512_load_ps(prev + 16 * z), _mm512_loadu_ps(row + 16 * z)));
      } else {
#pragma GCC unroll 8
        for (int z = 0; z < NZ; ++z) _mm512_store_ps(dst + 16 * z, _mm512_load_ps(prev + 16 * z));
      }
    }
  }
}
#endif

#if SNN_HAVE_AVX512
// table_dw_task (see the header): per 32 rows of S (one word of T per k), the 16 subset
// sums of each 4 consecutive dY rows (8 groups x 16 x 64 floats = 32 KiB, L1), then for
// every k its 8 nibbles select 8 table rows added to P[k] (the zero nibble selects a zero
// row: no branch, no index list). Two accumulator sets take alternate nibbles.
SNN_INTRINSICS_UNINIT_BEGIN
// The 32 rows S[m, :] (W words each, rows >= `valid` read as zero) bit-transposed:
// bit i of T[j * W + w] = bit j of S[i, w] (= S[i, 32 w + j]). Sixteen 32x32 blocks at a
// time, one per vector lane (the words w of a row are contiguous): the delta swaps of
// transpose32 below on whole vectors.
SNN_AVX512_BITS static inline void transpose_rows32_avx512(const uint32_t* S, int64_t W, int64_t valid, uint32_t* T) {
  for (int64_t w0 = 0; w0 < W; w0 += 16) {
    const int64_t nw = std::min<int64_t>(16, W - w0);
    const __mmask16 lm = (__mmask16)(nw >= 16 ? 0xFFFF : (1u << nw) - 1);
    __m512i a[32];
#pragma GCC unroll 32
    for (int i = 0; i < 32; ++i)
      a[i] = i < valid ? _mm512_maskz_loadu_epi32(lm, S + i * W + w0) : _mm512_setzero_si512();
#define SNN_SWAP_LEVEL(J, MASK)                                                             \
    {                                                                                       \
      const __m512i m = _mm512_set1_epi32((int)(MASK));                                     \
      for (int k = 0; k < 32; k = (k + J + 1) & ~J) {                                       \
        const __m512i t = _mm512_and_si512(_mm512_xor_si512(_mm512_srli_epi32(a[k], J), a[k + J]), m); \
        a[k] = _mm512_xor_si512(a[k], _mm512_slli_epi32(t, J));                             \
        a[k + J] = _mm512_xor_si512(a[k + J], t);                                           \
      }                                                                                     \
    }
    SNN_SWAP_LEVEL(16, 0x0000FFFFu)
    SNN_SWAP_LEVEL(8, 0x00FF00FFu)
    SNN_SWAP_LEVEL(4, 0x0F0F0F0Fu)
    SNN_SWAP_LEVEL(2, 0x33333333u)
    SNN_SWAP_LEVEL(1, 0x55555555u)
#undef SNN_SWAP_LEVEL
#pragma GCC unroll 32
    for (int j = 0; j < 32; ++j) _mm512_mask_storeu_epi32(T + j * W + w0, lm, a[j]);
  }
}

// Lane masks of the 4 vectors of a 64-column chunk holding nn columns.
static inline void chunk_masks(int64_t nn, __mmask16 cm[4]) {
  for (int z = 0; z < 4; ++z) {
    const int64_t v = std::min<int64_t>(16, std::max<int64_t>(0, nn - 16 * z));
    cm[z] = (__mmask16)(v >= 16 ? 0xFFFF : (1u << v) - 1);
  }
}

// The 8 groups x 16 subset sums of 32 rows of 64 columns (row i at src + i * lds for
// i < valid, zero rows after; columns outside cm read as zero): table[(16 q + v) * 64, +64)
// = sum of rows 4q + i over the bits i of v. Sums of pairs, then one add per subset.
SNN_AVX512_BITS static inline void build_table32(const float* src, int64_t lds, int64_t valid, const __mmask16 cm[4],
                                                 float* table) {
  constexpr int64_t NC = kOuterChunk;
  for (int64_t q = 0; q < 8; ++q) {
    float* tq = table + q * 16 * NC;
    __m512 rows[4][4];
    for (int i = 0; i < 4; ++i) {
      const int64_t m = 4 * q + i;
      const float* y = src + m * lds;
#pragma GCC unroll 4
      for (int z = 0; z < 4; ++z) rows[i][z] = m < valid ? _mm512_maskz_loadu_ps(cm[z], y + 16 * z) : _mm512_setzero_ps();
    }
#pragma GCC unroll 4
    for (int z = 0; z < 4; ++z) {
      const __m512 r0 = rows[0][z], r1 = rows[1][z], r2 = rows[2][z], r3 = rows[3][z];
      const __m512 lo[4] = {_mm512_setzero_ps(), r0, r1, _mm512_add_ps(r0, r1)};
      const __m512 hi[4] = {_mm512_setzero_ps(), r2, r3, _mm512_add_ps(r2, r3)};
#pragma GCC unroll 4
      for (int h = 0; h < 4; ++h)
#pragma GCC unroll 4
        for (int l = 0; l < 4; ++l)
          _mm512_store_ps(tq + (4 * h + l) * NC + 16 * z, h == 0 ? lo[l] : l == 0 ? hi[h] : _mm512_add_ps(lo[l], hi[h]));
    }
  }
}

// p[0, 64) += the 8 table rows the nibbles of x select. One chain per vector: successive
// calls are independent, so out-of-order execution overlaps them (a second accumulator
// set measured slower: its extra adds).
SNN_AVX512_BITS static inline void add_table_rows(uint32_t x, const float* table, float* p) {
  constexpr int64_t NC = kOuterChunk;
  __m512 a0 = _mm512_loadu_ps(p), a1 = _mm512_loadu_ps(p + 16), a2 = _mm512_loadu_ps(p + 32), a3 = _mm512_loadu_ps(p + 48);
#pragma GCC unroll 8
  for (int q = 0; q < 8; ++q) {
    const float* ra = table + (q * 16 + ((x >> (4 * q)) & 15u)) * NC;
    a0 = _mm512_add_ps(a0, _mm512_load_ps(ra));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(ra + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(ra + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(ra + 48));
  }
  _mm512_storeu_ps(p, a0);  // (p is any output row when the forward adds in place)
  _mm512_storeu_ps(p + 16, a1);
  _mm512_storeu_ps(p + 32, a2);
  _mm512_storeu_ps(p + 48, a3);
}

SNN_AVX512_BITS void table_dw_avx512(const uint32_t* S, int64_t K, const float* dY, int64_t ldy, int64_t m0,
                                     int64_t m1, int64_t n0, int64_t nn, float* P, float* table, uint32_t* T) {
  const int64_t W = words_of(K);
  __mmask16 cm[4];
  chunk_masks(nn, cm);
  for (int64_t mw = m0; mw < m1; mw += 32) {
    const int64_t valid = std::min<int64_t>(32, m1 - mw);
    build_table32(dY + mw * ldy + n0, ldy, valid, cm, table);  // rows >= m1: zero (their bits are 0 too)
    transpose_rows32_avx512(S + mw * W, W, valid, T);
    for (int64_t jw = 0; jw < 32 * W; ++jw) {
      const int64_t k = (jw % W) * 32 + jw / W;
      if (k < K) add_table_rows(T[jw], table, P + k * kOuterStride);
    }
  }
}

// Forward by subset-sum tables: P[(r - r0) * ldp, + 64) += sum over the set bits c of row r
// of A of B[c, n0 + j] (j < nn), P initialised by the caller. Per word of A (32 values of
// c): the 32 B rows (W^T rows transposed from W by 16x16 blocks into `pan`, or read in
// place), their 32 KiB table, then one add_table_rows per row.
SNN_AVX512_BITS void table_rows_avx512(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0, float* P,
                                       int64_t ldp, float* table, float* pan) {
  constexpr int64_t NC = kOuterChunk;
  const int64_t nn = std::min(NC, g.N - n0);
  const int64_t CW = words_of(g.C);
  const uint32_t lastmask = last_word_mask(g.C);
  __mmask16 cm[4];
  chunk_masks(nn, cm);
  for (int64_t w = 0; w < CW; ++w) {
    const int64_t c0 = 32 * w, cv = std::min<int64_t>(32, g.C - c0);
    const float* src;
    int64_t lds;
    if (g.ldb_n == 1) {
      src = g.B + c0 * g.ldb_c + n0;
      lds = g.ldb_c;
    } else {
      if (g.ldb_c == 1 && cv == 32 && nn % 16 == 0) {
        for (int64_t j = 0; j < nn; j += 16) {
          // W rows are K floats apart (16 KiB on gemm-fc): fetch those of the word after next.
          if (c0 + 64 < g.C)
            for (int i = 0; i < 16; ++i)
              _mm_prefetch(reinterpret_cast<const char*>(g.B + c0 + 64 + (n0 + j + i) * g.ldb_n), _MM_HINT_T0);
          transpose16x16(g.B + c0 + (n0 + j) * g.ldb_n, g.ldb_n, pan + j, NC);
          transpose16x16(g.B + c0 + 16 + (n0 + j) * g.ldb_n, g.ldb_n, pan + 16 * NC + j, NC);
        }
      } else {
        for (int64_t c = 0; c < cv; ++c)
          for (int64_t j = 0; j < nn; ++j) pan[c * NC + j] = g.B[(c0 + c) * g.ldb_c + (n0 + j) * g.ldb_n];
      }
      src = pan;
      lds = NC;
    }
    build_table32(src, lds, cv, cm, table);
    const uint32_t mask = w == CW - 1 ? lastmask : 0xFFFFFFFFu;
    for (int64_t r = r0; r < r1; ++r) add_table_rows(g.A[r * g.lda + w] & mask, table, P + (r - r0) * ldp);
  }
}
SNN_INTRINSICS_UNINIT_END
#endif

// dst[0, n) = src[0, n), with streaming stores on the 32-byte-aligned middle when `stream`.
SNN_AVX2 static inline void copy_row(float* dst, const float* src, int64_t n, bool stream) {
  if (!stream) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  int64_t i = 0;
  for (; i < n && ((uintptr_t)(dst + i) % 32) != 0; ++i) dst[i] = src[i];
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
  _mm_sfence();
}

template <int NV, bool AVX512>
SNN_AVX2_BITS int64_t task_avx2(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0, Workspace& ws) {
  constexpr int64_t NC = 8 * NV;
  const int64_t nn = std::min(NC, g.N - n0);
  const bool full = nn == NC;
  const int64_t CW = words_of(g.C);
  const uint32_t lastmask = last_word_mask(g.C);
  const int64_t rows = r1 - r0;
  // Accumulators live in the output when it is row-major over a full chunk.
  const bool direct_out = full && g.ldo_n == 1;
  // B is read in place when its chunk rows are contiguous (dY for dW with N equal to
  // the chunk). A longer row stride is copied to a panel first: dY of gemm-fc has rows
  // 16 KiB apart, which all fall in the same cache sets.
  const bool direct_b = full && g.ldb_n == 1 && g.ldb_c == NC;
  // Outputs of more than a few MiB leave the cache anyway: streaming stores skip the
  // read-for-ownership of each line (gemm-conv1x1 at density 0: 1.2 ms against 1.9 ms).
  // (8 MiB included: gemm-tt-in's output; 5% faster from packed spikes with streaming.)
  const bool stream_out = (double)g.R * (double)g.N * 4.0 >= kStreamOutputBytes;
  alignas(32) float init[NC];
  for (int64_t j = 0; j < NC; ++j) init[j] = (g.bias && j < nn) ? g.bias[n0 + j] : 0.0f;
  float* tile;
  int64_t ldt;
  if (direct_out) {
    tile = g.out + r0 * g.ldo_r + n0;
    ldt = g.ldo_r;
  } else {
    ws.tile_f.resize(rows * NC);
    tile = ws.tile_f.data();
    ldt = NC;
  }
  const bool nib = AVX512 && g.nibbles;
  int64_t cb = std::max<int64_t>(32, ((direct_b ? kDirectBytes : kPanelBytes) / (NC * 4)) / 32 * 32);
  if (nib) cb = std::max<int64_t>(32, (kTableBytes / (NC * 4 * 4)) / 32 * 32);
  if (cb >= g.C) cb = g.C;
  if (g.C == 0) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(tile + r * ldt, init, NC * sizeof(float));  // (nothing to pack)
  } else {
    if (ws.idx.size() < (size_t)(words_of(cb) * 32 + 64)) ws.idx.resize(words_of(cb) * 32 + 64);
    if (!direct_b && ws.panel_f.size() < (size_t)(cb * NC)) ws.panel_f.resize(cb * NC);
    if (nib && ws.table_f.size() < (size_t)(words_of(cb) * 128 * NC)) ws.table_f.resize(words_of(cb) * 128 * NC);
    int32_t* idx = ws.idx.data();
    for (int64_t c0 = 0; c0 < g.C; c0 += cb) {
      const int64_t cc = std::min(cb, g.C - c0);
      const float* panel;
      int64_t lds;
      if (direct_b) {
        panel = g.B + c0 * g.ldb_c + n0;
        lds = g.ldb_c;
      } else {
#if SNN_HAVE_AVX512
        if constexpr (AVX512) build_panel_avx512(g, c0, cc, n0, nn, NC, ws.panel_f.data());
        else
#endif
          build_panel_avx2(g, c0, cc, n0, nn, NC, ws.panel_f.data());
        panel = ws.panel_f.data();
        lds = NC;
      }
#if SNN_HAVE_AVX512
      if constexpr (AVX512) {
        if (nib) {
          build_table<NV / 2>(panel, lds, cc, ws.table_f.data());
          panel = ws.table_f.data();
          lds = NC;
        }
      }
#endif
      const int64_t w0 = c0 / 32, w1 = words_of(c0 + cc);
      const float* first = c0 == 0 ? init : nullptr;
      // The last pass writes a large output that is not read again soon: streaming
      // stores skip the read-for-ownership of every output line.
      const bool stream = direct_out && c0 + cc == g.C && stream_out &&
                          ((uintptr_t)tile % 64) == 0 && (ldt * 4) % 64 == 0;
      // Fused packing: 64 rows at a time, packed then scanned while their words are in
      // L1, so reading the float spikes overlaps the arithmetic (a separate packing
      // pass measured as a fifth of the forward on gemm-conv1x1).
#if SNN_HAVE_AVX512
      if constexpr (AVX512) {
        if (g.src && c0 == 0) {
          // The floats of the rows 32 KiB ahead are prefetched (4 to 64 KiB measured
          // within noise of each other on gemm-tt-in and gemm-conv1x1).
          const int64_t pf_rows = std::max<int64_t>(4, 32768 / std::max<int64_t>(1, g.src_ld * 4));
          // Regular stores here: streaming ones took fill buffers from the loads of the
          // float spikes (gemm-tt-in at density 0.1: 3.1 -> 2.5 ms in one run, level in others).
          const int64_t bad =
              nib ? scan_rows_avx512<NV / 2, true, true>(g.A, g.lda, r0, r1, w0, w1, CW, lastmask, idx, panel, lds,
                                                         first, tile, ldt, false, g.src, g.src_ld, g.C, pf_rows)
                  : scan_rows_avx512<NV / 2, false, true>(g.A, g.lda, r0, r1, w0, w1, CW, lastmask, idx, panel, lds,
                                                          first, tile, ldt, false, g.src, g.src_ld, g.C, pf_rows);
          if (bad >= 0) return pack_task_rows(g, bad, bad + 1, true);
          continue;
        }
      }
#endif
      const int64_t sub = (g.src && c0 == 0) ? 64 : rows;
      for (int64_t s0 = r0; s0 < r1; s0 += sub) {
        const int64_t s1 = std::min(r1, s0 + sub);
        if (g.src && c0 == 0) {
          const int64_t bad = pack_task_rows(g, s0, s1, true);
          if (bad >= 0) return bad;
        }
        float* tsub = tile + (s0 - r0) * ldt;
        // (measured 8-15% faster on gemm-conv1x1 / gemm-tt-in from float spikes)
        const bool fetch = g.src && c0 == 0 && s1 < r1;
        const char* pf = fetch ? reinterpret_cast<const char*>(g.src + s1 * g.src_ld) : nullptr;
        const int64_t pf_lines = fetch ? std::min<int64_t>(words_of(g.C) * 2, (g.src_ld * 4 + 63) / 64) : 0;
#if SNN_HAVE_AVX512
        if constexpr (AVX512) {
          if (nib)
            scan_rows_avx512<NV / 2, true, false>(g.A, g.lda, s0, s1, w0, w1, CW, lastmask, idx, panel, lds, first,
                                                  tsub, ldt, stream, nullptr, 0, 0, 0);
          else
            scan_rows_avx512<NV / 2, false, false>(g.A, g.lda, s0, s1, w0, w1, CW, lastmask, idx, panel, lds, first,
                                                   tsub, ldt, stream, nullptr, 0, 0, 0);
          continue;
        }
#endif
        scan_rows_avx2<NV>(g.A, g.lda, s0, s1, w0, w1, CW, lastmask, idx, panel, lds, first, tsub, ldt, stream, pf,
                           g.src_ld * 4, pf_lines);
      }
    }
  }
  if (direct_out) return -1;
  if (g.ldo_n == 1) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(g.out + (r0 + r) * g.ldo_r + n0, tile + r * NC, nn * sizeof(float));
  } else if (g.ldo_r == 1) {
    // Transposed output (dW): out[n * ldo_n + r], contiguous in r. Transpose the tile in
    // cache first, then write whole output row segments (streamed when the output is
    // large): scattered 32-byte pieces measured slower on the 64 MiB dW of gemm-fc.
    // The transposed rows are 16 floats longer than `rows`: with rows a multiple of 1024
    // they were 4 KiB apart, all in one L1 set (the transpose and the copy-out of the
    // gemm-fc dW ran 2x slower).
    const int64_t ldtt = (rows + 15) / 16 * 16 + 16;
    ws.tile2_f.resize(nn * ldtt + 16);
    float* tt = ws.tile2_f.data();
    const int64_t r8 = rows / 8 * 8, n8 = nn / 8 * 8;
    for (int64_t r = 0; r < r8; r += 8)
      for (int64_t j = 0; j < n8; j += 8) transpose8x8(tile + r * NC + j, NC, tt + j * ldtt + r, ldtt);
    for (int64_t j = 0; j < nn; ++j)
      for (int64_t r = (j < n8 ? r8 : 0); r < rows; ++r) tt[j * ldtt + r] = tile[r * NC + j];
    for (int64_t j = 0; j < nn; ++j) copy_row(g.out + (n0 + j) * g.ldo_n + r0, tt + j * ldtt, rows, stream_out);
  } else {
    write_tile<float>(g, tile, NC, r0, rows, n0, nn);
  }
  return -1;
}

// Byte-wise popcount of 256 bits (nibble lookup).
SNN_AVX2_BITS static inline __m256i popcnt_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

SNN_AVX2_BITS void lowbit_counts_avx2(const uint32_t* s, const uint32_t* planes, int64_t W, int64_t np, int64_t* cnt) {
  const int64_t W8 = W / 8 * 8;
  for (int64_t j = 0; j < np; ++j) {
    const uint32_t* p = planes + j * W;
    __m256i total = _mm256_setzero_si256();
    int64_t w = 0;
    while (w < W8) {
      // Byte counters grow by at most 8 per step: flush to 64-bit lanes every 31 steps.
      __m256i bytes = _mm256_setzero_si256();
      const int64_t end = std::min(W8, w + 31 * 8);
      for (; w < end; w += 8) {
        const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + w)),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + w)));
        bytes = _mm256_add_epi8(bytes, popcnt_bytes(v));
      }
      total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
    }
    alignas(32) int64_t t[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), total);
    int64_t c = t[0] + t[1] + t[2] + t[3];
    for (; w < W; ++w) c += _mm_popcnt_u32(s[w] & p[w]);
    cnt[j] = c;
  }
}
#endif  // SNN_HAVE_AVX2

#if SNN_HAVE_AVX512
SNN_INTRINSICS_UNINIT_BEGIN
// acc[i] = 2 sum_j 2^j popcount(s & plane_j) - (2^BITS - 1) popcount(s & mask) for NB
// consecutive weight rows (planes of row i at P + i * (BITS + 1) * W), 512 spike bits per
// step with one VPOPCNTQ per plane: each spike vector is loaded once for NB rows.
template <int BITS, int NB>
SNN_AVX512_POPCNT void lowbit_dots_vpopcnt(const uint32_t* s, const uint32_t* P, int64_t W, int64_t* acc) {
  constexpr int NP = BITS + 1;
  __m512i a[NB];
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) a[i] = _mm512_setzero_si512();
  for (int64_t w = 0; w < W; w += 16) {
    const __mmask16 m = W - w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (W - w)) - 1u);
    const __m512i sv = _mm512_maskz_loadu_epi32(m, s + w);
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i) {
      const uint32_t* p = P + (int64_t)i * NP * W + w;
#pragma GCC unroll 5
      for (int j = 0; j < BITS; ++j) {
        const __m512i c = _mm512_popcnt_epi64(_mm512_and_si512(sv, _mm512_maskz_loadu_epi32(m, p + j * W)));
        a[i] = _mm512_add_epi64(a[i], _mm512_slli_epi64(c, j + 1));
      }
      const __m512i c = _mm512_popcnt_epi64(_mm512_and_si512(sv, _mm512_maskz_loadu_epi32(m, p + BITS * W)));
      a[i] = _mm512_sub_epi64(a[i], _mm512_sub_epi64(_mm512_slli_epi64(c, BITS), c));
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) acc[i] = _mm512_reduce_add_epi64(a[i]);
}

template <int BITS>
void lowbit_dots_bits(const uint32_t* s, const uint32_t* P, int64_t W, int64_t nrows, int64_t* acc) {
  int64_t i = 0;
  for (; i + 4 <= nrows; i += 4) lowbit_dots_vpopcnt<BITS, 4>(s, P + i * (BITS + 1) * W, W, acc + i);
  for (; i < nrows; ++i) lowbit_dots_vpopcnt<BITS, 1>(s, P + i * (BITS + 1) * W, W, acc + i);
}
SNN_INTRINSICS_UNINIT_END

bool has_vpopcntdq() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vpopcntdq") != 0;
  }();
  return ok;
}
#endif

// a[i] bit j <-> a[j] bit i (LSB-first on both axes): swap off-diagonal blocks of 16, 8, .. 1.
inline void transpose32(uint32_t a[32]) {
  static const uint32_t masks[5] = {0x0000FFFFu, 0x00FF00FFu, 0x0F0F0F0Fu, 0x33333333u, 0x55555555u};
  int level = 0;
  for (int j = 16; j != 0; j >>= 1, ++level) {
    const uint32_t m = masks[level];
    for (int k = 0; k < 32; k = (k + j + 1) & ~j) {
      const uint32_t t = ((a[k] >> j) ^ a[k + j]) & m;
      a[k] ^= t << j;
      a[k + j] ^= t;
    }
  }
}

#if SNN_HAVE_AVX2
SNN_AVX2_BITS int64_t popcount_fast(const uint32_t* w, int64_t n) {
  int64_t c = 0, i = 0;
  for (; i + 2 <= n; i += 2) {
    uint64_t x;
    std::memcpy(&x, w + i, 8);
    c += (int64_t)_mm_popcnt_u64(x);
  }
  if (i < n) c += _mm_popcnt_u32(w[i]);
  return c;
}
#endif

}  // namespace

int64_t pack_row(const float* x, int64_t K, uint32_t* words, bool avx2) {
#if SNN_HAVE_AVX2
  if (avx2) return spike_pack::pack_row_f32(x, K, words);
#endif
  (void)avx2;
  return spike_pack::pack_row<float>(x, K, words);
}

int64_t popcount_words(const uint32_t* w, int64_t n, bool fast) {
#if SNN_HAVE_AVX2
  if (fast) return popcount_fast(w, n);
#endif
  (void)fast;
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += __builtin_popcount(w[i]);
  return c;
}

void popcount_rows(const uint32_t* w, int64_t n, int64_t rows, int64_t* counts, bool fast) {
  for (int64_t k = 0; k < rows; ++k) counts[k] = popcount_words(w + k * n, n, fast);
}

bool bits_avx512() {
#if SNN_HAVE_AVX512
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  if (!has || !bits_avx2()) return false;
  // SNNOPS_CPU_ISA=avx2 keeps the AVX2 kernels (tests run them on AVX-512 machines too).
  const char* force = std::getenv("SNNOPS_CPU_ISA");
  return !(force != nullptr && std::strcmp(force, "avx2") == 0);
#else
  return false;
#endif
}

bool bits_avx2() {
#if SNN_HAVE_AVX2
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  }();
  return ok && use_avx2();
#else
  return false;
#endif
}

int64_t bitgemm_chunk(int64_t N, bool avx2) {
  // 128 columns (16 accumulators) when the output is that wide: one index list per row
  // serves twice as many columns as with 64.
  return (avx2 && N >= 128) ? 128 : kGenericChunk;
}

int64_t bitgemm_task(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0, bool avx2, Workspace& ws) {
#if SNN_HAVE_AVX512
#endif
#if SNN_HAVE_AVX2
  if (avx2) {
    const bool wide = bitgemm_chunk(g.N, true) == 128;
#if SNN_HAVE_AVX512
    if (bits_avx512()) return wide ? task_avx2<16, true>(g, r0, r1, n0, ws) : task_avx2<8, true>(g, r0, r1, n0, ws);
#endif
    return wide ? task_avx2<16, false>(g, r0, r1, n0, ws) : task_avx2<8, false>(g, r0, r1, n0, ws);
  }
#endif
  (void)avx2;
  return task_generic<float>(g, r0, r1, n0, ws.panel_f, ws.tile_f);
}

int64_t bitgemm_task(const BitGemm<double>& g, int64_t r0, int64_t r1, int64_t n0, bool avx2, Workspace& ws) {
  (void)avx2;
  return task_generic<double>(g, r0, r1, n0, ws.panel_d, ws.tile_d);
}

void outer_dw_task(const uint32_t* S, int64_t K, const float* dY, int64_t ldy, int64_t m0, int64_t m1, int64_t n0,
                   int64_t nn, float* P, bool avx2, Workspace& ws) {
#if SNN_HAVE_AVX2
  if (avx2) {
    if (ws.idx.size() < (size_t)(words_of(K) * 32 + 64)) ws.idx.resize(words_of(K) * 32 + 64);
#if SNN_HAVE_AVX512
    if (bits_avx512()) return outer_avx512(S, K, dY, ldy, m0, m1, n0, nn, P, ws.idx.data());
#endif
    return outer_avx2(S, K, dY, ldy, m0, m1, n0, nn, P, ws.idx.data());
  }
#endif
  (void)avx2;
  (void)ws;
  outer_generic<float>(S, K, dY, ldy, m0, m1, n0, nn, P);
}

void outer_dw_task(const uint32_t* S, int64_t K, const double* dY, int64_t ldy, int64_t m0, int64_t m1, int64_t n0,
                   int64_t nn, double* P, bool avx2, Workspace& ws) {
  (void)avx2;
  (void)ws;
  outer_generic<double>(S, K, dY, ldy, m0, m1, n0, nn, P);
}

void table_dw_task(const uint32_t* S, int64_t K, const float* dY, int64_t ldy, int64_t M, int64_t m0, int64_t m1,
                   int64_t n0, int64_t nn, float* P, Workspace& ws) {
#if SNN_HAVE_AVX512
  if (ws.table_f.size() < (size_t)(8 * 16 * kOuterChunk)) ws.table_f.resize(8 * 16 * kOuterChunk);
  const size_t tw = (size_t)(32 * words_of(K) + 16);
  if (ws.idx.size() < tw) ws.idx.resize(tw);
  (void)M;
  table_dw_avx512(S, K, dY, ldy, m0, m1, n0, nn, P, ws.table_f.data(), reinterpret_cast<uint32_t*>(ws.idx.data()));
#else
  (void)S, (void)K, (void)dY, (void)ldy, (void)M, (void)m0, (void)m1, (void)n0, (void)nn, (void)P, (void)ws;
#endif
}

void table_rows_task(const BitGemm<float>& g, int64_t r0, int64_t r1, int64_t n0, float* P, int64_t ldp, Workspace& ws) {
#if SNN_HAVE_AVX512
  if (ws.table_f.size() < (size_t)(8 * 16 * kOuterChunk)) ws.table_f.resize(8 * 16 * kOuterChunk);
  if (ws.panel_f.size() < (size_t)(32 * kOuterChunk)) ws.panel_f.resize(32 * kOuterChunk);
  table_rows_avx512(g, r0, r1, n0, P, ldp, ws.table_f.data(), ws.panel_f.data());
#else
  (void)g, (void)r0, (void)r1, (void)n0, (void)P, (void)ldp, (void)ws;
#endif
}

#if SNN_HAVE_AVX512
SNN_AVX512_BITS static void transpose_tile_avx512(const float* P, int64_t ldp, int64_t K, int64_t nn, float* out,
                                                  int64_t ldo) {
  const int64_t k16 = K / 16 * 16, n16 = nn / 16 * 16;
  for (int64_t j = 0; j < n16; j += 16)
    for (int64_t k = 0; k < k16; k += 16) transpose16x16(P + k * ldp + j, ldp, out + j * ldo + k, ldo);
  for (int64_t j = 0; j < nn; ++j)
    for (int64_t k = (j < n16 ? k16 : 0); k < K; ++k) out[j * ldo + k] = P[k * ldp + j];
}
#endif

void transpose_tile(const float* P, int64_t ldp, int64_t K, int64_t nn, float* out, int64_t ldo) {
#if SNN_HAVE_AVX512
  if (bits_avx512()) return transpose_tile_avx512(P, ldp, K, nn, out, ldo);
#endif
  for (int64_t j = 0; j < nn; ++j)
    for (int64_t k = 0; k < K; ++k) out[j * ldo + k] = P[k * ldp + j];
}

void transpose_bits_block(const uint32_t* src, int64_t R, int64_t W, int64_t K, int64_t rw, int64_t w,
                          uint32_t* dst) {
  const int64_t RW = words_of(R);
  uint32_t a[32];
  for (int i = 0; i < 32; ++i) {
    const int64_t r = rw * 32 + i;
    a[i] = r < R ? src[r * W + w] : 0u;
  }
  transpose32(a);
  const int64_t kmax = std::min<int64_t>(32, K - w * 32);
  for (int64_t j = 0; j < kmax; ++j) dst[(w * 32 + j) * RW + rw] = a[j];
}

void lowbit_dots(const uint32_t* s, const uint32_t* planes, int64_t W, int64_t bits, int64_t nrows, int64_t* acc,
                 bool avx2) {
  const int64_t np = bits + 1;
#if SNN_HAVE_AVX512
  if (avx2 && bits_avx512() && has_vpopcntdq()) {
    switch (bits) {
      case 1: return lowbit_dots_bits<1>(s, planes, W, nrows, acc);
      case 2: return lowbit_dots_bits<2>(s, planes, W, nrows, acc);
      case 3: return lowbit_dots_bits<3>(s, planes, W, nrows, acc);
      default: return lowbit_dots_bits<4>(s, planes, W, nrows, acc);
    }
  }
#endif
  int64_t cnt[5];
  for (int64_t i = 0; i < nrows; ++i) {
    lowbit_counts(s, planes + i * np * W, W, np, cnt, avx2);
    int64_t a = 0;
    for (int64_t j = 0; j < bits; ++j) a += cnt[j] << j;
    acc[i] = 2 * a - ((int64_t(1) << bits) - 1) * cnt[bits];
  }
}

void lowbit_counts(const uint32_t* s, const uint32_t* planes, int64_t W, int64_t np, int64_t* cnt, bool avx2) {
#if SNN_HAVE_AVX2
  if (avx2) return lowbit_counts_avx2(s, planes, W, np, cnt);
#endif
  (void)avx2;
  for (int64_t j = 0; j < np; ++j) {
    const uint32_t* p = planes + j * W;
    int64_t c = 0;
    for (int64_t w = 0; w < W; ++w) c += __builtin_popcount(s[w] & p[w]);
    cnt[j] = c;
  }
}

}  // namespace spike_kernels
}  // namespace snnops
