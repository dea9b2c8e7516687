// CPU kernels of saferegx::safety_loss_fwd / safety_loss_bwd.
//
// Rows are processed in chunks. For each chunk the policy logits z = h W^T and the reference
// logits r = g W_ref^T are formed as fp32 tiles [chunk, V] by ATen GEMMs (one GEMM for both when
// the head is shared, so W is read once), the per-row softmax statistics are taken in place
// (parallel over rows), dL/dz overwrites z, and dh = dz W, dW += dz^T h finish the chunk.
// Three GEMMs in all, memory O(chunk * V), never an [N, V] buffer.
// Per-operator headers, not ATen/ATen.h (see _build_flags.py).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "problem.h"
#include "row_kernels.h"
#include "safety_loss.h"

namespace saferegx::cpu {

// Rows per tile: the tiles hold chunk x V fp32 logits (twice with a reference), ~64 MiB in all,
// but never under 256 rows: each GEMM call re-packs the whole head W, and with fewer rows that
// cost stops being amortized (measured at D=2048, V=128256: 65 rows 15.2 s, 256 rows 10.6 s, the
// full-size GEMMs 10.2 s; at D=576, V=49152 170 and 341 rows are within noise).
int64_t chunk_rows(int64_t V, bool has_ref) {
  return saferegx::chunk_rows(V, has_ref, int64_t{64} << 20, 256, 1024, "SAFEREGX_CPU_CHUNK");
}

namespace {

using math::Lse;

// fp32 accumulation for fp32/bf16/fp16 inputs; float64 inputs (the test oracle's) stay float64.
at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

// The shared shape and flags plus the operands, converted to the accumulation type T.
template <typename T>
struct Problem : ProblemShape {
  at::Tensor h, w, g, wr;  // T contiguous; g undefined without a reference, wr when shared
  at::Tensor labels;       // int64 contiguous
  at::Tensor alpha, beta;  // T contiguous per-row weights, undefined = 1

  T alpha_at(int64_t i) const { return alpha.defined() ? alpha.template data_ptr<T>()[i] : T(1); }
  T beta_at(int64_t i) const {
    if (!has_ref) return T(0);
    return beta.defined() ? beta.template data_ptr<T>()[i] : T(1);
  }
};

template <typename T>
Problem<T> make_problem(const at::Tensor& hidden, const at::Tensor& weight,
                        const at::Tensor& labels, const std::optional<at::Tensor>& ref_hidden,
                        const std::optional<at::Tensor>& ref_weight,
                        const std::optional<at::Tensor>& ce_weight,
                        const std::optional<at::Tensor>& kl_weight, int64_t kl_mode,
                        int64_t ignore_index) {
  Problem<T> p;
  static_cast<ProblemShape&>(p) = check_problem(hidden, weight, labels, ref_hidden, ref_weight,
                                                ce_weight, kl_weight, kl_mode, ignore_index);
  const auto acc = acc_type(hidden);
  p.h = as_acc(hidden, acc);
  p.w = as_acc(weight, acc);
  p.labels = labels.to(at::kLong).contiguous();
  if (p.has_ref) p.g = as_acc(*ref_hidden, acc);
  if (p.has_ref && !p.shared) p.wr = as_acc(*ref_weight, acc);
  if (ce_weight.has_value()) p.alpha = as_acc(*ce_weight, acc);
  if (kl_weight.has_value()) p.beta = as_acc(*kl_weight, acc);
  // free on CPU, unlike on a GPU: an out-of-range label would read outside the tile
  const int64_t* y = p.labels.template data_ptr<int64_t>();
  for (int64_t i = 0; i < p.N; ++i)
    TORCH_CHECK(y[i] == ignore_index || (y[i] >= 0 && y[i] < p.V), "label ", y[i],
                " at row ", i, " is outside [0, ", p.V, ")");
  return p;
}

// Reusable accumulation-type tiles for one chunk of rows.
template <typename T>
struct Tiles {
  at::Tensor logits;   // [chunk, V], or [2 * chunk, V] with the reference below the policy
  at::Tensor stacked;  // [2 * chunk, D]: policy and reference rows for the shared-head GEMM

