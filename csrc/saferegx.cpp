// The schema of saferegx's ops, declared once; each backend registers its kernels elsewhere
// (csrc/cpu/*.cpp for CPU, csrc/cuda/binding.cu for CUDA). Fake impls and autograd live in
// saferegx/ops/library.py. The integer codes of kl_mode and reduction: csrc/common/codes.h.
// torch/library.h and pybind11 alone, not torch/extension.h (all of torch's C++ and Python API):
// the module only declares schemas and one helper, and compiles in a fraction of the time.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "cpu/safety_loss.h"

TORCH_LIBRARY(saferegx, m) {
  // Fused risk-weighted CE + token-level KL to a reference, from hidden states and LM heads.
  // Returns (loss, ce, kl, grad_hidden, grad_weight); the last two are the loss's gradients for
  // grad_output = 1 (fp32, or empty when not asked for), formed in the same pass.
  m.def(
      "safety_loss_fwd(Tensor hidden, Tensor weight, Tensor labels, Tensor? ref_hidden, "
      "Tensor? ref_weight, Tensor? ce_weight, Tensor? kl_weight, int kl_mode, int ignore_index, "
      "int reduction, bool grad_hidden, bool grad_weight) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients for reduction='none': recomputes the logit tiles and each row's log-sum-exp, takes
  // the forward's per-row kl, and scales each row by grad_rows. Returns fp32 (grad_hidden,
  // grad_weight), empty if not asked.
  m.def(
      "safety_loss_bwd(Tensor grad_rows, Tensor hidden, Tensor weight, Tensor labels, "
      "Tensor? ref_hidden, Tensor? ref_weight, Tensor? ce_weight, Tensor? kl_weight, "
      "Tensor kl, int kl_mode, int ignore_index, bool grad_hidden, bool grad_weight) "
      "-> (Tensor, Tensor)");
  // The activation-probe read: sigmoid(acts[b, positions[b]] . weight + bias), [B] fp32.
  // No gradient: the risk is a constant of the loss (the model must not learn to fool its monitor).
  m.def("probe_risk(Tensor acts, Tensor positions, Tensor weight, Tensor bias) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "saferegx C++ kernels; the ops are reached through torch.ops.saferegx";
  m.def("cpu_chunk_rows", &saferegx::cpu::chunk_rows, pybind11::arg("V"), pybind11::arg("has_ref"),
        "Rows per chunk of the CPU kernel's logit tiles (SAFEREGX_CPU_CHUNK overrides).");
}
