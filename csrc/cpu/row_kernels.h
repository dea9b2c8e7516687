// Per-row softmax statistics and logit gradients over one row of V fp32 logits: the loops over
// a row, whose per-element math is csrc/common/element_math.h (shared with the CUDA kernels).
// Plain loops that GCC vectorizes (-O3 -fopenmp-simd); on x86-64 each is compiled for AVX-512,
// AVX2+FMA and the baseline, the best picked at load time (target_clones).
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>
#include <limits>

#include "element_math.h"

namespace saferegx::cpu {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SAFEREGX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SAFEREGX_CLONES
#endif

// exp(x) to ~2 ulp (Cephes range reduction + degree-6 polynomial) in a form that vectorizes,
// unlike libm's expf. Inputs below -87 give ~1e-38 instead of 0: harmless next to the row max.
// Forced inline: called through math::* from an ISA clone, GCC otherwise keeps it out of line
// (a scalar call per element: the loops stop vectorizing, 25% slower at D = 576).
static inline __attribute__((always_inline)) float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // n = floor(x log2(e) + 1/2) by truncation and a fix-up, so that no libm call blocks vectors
  const float t = x * 1.44269504088896341f + 0.5f;
  int32_t k = static_cast<int32_t>(t);
  k -= static_cast<int32_t>(t < static_cast<float>(k));
  const float n = static_cast<float>(k);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  return y * __builtin_bit_cast(float, (k + 127) << 23);
}

// float64 is the test oracle's precision: libm's exp, no shortcuts.
static inline __attribute__((always_inline)) double fast_exp(double x) { return std::exp(x); }

// fast_exp as the exp of the shared element math (csrc/common/element_math.h).
struct FastExp {
  template <typename T>
  inline __attribute__((always_inline)) T operator()(T x) const { return fast_exp(x); }
};

// Rows are summed in blocks in fp32 lanes, blocks in double: error ~ block/lanes ulp, not V.
constexpr int64_t kSumBlock = 1024;

template <typename T>
static inline __attribute__((always_inline)) T row_max_t(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::max();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// sum exp(x - m)
template <typename T>
static inline __attribute__((always_inline)) double row_sum_exp_t(const T* x, int64_t n, T m) {
  double total = 0.0;
  for (int64_t s = 0; s < n; s += kSumBlock) {
    const int64_t e = s + kSumBlock < n ? s + kSumBlock : n;
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = s; i < e; ++i) acc += fast_exp(x[i] - m);
    total += acc;
  }
  return total;
}

// The max-shifted sums (sa, sb, t) of math::kl_terms over a row, in double.
template <typename T>
static inline __attribute__((always_inline)) math::RowSums<double> row_kl_sums_t(
    const T* a, const T* b, int64_t n, T ma, T mb) {
  math::RowSums<double> total;
  for (int64_t s = 0; s < n; s += kSumBlock) {
    const int64_t e = s + kSumBlock < n ? s + kSumBlock : n;
    T acc_a = 0, acc_b = 0, acc_t = 0;
#pragma omp simd reduction(+ : acc_a, acc_b, acc_t)
    for (int64_t i = s; i < e; ++i) {
      const math::RowSums<T> k = math::kl_terms(a[i], b[i], ma, mb, FastExp{});
      acc_a += k.sa;
      acc_b += k.sb;
      acc_t += k.t;
    }
    total = total + math::RowSums<double>{acc_a, acc_b, acc_t};
  }
  return total;
}

// The gradient loops overwrite the row z with dL/dz but the label's -ca (see element_math.h).

template <typename T>
static inline __attribute__((always_inline)) void row_grad_ce_t(T* z, int64_t n, math::Lse<T> lz,
                                                                T ca) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) z[i] = math::grad_ce(z[i], lz, ca, FastExp{});
}

template <typename T>
static inline __attribute__((always_inline)) void row_grad_forward_t(T* z, const T* r, int64_t n,
                                                                     math::Lse<T> lz,
                                                                     math::Lse<T> lr, T ca, T cb) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) z[i] = math::grad_forward(z[i], r[i], lz, lr, ca, cb, FastExp{});
}

template <typename T>
static inline __attribute__((always_inline)) void row_grad_reverse_t(T* z, const T* r, int64_t n,
                                                                     math::Lse<T> lz,
                                                                     math::Lse<T> lr, T kl, T ca,
                                                                     T cb) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    z[i] = math::grad_reverse(z[i], r[i], lz, lr, kl, ca, cb, FastExp{});
}

// Entry points: float is cloned per ISA (the template bodies inline into each clone); double is
// plain. Overloads keep the kernel code dtype-generic.
#define SAFEREGX_ENTRY(ATTR, T)                                                                 \
  ATTR static T row_max(const T* x, int64_t n) { return row_max_t(x, n); }                      \
  ATTR static double row_sum_exp(const T* x, int64_t n, T m) { return row_sum_exp_t(x, n, m); } \
  ATTR static math::RowSums<double> row_kl_sums(const T* a, const T* b, int64_t n, T ma, T mb) { \
    return row_kl_sums_t(a, b, n, ma, mb);                                                      \
  }                                                                                             \
  ATTR static void row_grad_ce(T* z, int64_t n, math::Lse<T> lz, T ca) {                        \
    row_grad_ce_t(z, n, lz, ca);                                                                \
  }                                                                                             \
  ATTR static void row_grad_forward(T* z, const T* r, int64_t n, math::Lse<T> lz,               \
                                    math::Lse<T> lr, T ca, T cb) {                              \
    row_grad_forward_t(z, r, n, lz, lr, ca, cb);                                                \
  }                                                                                             \
  ATTR static void row_grad_reverse(T* z, const T* r, int64_t n, math::Lse<T> lz,               \
                                    math::Lse<T> lr, T kl, T ca, T cb) {                        \
    row_grad_reverse_t(z, r, n, lz, lr, kl, ca, cb);                                            \
  }
SAFEREGX_ENTRY(SAFEREGX_CLONES, float)
SAFEREGX_ENTRY(, double)
#undef SAFEREGX_ENTRY

}  // namespace saferegx::cpu
