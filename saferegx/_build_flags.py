"""Compiler flags, include folders and sources of the C++ extension, shared by setup.py and the
JIT fallback."""

from pathlib import Path

# -fopenmp-simd lets the softmax loops vectorize their reductions (no OpenMP runtime needed),
# -fno-trapping-math lets them if-convert float compares (torch builds so too; results unchanged);
# the hot loops pick AVX-512 / AVX2 / baseline code at run time (GCC target_clones). No -std: torch's
# build adds the standard its headers need (C++17 up to torch 2.13, C++20 from 2.14).
# -g0 overrides Python's -g: debug info over torch's templates was 55-60% of the compile time
# (probe_risk.cpp: 41 s with it, 18 s without), and the sources include per-operator ATen headers
# rather than ATen/ATen.h for the same reason.
CXX_FLAGS = ["-O3", "-g0", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno"]


def include_dirs(csrc: Path) -> list[Path]:
    """Headers shared by the CPU kernel and the CUDA kernels (element math, codes, checks)."""
    return [csrc / "common"]


def cpu_sources(csrc: Path) -> list[Path]:
    """The translation units of saferegx._C (schema + CPU kernels; never the CUDA glue)."""
    return [csrc / "saferegx.cpp", *sorted((csrc / "cpu").glob("*.cpp"))]
