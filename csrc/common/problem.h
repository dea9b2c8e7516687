// The problem description shared by the CPU kernel and the CUDA binding: the argument checks of
// safety_loss_fwd / _bwd, the rows per chunk of logit tiles, and the gradient buffers. Host only
// (ATen). What differs stays with each backend: the CPU converts operands to its accumulation
// type, CUDA keeps the input dtype and fp32 per-row weights.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <tuple>

#include "codes.h"

namespace saferegx {

// What every backend checks and records alike; each adds its own operand tensors.
struct ProblemShape {
  int64_t N = 0, D = 0, V = 0, ignore_index = -100, kl_mode = kForwardKL;
  bool has_ref = false, shared = true;  // shared: the reference uses the policy's head
};

inline ProblemShape check_problem(const at::Tensor& hidden, const at::Tensor& weight,
                                  const at::Tensor& labels,
                                  const std::optional<at::Tensor>& ref_hidden,
                                  const std::optional<at::Tensor>& ref_weight,
                                  const std::optional<at::Tensor>& ce_weight,
                                  const std::optional<at::Tensor>& kl_weight, int64_t kl_mode,
                                  int64_t ignore_index) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2, "hidden and weight must be 2-D");
  TORCH_CHECK(hidden.size(1) == weight.size(1), "hidden and weight disagree on D");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == hidden.size(0), "labels must be [N]");
  TORCH_CHECK(is_kl_mode(kl_mode), "kl_mode must be 0 or 1");
  ProblemShape s;
  s.N = hidden.size(0);
  s.D = hidden.size(1);
  s.V = weight.size(0);
  s.kl_mode = kl_mode;
  s.ignore_index = ignore_index;
  s.has_ref = ref_hidden.has_value();
  if (s.has_ref) {
    TORCH_CHECK(ref_hidden->sizes() == hidden.sizes(), "ref_hidden must have hidden's shape");
    s.shared = !ref_weight.has_value() || ref_weight->is_same(weight);
    if (!s.shared)
      TORCH_CHECK(ref_weight->sizes() == weight.sizes(), "ref_weight must have weight's shape");
  }
  for (const auto* rw : {&ce_weight, &kl_weight})
    if (rw->has_value())
      TORCH_CHECK((*rw)->dim() == 1 && (*rw)->size(0) == s.N, "per-row weights must be [N]");
  return s;
}

inline void check_reduction(int64_t reduction, bool grad_hidden, bool grad_weight) {
  TORCH_CHECK(is_reduction(reduction), "bad reduction ", reduction, ": must be 0, 1 or 2");
  TORCH_CHECK(reduction != kReductionNone || !(grad_hidden || grad_weight),
              "gradients in the forward need a scalar reduction; use safety_loss_bwd");
}

// The backward's per-row inputs: grad_output and the forward's KL (reverse KL's gradient reads it).
inline void check_row_inputs(const ProblemShape& p, const at::Tensor& grad_rows,
                             const at::Tensor& kl) {
  for (const auto* t : {&grad_rows, &kl})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == p.N, "grad_rows and kl must be [N]");
}

// Rows per chunk: the fp32 tiles hold rows x V logits (twice with a reference) in about
// budget_bytes, within [min_rows, max_rows]; a positive integer in env_var overrides.
inline int64_t chunk_rows(int64_t V, bool has_ref, int64_t budget_bytes, int64_t min_rows,
                          int64_t max_rows, const char* env_var) {
  if (const char* env = std::getenv(env_var)) {
    const long v = std::atol(env);
    if (v > 0) return v;
  }
  const int64_t bytes_per_row = std::max<int64_t>(V, 1) * 4 * (has_ref ? 2 : 1);
  return std::clamp<int64_t>(budget_bytes / bytes_per_row, min_rows, max_rows);
}

// (dh [N, D], dW [V, D]) in `options`, each empty ([0]) when not asked for; dW starts at 0
// because the chunks accumulate into it.
inline std::tuple<at::Tensor, at::Tensor> grad_buffers(const ProblemShape& p,
                                                       const at::TensorOptions& options,
                                                       bool grad_hidden, bool grad_weight) {
  return {grad_hidden ? at::empty({p.N, p.D}, options) : at::empty({0}, options),
          grad_weight ? at::zeros({p.V, p.D}, options) : at::empty({0}, options)};
}

}  // namespace saferegx
