// Torch glue for the CUDA kernels in safety_loss.cuh: the CUDA kernels of
// saferegx::safety_loss_fwd / safety_loss_bwd (schema in csrc/saferegx.cpp; fake impls and
// autograd in saferegx/ops/library.py serve every dispatch key). Built only where torch has CUDA.
//
// Per chunk of rows: fp32 logit tiles by cublasGemmEx, row statistics and dL/dz in place by the
// row kernels, then dh = dz W and dW += dz^T h by cublasGemmEx: the four GEMM-sized products of
// the floor (z, r, dh, dW) and no recompute, memory O(chunk * V). Everything runs on the current
// stream; nothing reads a device value on the host (n_valid stays a device scalar).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "problem.h"
#include "safety_loss.cuh"

namespace saferegx::cuda {
namespace {

void check_cuda(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "saferegx CUDA ", what, ": ", cudaGetErrorString(e));
}

cudaDataType_t cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return CUDA_R_32F;
    case at::kBFloat16:
      return CUDA_R_16BF;
    case at::kHalf:
      return CUDA_R_16F;
    default:
      TORCH_CHECK(false, "saferegx CUDA kernels take float32, bfloat16 or float16 inputs, got ", t,
                  "; use backend='cpu' or 'unfused' for float64");
  }
}

// Row-major C[m, n] (fp32) = beta C + A' B' (A' = A, or A^T when ta; B' likewise), fp32
// accumulation (TF32 only where torch.backends.cuda.matmul.allow_tf32 lets ATen's handle use it).
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const at::Tensor& A,
          const at::Tensor& B, float* C, float beta) {
  const GemmArgs g = row_major_gemm(ta, tb, m, n, k, A.data_ptr(), B.data_ptr());
  const cudaDataType_t type = cuda_type(A.scalar_type());
  const float alpha = 1.f;
  // ATen's handle is already bound to the current stream and carries its workspace.
  const cublasStatus_t status = cublasGemmEx(
      at::cuda::getCurrentCUDABlasHandle(), g.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N,
      g.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N, g.m, g.n, g.k, &alpha, g.first, type,
      g.ld_first, g.second, type, g.ld_second, &beta, C, CUDA_R_32F, g.ldc, CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "saferegx: cublasGemmEx failed, status ",
              static_cast<int>(status));
}

// The shared shape and flags plus the operands in the input dtype, per-row weights in fp32.
struct Problem : ProblemShape {
  at::Tensor h, w, g, wr;    // input dtype, contiguous; g undefined without a reference
  at::Tensor labels, valid;  // int64 [N], bool [N]
  at::Tensor alpha, beta;    // fp32 [N]
};

Problem make_problem(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                     const std::optional<at::Tensor>& ref_hidden,
                     const std::optional<at::Tensor>& ref_weight,
                     const std::optional<at::Tensor>& ce_weight,
                     const std::optional<at::Tensor>& kl_weight, int64_t kl_mode,
                     int64_t ignore_index) {
  TORCH_CHECK(hidden.is_cuda() && weight.is_cuda() && labels.is_cuda(),
              "saferegx CUDA kernels need CUDA tensors");
  Problem p;
  static_cast<ProblemShape&>(p) = check_problem(hidden, weight, labels, ref_hidden, ref_weight,
                                                ce_weight, kl_weight, kl_mode, ignore_index);
  // the GEMMs take every operand in one dtype (no conversions, unlike the CPU kernel)
  cuda_type(hidden.scalar_type());  // rejects float64 with a clear message
  TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), "weight and hidden dtypes differ");
  for (const auto* t : {&ref_hidden, &ref_weight})
    TORCH_CHECK(!t->has_value() || (*t)->scalar_type() == hidden.scalar_type(),
                "ref_hidden and ref_weight must have hidden's dtype");
  p.h = hidden.contiguous();
  p.w = weight.contiguous();
  p.labels = labels.to(at::kLong).contiguous();
  p.valid = p.labels.ne(ignore_index);
  const auto f32 = hidden.options().dtype(at::kFloat);
  if (p.has_ref) p.g = ref_hidden->contiguous();
  if (p.has_ref && !p.shared) p.wr = ref_weight->contiguous();
  p.alpha = ce_weight.has_value() ? ce_weight->to(at::kFloat).contiguous() : at::ones({p.N}, f32);
  if (!p.has_ref)
    p.beta = at::zeros({p.N}, f32);
  else
    p.beta = kl_weight.has_value() ? kl_weight->to(at::kFloat).contiguous() : at::ones({p.N}, f32);
  return p;
}

