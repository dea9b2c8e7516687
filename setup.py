"""Builds saferegx._C, the C++ kernels of the fused safety loss, with torch's cpp_extension."""
import os
import sys
from pathlib import Path

from setuptools import setup
import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "saferegx"))
from _build_flags import CXX_FLAGS, cpu_sources  # noqa: E402  (shared with the JIT fallback)

SOURCES = [os.path.relpath(p, ROOT) for p in cpu_sources(ROOT / "csrc")]
if torch.cuda.is_available() or os.environ.get("SAFEREGX_BUILD_CUDA") == "1":
    # The CUDA binding needs a CUDA torch (its headers); the kernels are torch-free .cuh files.
    EXT = CUDAExtension("saferegx._C", SOURCES + ["csrc/cuda/binding.cu"],
                        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-std=c++17"]},
                        libraries=["cublas"])
else:
    EXT = CppExtension("saferegx._C", SOURCES, extra_compile_args={"cxx": CXX_FLAGS})

setup(ext_modules=[EXT], cmdclass={"build_ext": BuildExtension})
