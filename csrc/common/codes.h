// The integer codes of the ops' kl_mode and reduction arguments, defined once for every C++ and
// CUDA backend. saferegx/ops/library.py (KL_MODES, REDUCTIONS) holds the same values for Python;
// tests/test_op_library.py checks that the two agree.
#pragma once
#include <cstdint>

namespace saferegx {

// KL(softmax r || softmax z) (the paper's code) or KL(softmax z || softmax r).
enum KlMode : int { kForwardKL = 0, kReverseKL = 1 };
enum Reduction : int { kReductionNone = 0, kReductionMean = 1, kReductionSum = 2 };

constexpr bool is_kl_mode(int64_t m) { return m == kForwardKL || m == kReverseKL; }
constexpr bool is_reduction(int64_t r) { return r >= kReductionNone && r <= kReductionSum; }

}  // namespace saferegx
