// The per-element math of the fused loss, written once for the CPU kernel's vectorized loops
// (csrc/cpu/row_kernels.h) and the CUDA kernels (csrc/cuda/safety_loss.cuh). Torch-free; templated
// on the float type and, where an exp is taken, on the exp function, because the backends differ
// there: the CPU passes a polynomial exp that GCC vectorizes, CUDA passes expf.
//
// Everything is forced inline: the CPU's loops only vectorize once these calls are gone, and
// the CPU's ISA clones (target_clones) must each get their own copy.
#pragma once
#include <cmath>

#include "codes.h"

#if defined(__CUDACC__)
#define SAFEREGX_HD __host__ __device__
#define SAFEREGX_INLINE __forceinline__
#else
#define SAFEREGX_HD
#define SAFEREGX_INLINE inline __attribute__((always_inline))
#endif

namespace saferegx::math {

SAFEREGX_HD SAFEREGX_INLINE float log_of(float x) { return logf(x); }
SAFEREGX_HD SAFEREGX_INLINE double log_of(double x) { return log(x); }

// The libm exp, as a function object (CUDA's kernels; the CPU's float64 path).
struct LibmExp {
  SAFEREGX_HD SAFEREGX_INLINE float operator()(float x) const { return expf(x); }
  SAFEREGX_HD SAFEREGX_INLINE double operator()(double x) const { return exp(x); }
};

// A row's log-sum-exp as (row max, log of the max-shifted sum), never added up: an fp32 lse of
// ~1e3 is only good to its ulp (6e-5), and log p = (z - max) - log_sum keeps full precision.
template <typename T>
struct Lse {
  T max = 0, log_sum = 0;
};

template <typename T>
SAFEREGX_HD SAFEREGX_INLINE T log_softmax(T x, const Lse<T>& l) {
  return (x - l.max) - l.log_sum;
}

// With a' = a - ma, b' = b - mb: sa = sum e^a', sb = sum e^b', t = sum e^b' (b' - a'). Then
// KL(softmax b || softmax a) = t / sb + log sa - log sb: the row maxima cancel exactly, so equal
// rows give KL = 0 even at |logits| ~ 1e3. Forward KL is (a, b) = (z, r), reverse (r, z).
// Without a reference only sa (over z) is used.
template <typename T>
struct RowSums {
  T sa = 0, sb = 0, t = 0;
};

template <typename T>
SAFEREGX_HD SAFEREGX_INLINE RowSums<T> operator+(RowSums<T> x, const RowSums<T>& y) {
  x.sa += y.sa;
  x.sb += y.sb;
  x.t += y.t;
  return x;
}

// One element's terms of the sums above. Returned by value rather than added into a RowSums, so
// that the CPU's `omp simd` loops keep plain scalar reduction variables.
template <typename T, typename Exp>
SAFEREGX_HD SAFEREGX_INLINE RowSums<T> kl_terms(T a, T b, T ma, T mb, Exp exp) {
  const T xa = a - ma, xb = b - mb, eb = exp(xb);
  return {exp(xa), eb, eb * (xb - xa)};
}

template <typename T, typename Exp>
SAFEREGX_HD SAFEREGX_INLINE void accumulate_kl(RowSums<T>& s, T a, T b, T ma, T mb, Exp exp) {
  s = s + kl_terms(a, b, ma, mb, exp);
}

template <typename T>
SAFEREGX_HD SAFEREGX_INLINE T kl_from_sums(const RowSums<T>& s) {
  return s.t / s.sb + log_of(s.sa) - log_of(s.sb);
}

// CE = lse(z) - z[y], written so the row max cancels before the log-sum is added.
template <typename T>
SAFEREGX_HD SAFEREGX_INLINE T ce_from_lse(const Lse<T>& l, T z_label) {
  return (l.max - z_label) + l.log_sum;
}

// A row's statistics from its sums (sa over z alone without a reference).
template <typename T>
struct RowStats {
  T ce = 0, kl = 0;
  Lse<T> z, r;
};

template <typename T>
SAFEREGX_HD SAFEREGX_INLINE RowStats<T> finish_stats(const RowSums<T>& s, T max_z, T max_r,
                                                    T z_label, bool has_ref, int kl_mode) {
  RowStats<T> st;
  st.z.max = max_z;
  if (!has_ref) {
    st.z.log_sum = log_of(s.sa);
  } else {
    const bool fwd = kl_mode == kForwardKL;
    st.z.log_sum = log_of(fwd ? s.sa : s.sb);
    st.r = {max_r, log_of(fwd ? s.sb : s.sa)};
    st.kl = kl_from_sums(s);
  }
  st.ce = ce_from_lse(st.z, z_label);
  return st;
}

// dL/dz_v = ca (p_v - [v = y]) + cb dKL/dz_v with ca = alpha_i s_i, cb = beta_i s_i; these give
// all of it but the -ca at the label, which the callers subtract.

// CE alone: ca p.
template <typename T, typename Exp>
SAFEREGX_HD SAFEREGX_INLINE T grad_ce(T z, const Lse<T>& lz, T ca, Exp exp) {
  return ca * exp(log_softmax(z, lz));
}

// forward KL(q || p): ca p + cb (p - q); not (ca + cb) p - cb q, whose rounding leaves
// ~eps * ca residue where p = q (e.g. a one-token vocabulary, whose gradient is exactly 0).
template <typename T, typename Exp>
SAFEREGX_HD SAFEREGX_INLINE T grad_forward(T z, T r, const Lse<T>& lz, const Lse<T>& lr, T ca,
                                           T cb, Exp exp) {
  const T p = exp(log_softmax(z, lz));
  return ca * p + cb * (p - exp(log_softmax(r, lr)));
}

// reverse KL(p || q): p (ca + cb (log p - log q - KL)).
template <typename T, typename Exp>
SAFEREGX_HD SAFEREGX_INLINE T grad_reverse(T z, T r, const Lse<T>& lz, const Lse<T>& lr, T kl,
                                           T ca, T cb, Exp exp) {
  const T log_p = log_softmax(z, lz);
  return exp(log_p) * (ca + cb * (log_p - log_softmax(r, lr) - kl));
}

}  // namespace saferegx::math
