"""csrc/cuda/safety_loss.cuh without a GPU: it compiles for sm_90, and its host-callable parts
(the max-shifted row statistics and the logit gradient of csrc/common/element_math.h, the
row-major -> cuBLAS layout mapping) run in a host program against a float64 reference. The
kernels' reductions and launches, and the torch binding, still need a GPU to be tested
(benchmarks/gpu.py checks them against the reference).
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)
CSRC = Path(__file__).resolve().parents[2] / "csrc"
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")

INSTANTIATE = r"""
#include "safety_loss.cuh"
namespace sc = saferegx::cuda;
#define SAFEREGX_GRAD(T) template cudaError_t sc::launch_row_grad<T>(float*, const float*, \
    int64_t, int64_t, const int64_t*, int64_t, int, const float*, const float*, sc::StatsOut, T*, \
    cudaStream_t);
SAFEREGX_GRAD(float)
SAFEREGX_GRAD(__nv_bfloat16)
SAFEREGX_GRAD(__half)
cudaError_t stats(const float* z, const float* r, const int64_t* y, sc::StatsOut o, cudaStream_t s) {
  return sc::launch_row_stats(z, r, 4, 7, y, -100, saferegx::kReverseKL, o, s);
}
"""

# Reads rows, writes (ce, kl, lse_z, lse_r, dz...) per row through the header's element math,
# then checks row_major_gemm against a naive column-major GEMM with cuBLAS's conventions.
HOST_PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "safety_loss.cuh"
using namespace saferegx;
using namespace saferegx::cuda;

// cuBLAS semantics: column-major C[m,n] = op(X)[m,k] op(Y)[k,n], op = transpose when flagged.
static void colmajor_gemm(const GemmArgs& g, float* C, float beta) {
  const float* X = static_cast<const float*>(g.first);
  const float* Y = static_cast<const float*>(g.second);
  for (int i = 0; i < g.m; ++i)
    for (int j = 0; j < g.n; ++j) {
      double acc = 0;
      for (int l = 0; l < g.k; ++l) {
        const float x = g.trans_first ? X[l + i * g.ld_first] : X[i + l * g.ld_first];
        const float y = g.trans_second ? Y[j + l * g.ld_second] : Y[l + j * g.ld_second];
        acc += double(x) * y;
      }
      C[i + j * g.ldc] = float(acc + beta * C[i + j * g.ldc]);
    }
}

// Row-major C[m,n] (+)= A'B' by the definition, A' = A or A^T (stored [k,m]), likewise B'.
static double check_gemm(bool ta, bool tb, int m, int n, int k, float beta) {
  std::vector<float> A(m * k), B(k * n), C(m * n), want(m * n);
  for (size_t i = 0; i < A.size(); ++i) A[i] = float((i * 37 % 11) - 5) / 3;
  for (size_t i = 0; i < B.size(); ++i) B[i] = float((i * 53 % 13) - 6) / 5;
  for (size_t i = 0; i < C.size(); ++i) C[i] = want[i] = float(i % 7);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double acc = beta * want[i * n + j];
      for (int l = 0; l < k; ++l)
        acc += double(ta ? A[l * m + i] : A[i * k + l]) * (tb ? B[j * k + l] : B[l * n + j]);
      want[i * n + j] = float(acc);
    }
  colmajor_gemm(row_major_gemm(ta, tb, m, n, k, A.data(), B.data()), C.data(), beta);
  double err = 0;
  for (int i = 0; i < m * n; ++i) err = fmax(err, fabs(C[i] - want[i]));
  return err;
}

int main() {
  int rows, V, has_ref, kl_mode;
  if (scanf("%d %d %d %d", &rows, &V, &has_ref, &kl_mode) != 4) return 1;
  std::vector<float> z(V), r(V);
  for (int i = 0; i < rows; ++i) {
    long long y;
    float ca, cb;
    if (scanf("%lld %f %f", &y, &ca, &cb) != 3) return 1;
    for (auto& x : z) if (scanf("%f", &x) != 1) return 1;
    for (auto& x : r) if (scanf("%f", &x) != 1) return 1;
    float mz = -INFINITY, mr = -INFINITY;
    for (int v = 0; v < V; ++v) { mz = fmaxf(mz, z[v]); mr = fmaxf(mr, r[v]); }
    RowSums s;
    for (int v = 0; v < V; ++v) {
      if (!has_ref) accumulate_ce(s, z[v], mz);
      else if (kl_mode == kForwardKL) accumulate_kl(s, z[v], r[v], mz, mr);
      else accumulate_kl(s, r[v], z[v], mr, mz);
    }
    const RowStats st = finish_stats(s, mz, mr, z[y], has_ref, kl_mode);
    printf("%.9g %.9g %.9g %.9g", st.ce, st.kl, st.z.max + st.z.log_sum,
           has_ref ? st.r.max + st.r.log_sum : 0.f);
    const GradCoefs c{ca, cb, st.kl, st.z, st.r, has_ref != 0, kl_mode};
    for (int v = 0; v < V; ++v) printf(" %.9g", grad_element(z[v], r[v], v == y, c));
    printf("\n");
  }
  double err = 0;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) err = fmax(err, check_gemm(ta, tb, 5, 7, 3, tb ? 1.f : 0.f));
  printf("gemm_max_err %.3g\n", err);
  return 0;
}
"""


