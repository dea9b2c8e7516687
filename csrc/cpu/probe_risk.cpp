// CPU kernel of saferegx::probe_risk: gather each sequence's probe token, dot, sigmoid.
// Reads acts through its strides, so a slice of a [B, T, D] hidden-state tensor is never copied.
// Per-operator headers, not ATen/ATen.h: a third of the compile time (see _build_flags.py).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

namespace saferegx::cpu {
namespace {

at::Tensor probe_risk_cpu(const at::Tensor& acts, const at::Tensor& positions,
                          const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(acts.dim() == 3, "acts must be [B, T, D]");
  const int64_t B = acts.size(0), T = acts.size(1), D = acts.size(2);
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == B, "positions must be [B]");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D, "weight must be [D]");
  TORCH_CHECK(bias.numel() == 1, "bias must hold one value");
  const auto pos = positions.to(at::kLong).contiguous();
  const auto w = weight.to(at::kDouble).contiguous();
  const double b0 = bias.to(at::kDouble).item<double>();
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < T, "position ", p[i], " of sequence ", i, " is outside [0, ", T, ")");
  auto out = at::empty({B}, acts.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const double* wp = w.data_ptr<double>();
  const int64_t sb = acts.stride(0), st = acts.stride(1), sd = acts.stride(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, acts.scalar_type(), "probe_risk", [&] {
    const scalar_t* a = acts.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const scalar_t* row = a + i * sb + p[i] * st;
        double dot = b0;
        for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(row[d * sd]) * wp[d];
        o[i] = static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saferegx, CPU, m) { m.impl("probe_risk", &probe_risk_cpu); }

}  // namespace saferegx::cpu