// Rows per chunk: the fp32 tiles hold chunk x V logits (twice with a reference), ~1 GiB.
int64_t cuda_chunk_rows(int64_t V, bool has_ref) {
  return chunk_rows(V, has_ref, int64_t{1} << 30, 16, 8192, "SAFEREGX_CUDA_CHUNK");
}

// The per-row outputs, and the (max, log-sum) pairs the gradient reads.
struct Stats {
  at::Tensor ce, kl, pairs;  // fp32 [N] x 2, [4, N]

  explicit Stats(const Problem& p) {
    const auto f32 = p.h.options().dtype(at::kFloat);
    ce = at::empty({p.N}, f32);
    kl = at::empty({p.N}, f32);
    pairs = at::empty({4, p.N}, f32);
  }

  StatsOut from_row(int64_t s) {
    float* q = pairs.data_ptr<float>();
    const int64_t n = ce.size(0);
    return {ce.data_ptr<float>() + s, kl.data_ptr<float>() + s, q + s, q + n + s, q + 2 * n + s,
            q + 3 * n + s};
  }
};

template <typename T>
void row_grad(float* z, const float* r, int64_t c, const Problem& p, const int64_t* y,
              const float* ca, const float* cb, StatsOut st, at::Tensor& dz_cast,
              cudaStream_t stream) {
  T* cast = dz_cast.defined() ? reinterpret_cast<T*>(dz_cast.data_ptr()) : nullptr;
  check_cuda(launch_row_grad<T>(z, r, c, p.V, y, p.ignore_index, static_cast<int>(p.kl_mode), ca,
                                cb, st, cast, stream),
             "row_grad_kernel");
}

// All chunks: row statistics always; with coef ([2, N]: alpha_i s_i, beta_i s_i) also dL/dz,
// dh (rows written chunk by chunk) and dW (accumulated, beta = 1), each when not empty.
void run_chunks(const Problem& p, Stats& st, const at::Tensor& coef, at::Tensor& dh,
                at::Tensor& dw) {
  if (p.N == 0) return;
  const bool need_dz = coef.defined();
  const int64_t chunk = std::min(cuda_chunk_rows(p.V, p.has_ref), p.N);
  const auto f32 = p.h.options().dtype(at::kFloat);
  at::Tensor tiles = at::empty({(p.has_ref ? 2 : 1) * chunk, p.V}, f32);
  at::Tensor stacked = p.has_ref && p.shared ? at::empty({2 * chunk, p.D}, p.h.options())
                                             : at::Tensor();
  const auto dtype = p.h.scalar_type();
  at::Tensor dz_cast = need_dz && dtype != at::kFloat ? at::empty({chunk, p.V}, p.h.options())
                                                      : at::Tensor();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < p.N; s += chunk) {
    const int64_t c = std::min(chunk, p.N - s);
    float* z = tiles.data_ptr<float>();
    float* r = p.has_ref ? z + c * p.V : nullptr;
    const at::Tensor hc = p.h.narrow(0, s, c);
    if (p.has_ref && p.shared) {  // [h; g] W^T: one GEMM, W read once for both tiles
      at::Tensor both = stacked.narrow(0, 0, 2 * c);
      both.narrow(0, 0, c).copy_(hc);
      both.narrow(0, c, c).copy_(p.g.narrow(0, s, c));
      gemm(false, true, 2 * c, p.V, p.D, both, p.w, z, 0.f);
    } else {
      gemm(false, true, c, p.V, p.D, hc, p.w, z, 0.f);
      if (p.has_ref) gemm(false, true, c, p.V, p.D, p.g.narrow(0, s, c), p.wr, r, 0.f);
    }
    const int64_t* y = p.labels.data_ptr<int64_t>() + s;
    const StatsOut out = st.from_row(s);
    check_cuda(launch_row_stats(z, r, c, p.V, y, p.ignore_index, static_cast<int>(p.kl_mode), out,
                                stream),
               "row_stats_kernel");
    if (!need_dz) continue;
    const float* ca = coef.data_ptr<float>() + s;
    const float* cb = coef.data_ptr<float>() + p.N + s;
    if (dtype == at::kFloat)
      row_grad<float>(z, r, c, p, y, ca, cb, out, dz_cast, stream);
    else if (dtype == at::kBFloat16)
      row_grad<__nv_bfloat16>(z, r, c, p, y, ca, cb, out, dz_cast, stream);
    else
      row_grad<__half>(z, r, c, p, y, ca, cb, out, dz_cast, stream);
    // the GEMM operand: fp32 dz in place, or its input-dtype copy (fp32 accumulation either way)
    const at::Tensor dz = dtype == at::kFloat ? tiles.narrow(0, 0, c) : dz_cast.narrow(0, 0, c);
    if (dh.numel()) gemm(false, false, c, p.D, p.V, dz, p.w, dh.data_ptr<float>() + s * p.D, 0.f);
    if (dw.numel()) gemm(true, false, p.V, p.D, c, dz, hc, dw.data_ptr<float>(), 1.f);
  }
}