def nvcc(*args, cwd):
    includes = [f"-I{CSRC / 'cuda'}", f"-I{CSRC / 'common'}"]
    proc = subprocess.run(
        [NVCC, "-std=c++17", "-arch=sm_90", *includes, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_header_compiles_for_sm90(tmp_path):
    (tmp_path / "instantiate.cu").write_text(INSTANTIATE)
    nvcc("-c", "instantiate.cu", "-o", "instantiate.o", "-Werror", "all-warnings", cwd=tmp_path)
    assert (tmp_path / "instantiate.o").stat().st_size > 0


@pytest.fixture(scope="module")
def host_program(tmp_path_factory) -> Path:
    """The header's host-callable math compiled into a host program (no GPU needed to run it)."""
    d = tmp_path_factory.mktemp("cuda_host")
    (d / "rows.cu").write_text(HOST_PROGRAM)
    nvcc("rows.cu", "-o", "rows", cwd=d)
    return d / "rows"


def reference_rows(z, r, labels, ca, cb, has_ref, kl_mode):
    """float64 CE, KL, lse_z, lse_r and dL/dz for the same fp32 rows."""
    z, r = z.double().requires_grad_(True), r.double()
    logp, logq = z.log_softmax(-1), r.log_softmax(-1)
    ce = -logp.gather(1, labels[:, None])[:, 0]
    if not has_ref:
        kl = torch.zeros_like(ce)
    elif kl_mode == 0:
        kl = (logq.exp() * (logq - logp)).sum(-1)
    else:
        kl = (logp.exp() * (logp - logq)).sum(-1)
    (dz,) = torch.autograd.grad((ca.double() * ce + cb.double() * kl).sum(), z)
    lse_r = r.logsumexp(-1) if has_ref else torch.zeros_like(ce)
    return ce.detach(), kl.detach(), z.detach().logsumexp(-1), lse_r, dz


@pytest.mark.parametrize("has_ref,kl_mode", [(False, 0), (True, 0), (True, 1)])
@pytest.mark.parametrize("scale", [3.0, 1e3])
def test_row_math_matches_float64(host_program, seed, has_ref, kl_mode, scale):
    rows, V = 24, 257
    z = (torch.randn(rows, V) * scale).float()
    r = (z + 0.3 * scale * torch.randn(rows, V)).float() if has_ref else torch.zeros(rows, V)
    r[0] = z[0]  # equal rows: KL and its gradient exactly 0
    labels = torch.randint(0, V, (rows,))
    ca = torch.rand(rows)
    cb = torch.rand(rows) if has_ref else torch.zeros(rows)
    lines = [f"{rows} {V} {int(has_ref)} {kl_mode}"]
    for i in range(rows):
        lines.append(f"{labels[i].item()} {ca[i].item():.9g} {cb[i].item():.9g}")
        lines.append(" ".join(f"{x:.9g}" for x in z[i].tolist()))
        lines.append(" ".join(f"{x:.9g}" for x in r[i].tolist()))
    proc = subprocess.run(
        [str(host_program)], input="\n".join(lines), capture_output=True, text=True, timeout=60, check=True
    )
    out = proc.stdout.strip().splitlines()
    assert float(out[-1].split()[1]) < 1e-5, out[-1]
    got = torch.tensor([[float(x) for x in line.split()] for line in out[:-1]], dtype=torch.float64)
    ce, kl, lse_z, lse_r, dz = reference_rows(z, r, labels, ca, cb, has_ref, kl_mode)
    # fp32 math on logits of size `scale`: absolute error ~ ulp(scale), relative to O(1) values
    atol = 1e-5 * max(1.0, scale / 10)
    assert (got[:, 0] - ce).abs().max() <= atol * 4
    assert (got[:, 1] - kl).abs().max() <= atol * 4
    assert (got[:, 2] - lse_z).abs().max() <= scale * 2e-7 + 1e-6
    assert (got[:, 3] - lse_r).abs().max() <= scale * 2e-7 + 1e-6
    assert (got[:, 4:] - dz).abs().max() <= atol
    if has_ref:
        assert got[0, 1] == 0.0  # exact, not approximately