  Tiles(const Problem<T>& p, int64_t chunk) {
    const auto f = p.h.options();
    logits = at::empty({chunk * (p.has_ref ? 2 : 1), p.V}, f);
    if (p.has_ref && p.shared) stacked = at::empty({2 * chunk, p.D}, f);
  }

  // z = h W^T (and r = g W_ref^T) for rows [s, s + c); returns views (z, r) into `logits`.
  std::pair<at::Tensor, at::Tensor> fill(const Problem<T>& p, int64_t s, int64_t c) {
    const auto hc = p.h.narrow(0, s, c);
    if (!p.has_ref) {
      auto z = logits.narrow(0, 0, c);
      at::mm_out(z, hc, p.w.t());
      return {z, at::Tensor()};
    }
    auto zr = logits.narrow(0, 0, 2 * c);
    if (p.shared) {
      auto st = stacked.narrow(0, 0, 2 * c);
      st.narrow(0, 0, c).copy_(hc);
      st.narrow(0, c, c).copy_(p.g.narrow(0, s, c));
      at::mm_out(zr, st, p.w.t());
    } else {
      auto z = zr.narrow(0, 0, c), r = zr.narrow(0, c, c);
      at::mm_out(z, hc, p.w.t());
      at::mm_out(r, p.g.narrow(0, s, c), p.wr.t());
    }
    return {zr.narrow(0, 0, c), zr.narrow(0, c, c)};
  }
};

// Overwrites the row z with dL/dz = ca (p - onehot(y)) + cb dKL/dz.
template <typename T>
void row_grad(const Problem<T>& p, T* z, const T* r, int64_t y, Lse<T> lz, Lse<T> lr, T kl, T ca,
              T cb) {
  if (!p.has_ref || cb == T(0)) {
    row_grad_ce(z, p.V, lz, ca);
  } else if (p.kl_mode == kForwardKL) {
    row_grad_forward(z, r, p.V, lz, lr, ca, cb);
  } else {
    row_grad_reverse(z, r, p.V, lz, lr, kl, ca, cb);
  }
  z[y] -= ca;
}

// A row's (max, log-sum) recomputed from its tile, for the backward of reduction='none': a saved
// fp32 lse would at |z| ~ 1e3 only be good to its ulp (6e-5), so none is saved. One exp pass per
// row, small next to the three GEMMs the backward recomputes anyway.
template <typename T>
Lse<T> row_lse(const T* row, int64_t n) {
  const T m = row_max(row, n);
  return {m, static_cast<T>(std::log(row_sum_exp(row, n, m)))};
}

// dh[s:s+c] = dz W and dW += dz^T h[s:s+c] (each only when asked for).
template <typename T>
void accumulate_grads(const Problem<T>& p, const at::Tensor& dz, int64_t s, int64_t c,
                      at::Tensor& dh, at::Tensor& dw) {
  if (dh.numel()) {
    auto out = dh.narrow(0, s, c);
    at::mm_out(out, dz, p.w);
  }
  if (dw.numel()) dw.addmm_(dz.t(), p.h.narrow(0, s, c));
}

// The chunk loop both ops share: fill each chunk's logit tiles, run `row(index, z_row, r_row)` in
// parallel over its rows (r_row is null without a reference; the row may overwrite z with dL/dz),
// then, when gradients are wanted, the dh / dW GEMMs on the chunk's dz.
template <typename T, typename RowFn>
void for_each_chunk(const Problem<T>& p, bool grads, at::Tensor& dh, at::Tensor& dw, RowFn row) {
  const int64_t chunk = std::min(chunk_rows(p.V, p.has_ref), std::max<int64_t>(p.N, 1));
  Tiles<T> tiles(p, chunk);
  for (int64_t s = 0; s < p.N; s += chunk) {
    const int64_t c = std::min(chunk, p.N - s);
    auto [z, r] = tiles.fill(p, s, c);
    T* z0 = z.template data_ptr<T>();
    const T* r0 = p.has_ref ? r.template data_ptr<T>() : nullptr;
    at::parallel_for(0, c, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) row(s + i, z0 + i * p.V, r0 ? r0 + i * p.V : nullptr);
    });
    if (grads) accumulate_grads(p, z, s, c, dh, dw);
  }
}

using FwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename T>
FwdResult fwd_impl(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                   const std::optional<at::Tensor>& ref_hidden,
                   const std::optional<at::Tensor>& ref_weight,
                   const std::optional<at::Tensor>& ce_weight,
                   const std::optional<at::Tensor>& kl_weight, int64_t kl_mode,
                   int64_t ignore_index, int64_t reduction, bool grad_hidden, bool grad_weight) {
  check_reduction(reduction, grad_hidden, grad_weight);
  const Problem<T> p = make_problem<T>(hidden, weight, labels, ref_hidden, ref_weight, ce_weight,
                                       kl_weight, kl_mode, ignore_index);
  const auto f = p.h.options();
  auto ce = at::zeros({p.N}, f), kl = at::zeros({p.N}, f);
  auto [dh, dw] = grad_buffers(p, f, grad_hidden, grad_weight);
  const bool need_dz = grad_hidden || grad_weight;

  const int64_t* y = p.labels.template data_ptr<int64_t>();
  int64_t n_valid = 0;
  for (int64_t i = 0; i < p.N; ++i) n_valid += y[i] != ignore_index;
  const T scale =
      reduction == kReductionMean ? T(1) / static_cast<T>(std::max<int64_t>(n_valid, 1)) : T(1);

  T *ce_p = ce.template data_ptr<T>(), *kl_p = kl.template data_ptr<T>();
  for_each_chunk(p, need_dz, dh, dw, [&](int64_t row, T* zi, const T* ri) {
    if (y[row] == ignore_index) {
      if (need_dz) std::fill(zi, zi + p.V, T(0));
      return;
    }
    // the sums in double; KL(softmax b || softmax a) with (a, b) = (z, r) forward, (r, z) reverse
    const T mz = row_max(zi, p.V);
    const T mr = ri ? row_max(ri, p.V) : T(0);
    const bool fwd = p.kl_mode == kForwardKL;
    const math::RowSums<double> sums =
        !ri ? math::RowSums<double>{row_sum_exp(zi, p.V, mz)}
            : row_kl_sums(fwd ? zi : ri, fwd ? ri : zi, p.V, fwd ? mz : mr, fwd ? mr : mz);
    const math::RowStats<double> st =
        math::finish_stats<double>(sums, mz, mr, zi[y[row]], ri != nullptr, p.kl_mode);
    ce_p[row] = static_cast<T>(st.ce);
    kl_p[row] = static_cast<T>(st.kl);
    if (need_dz)
      row_grad(p, zi, ri, y[row], Lse<T>{mz, static_cast<T>(st.z.log_sum)},
               Lse<T>{mr, static_cast<T>(st.r.log_sum)}, kl_p[row], p.alpha_at(row) * scale,
               p.beta_at(row) * scale);
  });

  at::Tensor loss;
  if (reduction == kReductionNone) {
    loss = at::empty({p.N}, f);
    T* l = loss.template data_ptr<T>();
    for (int64_t i = 0; i < p.N; ++i) l[i] = p.alpha_at(i) * ce_p[i] + p.beta_at(i) * kl_p[i];
  } else {
    double total = 0.0;
    for (int64_t i = 0; i < p.N; ++i)
      total += static_cast<double>(p.alpha_at(i)) * ce_p[i] + static_cast<double>(p.beta_at(i)) * kl_p[i];
    if (reduction == kReductionMean) total /= static_cast<double>(std::max<int64_t>(n_valid, 1));
    loss = at::scalar_tensor(total, f);
  }
  return {loss, ce, kl, dh, dw};
}

