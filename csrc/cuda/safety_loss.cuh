// CUDA kernels of saferegx::safety_loss_fwd / safety_loss_bwd, torch-free (raw pointers and
// cudaStream_t) so that `nvcc -c` compile-checks them without a CUDA torch; binding.cu is the glue.
//
// Held-tile design (as the C++ CPU kernel), chosen because every GEMM goes to cuBLAS and the
// total is the physical floor of four GEMMs: per chunk of rows, the binding forms fp32 logit
// tiles z = h W^T and r = g W_ref^T with cublasGemmEx (bf16/fp16/fp32 inputs, fp32 output; one
// GEMM for both when the head is shared), then
//   row_stats_kernel   one block per row: row max, then the max-shifted sums -> CE, KL and
//                      the (max, log-sum) pairs that keep log p exact at |z| ~ 1e3;
//   row_grad_kernel    one block per row: dL/dz overwrites z in place (and, for bf16/fp16
//                      inputs, is rounded into an input-dtype copy as the GEMM operand);
// and cuBLAS finishes with dh = dz W and dW += dz^T h (fp32 accumulators). Memory is
// O(chunk * V), never [N, V]. The Triton backend streams instead (see docs/gpu.md).
//
// The element math (max-shifted KL sums, the logit gradient) is csrc/common/element_math.h,
// shared with the CPU kernel; it and the row-major -> cuBLAS layout mapping are
// __host__ __device__ / host functions, so a host program tests them without a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "element_math.h"

namespace saferegx::cuda {

constexpr int kRowThreads = 256;

// ---------------------------------------------------------------------------------------------
// Element math: csrc/common/element_math.h (shared with the CPU kernel) with libm's expf, in
// fp32. These wrappers fix the types and the exp, and are what the host test calls.

using RowSums = math::RowSums<float>;
using RowStats = math::RowStats<float>;
using Lse = math::Lse<float>;

__host__ __device__ inline void accumulate_ce(RowSums& s, float z, float mz) { s.sa += expf(z - mz); }

__host__ __device__ inline void accumulate_kl(RowSums& s, float a, float b, float ma, float mb) {
  math::accumulate_kl(s, a, b, ma, mb, math::LibmExp{});
}

__host__ __device__ inline RowStats finish_stats(const RowSums& s, float max_z, float max_r,
                                                 float z_label, bool has_ref, int kl_mode) {
  return math::finish_stats(s, max_z, max_r, z_label, has_ref, kl_mode);
}

// A row's coefficients ca = alpha_i s_i, cb = beta_i s_i and statistics, for grad_element.
struct GradCoefs {
  float ca, cb, kl;
  Lse z, r;
  bool has_ref;
  int kl_mode;
};

// dL/dz_v = ca (p_v - [v = y]) + cb dKL/dz_v.
__host__ __device__ inline float grad_element(float z, float r, bool is_label, const GradCoefs& c) {
  const math::LibmExp exp{};
  float d;
  if (!c.has_ref)
    d = math::grad_ce(z, c.z, c.ca, exp);
  else if (c.kl_mode == kForwardKL)
    d = math::grad_forward(z, r, c.z, c.r, c.ca, c.cb, exp);
  else
    d = math::grad_reverse(z, r, c.z, c.r, c.kl, c.ca, c.cb, exp);
  return is_label ? d - c.ca : d;
}

// ---------------------------------------------------------------------------------------------
// Row-major GEMMs through column-major cuBLAS (host only; binding.cu calls cublasGemmEx).
//
// Row-major C[m, n] = A' B' with A' = A [m, k] (ta = false) or A^T for A stored [k, m], and B'
// = B [k, n] or B^T for B stored [n, k]. The buffer of a row-major X[r, c] is, column-major,
// X^T [c, r] with ld = c, so cuBLAS computes C^T [n, m] = B'^T A'^T: first operand B (op T iff
// tb), second A (op T iff ta), dimensions (n, m, k), ldc = n.
struct GemmArgs {
  bool trans_first, trans_second;
  int m, n, k, ld_first, ld_second, ldc;
  const void* first;
  const void* second;
};

inline GemmArgs row_major_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A,
                               const void* B) {
  GemmArgs g;
  g.trans_first = tb;
  g.trans_second = ta;
  g.m = static_cast<int>(n);
  g.n = static_cast<int>(m);
  g.k = static_cast<int>(k);
  g.ld_first = static_cast<int>(tb ? k : n);
  g.ld_second = static_cast<int>(ta ? m : k);
  g.ldc = static_cast<int>(n);
  g.first = B;
  g.second = A;
  return g;
}

// ---------------------------------------------------------------------------------------------
// Kernels: one block of kRowThreads per row of a chunk; tiles are fp32 [rows, V], row-major.

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ inline RowSums warp_sum(RowSums s) {
  for (int o = 16; o > 0; o >>= 1) {
    s.sa += __shfl_xor_sync(0xffffffffu, s.sa, o);
    s.sb += __shfl_xor_sync(0xffffffffu, s.sb, o);
    s.t += __shfl_xor_sync(0xffffffffu, s.t, o);
  }
  return s;
}

