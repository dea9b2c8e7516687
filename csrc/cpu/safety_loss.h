// What the CPU kernel (safety_loss.cpp) offers other translation units besides its op kernels.
#pragma once
#include <cstdint>

namespace saferegx::cpu {

// Rows per chunk of logit tiles for a vocabulary of V (SAFEREGX_CPU_CHUNK overrides); exposed to
// Python (saferegx._ext.cpu_chunk_rows) so that benchmarks chunk exactly as the kernel does.
int64_t chunk_rows(int64_t V, bool has_ref);

}  // namespace saferegx::cpu
