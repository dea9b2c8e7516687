"""Builds saferegx._C, the C++ kernels of the fused safety loss, with torch's cpp_extension."""
import os
import runpy
from pathlib import Path

from setuptools import setup
import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
# shared with the JIT fallback (saferegx/_ext.py); run as a file, since importing the package
# would try to load the extension being built
FLAGS = runpy.run_path(str(ROOT / "saferegx" / "_build_flags.py"))
CXX_FLAGS = FLAGS["CXX_FLAGS"]
SOURCES = [os.path.relpath(p, ROOT) for p in FLAGS["cpu_sources"](ROOT / "csrc")]
INCLUDE_DIRS = [str(p) for p in FLAGS["include_dirs"](ROOT / "csrc")]
if torch.cuda.is_available() or os.environ.get("SAFEREGX_BUILD_CUDA") == "1":
    # The CUDA binding needs a CUDA torch (its headers); the kernels are torch-free .cuh files.
    EXT = CUDAExtension("saferegx._C", SOURCES + ["csrc/cuda/binding.cu"],
                        include_dirs=INCLUDE_DIRS,
                        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-std=c++17"]},
                        libraries=["cublas"])
else:
    EXT = CppExtension("saferegx._C", SOURCES, include_dirs=INCLUDE_DIRS,
                       extra_compile_args={"cxx": CXX_FLAGS})

setup(ext_modules=[EXT], cmdclass={"build_ext": BuildExtension})