// Block-wide reductions; every thread gets the result.
__device__ inline float block_max(float v) {
  __shared__ float part[kRowThreads / 32];
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x < kRowThreads / 32 ? part[threadIdx.x] : -INFINITY;
  v = warp_max(v);  // every warp reduces the same partials
  __syncthreads();
  return v;
}

__device__ inline RowSums block_sum(RowSums s) {
  __shared__ RowSums part[kRowThreads / 32];
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  s = threadIdx.x < kRowThreads / 32 ? part[threadIdx.x] : RowSums{};
  s = warp_sum(s);
  __syncthreads();
  return s;
}

// Per-row outputs of a chunk (each pointer already offset to the chunk's first row).
struct StatsOut {
  float *ce, *kl;                          // the op's outputs (0 on ignored rows)
  float *max_z, *log_sz, *max_r, *log_sr;  // the (max, log-sum) pairs the gradient kernel reads
};

__global__ void __launch_bounds__(kRowThreads)
row_stats_kernel(const float* __restrict__ z, const float* __restrict__ r, int64_t V,
                 const int64_t* __restrict__ labels, int64_t ignore_index, int kl_mode,
                 StatsOut out) {
  const int64_t row = blockIdx.x;
  const int64_t y = labels[row];
  if (y == ignore_index) {  // uniform over the block: no thread reaches a barrier below
    if (threadIdx.x == 0) {
      out.ce[row] = out.kl[row] = 0.f;
      out.max_z[row] = out.log_sz[row] = out.max_r[row] = out.log_sr[row] = 0.f;
    }
    return;
  }
  const float* zr = z + row * V;
  const float* rr = r ? r + row * V : nullptr;
  float mz = -INFINITY, mr = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
    mz = fmaxf(mz, zr[v]);
    if (rr) mr = fmaxf(mr, rr[v]);
  }
  mz = block_max(mz);
  if (rr) mr = block_max(mr);
  RowSums s;
  const bool fwd = kl_mode == kForwardKL;
  for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
    if (!rr)
      accumulate_ce(s, zr[v], mz);
    else if (fwd)
      accumulate_kl(s, zr[v], rr[v], mz, mr);
    else
      accumulate_kl(s, rr[v], zr[v], mr, mz);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) {
    // a label outside [0, V) (the Python API rejects them) gives NaN, not an out-of-bounds read
    const float z_label = y >= 0 && y < V ? zr[y] : NAN;
    const RowStats st = finish_stats(s, mz, mr, z_label, rr != nullptr, kl_mode);
    out.ce[row] = st.ce;
    out.kl[row] = st.kl;
    out.max_z[row] = st.z.max;
    out.log_sz[row] = st.z.log_sum;
    out.max_r[row] = st.r.max;
    out.log_sr[row] = st.r.log_sum;
  }
}

__device__ inline void store_as(float* p, float x) { *p = x; }
__device__ inline void store_as(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }
__device__ inline void store_as(__half* p, float x) { *p = __float2half(x); }

// z <- dL/dz (fp32, in place); with dz_cast, also dz rounded to T for the dh/dW GEMMs.
// coef_ce / coef_kl are alpha_i s_i and beta_i s_i (s_i: reduction scale times grad_output).
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
row_grad_kernel(float* __restrict__ z, const float* __restrict__ r, int64_t V,
                const int64_t* __restrict__ labels, int64_t ignore_index, int kl_mode,
                const float* __restrict__ coef_ce, const float* __restrict__ coef_kl,
                StatsOut st, T* __restrict__ dz_cast) {
  const int64_t row = blockIdx.x;
  const int64_t y = labels[row];
  float* zr = z + row * V;
  const float* rr = r ? r + row * V : nullptr;
  T* out = dz_cast ? dz_cast + row * V : nullptr;
  if (y == ignore_index) {
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      zr[v] = 0.f;
      if (out) store_as(out + v, 0.f);
    }
    return;
  }
  const GradCoefs c{coef_ce[row], coef_kl[row], st.kl[row], Lse{st.max_z[row], st.log_sz[row]},
                    Lse{st.max_r[row], st.log_sr[row]}, rr != nullptr, kl_mode};
  for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
    const float d = grad_element(zr[v], rr ? rr[v] : 0.f, v == y, c);
    zr[v] = d;
    if (out) store_as(out + v, d);
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers (host). `rows` rows of fp32 tiles z, r (r null without a reference), row-major with
// V columns; labels and outputs offset to the chunk's first row.

inline cudaError_t launch_row_stats(const float* z, const float* r, int64_t rows, int64_t V,
                                    const int64_t* labels, int64_t ignore_index, int kl_mode,
                                    StatsOut out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  row_stats_kernel<<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(
      z, r, V, labels, ignore_index, kl_mode, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_row_grad(float* z, const float* r, int64_t rows, int64_t V,
                            const int64_t* labels, int64_t ignore_index, int kl_mode,
                            const float* coef_ce, const float* coef_kl, StatsOut stats,
                            T* dz_cast, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  row_grad_kernel<T><<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(
      z, r, V, labels, ignore_index, kl_mode, coef_ce, coef_kl, stats, dz_cast);
  return cudaGetLastError();
}

}  // namespace saferegx::cuda