// [2, N] coefficients: alpha_i scale_i and beta_i scale_i on valid rows, 0 on ignored ones.
at::Tensor coefficients(const Problem& p, const at::Tensor& scale) {
  return at::stack({at::where(p.valid, p.alpha * scale, 0.0),
                    at::where(p.valid, p.beta * scale, 0.0)})
      .contiguous();
}

using FwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

FwdResult safety_loss_fwd_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& labels,
                               const std::optional<at::Tensor>& ref_hidden,
                               const std::optional<at::Tensor>& ref_weight,
                               const std::optional<at::Tensor>& ce_weight,
                               const std::optional<at::Tensor>& kl_weight, int64_t kl_mode,
                               int64_t ignore_index, int64_t reduction, bool grad_hidden,
                               bool grad_weight) {
  check_reduction(reduction, grad_hidden, grad_weight);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const Problem p = make_problem(hidden, weight, labels, ref_hidden, ref_weight, ce_weight,
                                 kl_weight, kl_mode, ignore_index);
  Stats st(p);
  auto [dh, dw] = grad_buffers(p, p.h.options().dtype(at::kFloat), grad_hidden, grad_weight);
  const at::Tensor n_valid = p.valid.sum().clamp_min(1).to(at::kFloat);  // stays on the device
  at::Tensor coef;
  if (grad_hidden || grad_weight)
    coef = coefficients(p, reduction == kReductionMean ? n_valid.reciprocal()
                                                       : at::ones({}, n_valid.options()));
  run_chunks(p, st, coef, dh, dw);
  const at::Tensor rows = p.alpha * st.ce + p.beta * st.kl;
  at::Tensor loss = reduction == kReductionNone ? rows
                    : reduction == kReductionSum ? rows.sum()
                                                 : rows.sum() / n_valid;
  return {loss, st.ce, st.kl, dh, dw};
}

// reduction='none' gradients: the row statistics are recomputed from the tiles (as the CPU
// kernel does; kl too, so the forward's is only checked).
std::tuple<at::Tensor, at::Tensor> safety_loss_bwd_cuda(
    const at::Tensor& grad_rows, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& labels, const std::optional<at::Tensor>& ref_hidden,
    const std::optional<at::Tensor>& ref_weight, const std::optional<at::Tensor>& ce_weight,
    const std::optional<at::Tensor>& kl_weight, const at::Tensor& kl, int64_t kl_mode,
    int64_t ignore_index, bool grad_hidden, bool grad_weight) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const Problem p = make_problem(hidden, weight, labels, ref_hidden, ref_weight, ce_weight,
                                 kl_weight, kl_mode, ignore_index);
  check_row_inputs(p, grad_rows, kl);
  auto [dh, dw] = grad_buffers(p, p.h.options().dtype(at::kFloat), grad_hidden, grad_weight);
  if (!(grad_hidden || grad_weight)) return {dh, dw};
  Stats st(p);
  run_chunks(p, st, coefficients(p, grad_rows.to(at::kFloat)), dh, dw);
  return {dh, dw};
}

}  // namespace

TORCH_LIBRARY_IMPL(saferegx, CUDA, m) {
  m.impl("safety_loss_fwd", &safety_loss_fwd_cuda);
  m.impl("safety_loss_bwd", &safety_loss_bwd_cuda);
}

}  // namespace saferegx::cuda
