// Spike GEMMs on bit-packed spikes (CPU): entry points other C++ files may call.
//
// Packed-spike layout: see cpu/spike_pack.h (feature dim moved last, ceil(K/32)
// int32 words, feature k = bit k % 32 of word k / 32, LSB first, high bits 0).
// The tensor-level functions are the CPU kernels of the torch.ops.snnops ops of
// the same names (snnops/ops/spike_gemm.py, snnops/ops/pack.py document them);
// they run at::parallel_for inside, so call them from outside a parallel region.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace snnops {

// ------------------------------------------------------------------ raw kernel
// out[r, n] = (bias ? bias[n] : 0) + sum over set bits c of row r of A of B[c, n]
//   A: R rows of ceil(C/32) words, row r at A + r * lda (bits >= C are ignored)
//   B: element (c, n) at B[c * ldb_c + n * ldb_n]  (any strides: W^T of a
//      row-major weight is ldb_c = 1, ldb_n = K; a row-major [C, N] is ldb_c = N)
//   out: element (r, n) at out[r * ldo_r + n * ldo_n]
// Runs on at::parallel_for threads; every output element is written by one thread.
void spike_rows_gemm_f32(const uint32_t* A, int64_t lda, int64_t R, int64_t C, const float* B,
                         int64_t ldb_c, int64_t ldb_n, int64_t N, float* out, int64_t ldo_r,
                         int64_t ldo_n, const float* bias);

// ------------------------------------------------------------------ tensor level
// Pack 0/1 values (any real or bool dtype) along `dim` -> int32 words, dim moved last.
at::Tensor pack_spikes_cpu(const at::Tensor& spikes, int64_t dim);

// Inverse of pack_spikes_cpu: `features` = K; `dim` is the feature dim of the result.
at::Tensor unpack_spikes_cpu(const at::Tensor& packed, int64_t features, int64_t dim,
                             at::ScalarType dtype);

// Y = S W^T + b with S = spikes packed along dim. Returns (Y, packed S); Y has the
// shape of the packed tensor with its last dim replaced by N = weight.size(0).
std::tuple<at::Tensor, at::Tensor> spike_gemm_cpu(const at::Tensor& spikes, const at::Tensor& weight,
                                                  const std::optional<at::Tensor>& bias, int64_t dim);

// Same from already packed spikes [..., ceil(K/32)] (K = weight.size(1)). `spikes`
// and `dim` only describe the float tensor that receives the gradient; not read.
at::Tensor spike_gemm_packed_cpu(const at::Tensor& packed, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& spikes, int64_t dim);

// Gradients of Y = S W^T + b: (dS rows [..., K], dW [N, K], db [N]); a gradient not
// asked for is returned as an empty tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> spike_gemm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& packed, const at::Tensor& weight, bool need_spikes,
    bool need_weight, bool need_bias);

// Spikes times symmetric `bits`-bit weights, bit-serially:
//   planes: int32 [N, bits + 1, ceil(K/32)]; plane j < bits holds bit j of the codes
//   (AND keep-mask), plane `bits` the keep-mask; weight = (2 code - (2^bits - 1)) * scale.
at::Tensor spike_gemm_lowbit_cpu(const at::Tensor& packed, const at::Tensor& planes,
                                 const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                 int64_t bits);

}  // namespace snnops