FwdResult safety_loss_fwd_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                              const at::Tensor& labels,
                              const std::optional<at::Tensor>& ref_hidden,
                              const std::optional<at::Tensor>& ref_weight,
                              const std::optional<at::Tensor>& ce_weight,
                              const std::optional<at::Tensor>& kl_weight, int64_t kl_mode,
                              int64_t ignore_index, int64_t reduction, bool grad_hidden,
                              bool grad_weight) {
  auto impl = acc_type(hidden) == at::kDouble ? &fwd_impl<double> : &fwd_impl<float>;
  return impl(hidden, weight, labels, ref_hidden, ref_weight, ce_weight, kl_weight, kl_mode,
              ignore_index, reduction, grad_hidden, grad_weight);
}

// Each row's (max, log-sum) is recomputed from its tile (row_lse); kl is the forward's.
template <typename T>
std::tuple<at::Tensor, at::Tensor> bwd_impl(
    const at::Tensor& grad_rows, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& labels, const std::optional<at::Tensor>& ref_hidden,
    const std::optional<at::Tensor>& ref_weight, const std::optional<at::Tensor>& ce_weight,
    const std::optional<at::Tensor>& kl_weight, const at::Tensor& kl, int64_t kl_mode,
    int64_t ignore_index, bool grad_hidden, bool grad_weight) {
  const Problem<T> p = make_problem<T>(hidden, weight, labels, ref_hidden, ref_weight, ce_weight,
                                       kl_weight, kl_mode, ignore_index);
  check_row_inputs(p, grad_rows, kl);
  const auto acc = p.h.scalar_type();
  const auto gr = as_acc(grad_rows, acc), klc = as_acc(kl, acc);
  auto [dh, dw] = grad_buffers(p, p.h.options(), grad_hidden, grad_weight);
  if (!(grad_hidden || grad_weight)) return {dh, dw};

  const int64_t* y = p.labels.template data_ptr<int64_t>();
  const T *g_p = gr.template data_ptr<T>(), *kl_p = klc.template data_ptr<T>();
  for_each_chunk(p, true, dh, dw, [&](int64_t row, T* zi, const T* ri) {
    if (y[row] == ignore_index) {
      std::fill(zi, zi + p.V, T(0));
      return;
    }
    const Lse<T> lr = ri ? row_lse(ri, p.V) : Lse<T>{0, 0};
    row_grad(p, zi, ri, y[row], row_lse<T>(zi, p.V), lr, kl_p[row], p.alpha_at(row) * g_p[row],
             p.beta_at(row) * g_p[row]);
  });
  return {dh, dw};
}

std::tuple<at::Tensor, at::Tensor> safety_loss_bwd_cpu(
    const at::Tensor& grad_rows, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& labels, const std::optional<at::Tensor>& ref_hidden,
    const std::optional<at::Tensor>& ref_weight, const std::optional<at::Tensor>& ce_weight,
    const std::optional<at::Tensor>& kl_weight, const at::Tensor& kl, int64_t kl_mode,
    int64_t ignore_index, bool grad_hidden, bool grad_weight) {
  auto impl = acc_type(hidden) == at::kDouble ? &bwd_impl<double> : &bwd_impl<float>;
  return impl(grad_rows, hidden, weight, labels, ref_hidden, ref_weight, ce_weight, kl_weight, kl,
              kl_mode, ignore_index, grad_hidden, grad_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(saferegx, CPU, m) {
  m.impl("safety_loss_fwd", &safety_loss_fwd_cpu);
  m.impl("safety_loss_bwd", &safety_loss_bwd_cpu);
}

}  // namespace saferegx::cpu
