"""Builds saferegx._C, the C++ kernels of the fused safety loss, with torch's cpp_extension."""

import os
import runpy
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
# shared with the JIT fallback (saferegx/_ext.py); run as a file, since importing the package
# would try to load the extension being built
FLAGS = runpy.run_path(str(ROOT / "saferegx" / "_build_flags.py"))
CXX_FLAGS = FLAGS["CXX_FLAGS"]
SOURCES = [os.path.relpath(p, ROOT) for p in FLAGS["cpu_sources"](ROOT / "csrc")]
INCLUDE_DIRS = [str(p) for p in FLAGS["include_dirs"](ROOT / "csrc")]


def _cuda_arch_flags() -> list[str]:
    """sm_90 (H100/H200) machine code plus compute_90 PTX, when building without a GPU and
    without TORCH_CUDA_ARCH_LIST; otherwise [] and torch picks (the visible GPUs' archs, or the
    list). sm_90a would add nothing: the kernels here are row reductions, the GEMMs are cuBLAS's."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.is_available():
        return []
    return ["-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"]


def _cuda_libraries() -> dict:
    """Where cuBLAS (and the cuSPARSE / cuSOLVER headers ATen's CUDA headers include) live: the
    toolkit when it has them, else the nvidia-* wheels a CUDA torch from PyPI depends on
    (nvidia/cu13/{include,lib}, or nvidia/<lib>/{include,lib} for CUDA 12). Those wheels ship only
    versioned libraries (libcublas.so.13), so cuBLAS is linked by file name there."""
    from torch.utils.cpp_extension import CUDA_HOME

    home = Path(CUDA_HOME or "/usr/local/cuda")
    if (home / "include" / "cublas_v2.h").exists() and any((home / "lib64").glob("libcublas.so")):
        return dict(libraries=["cublas"])
    include_dirs, library_dirs, link = [], [], []
    try:
        import nvidia  # namespace package of the nvidia-* wheels

        roots = [Path(p) for p in nvidia.__path__]
    except ImportError:
        roots = []
    headers = ("cublas_v2.h", "cusparse.h", "cusolverDn.h")
    for root in roots:
        for inc in sorted(root.glob("*/include")):
            if any((inc / h).exists() for h in headers) and str(inc) not in include_dirs:
                include_dirs.append(str(inc))
        for lib in sorted(root.glob("*/lib")):
            found = sorted(lib.glob("libcublas.so*"))
            if found and not link:
                library_dirs.append(str(lib))
                link.append(f"-l:{found[0].name}")
    if not link:
        raise SystemExit(
            "SAFEREGX_BUILD_CUDA: cuBLAS not found in the CUDA toolkit "
            f"({home}) nor in the nvidia-* wheels; install a CUDA build of torch"
        )
    return dict(include_dirs=include_dirs, library_dirs=library_dirs, extra_link_args=link)


if torch.cuda.is_available() or os.environ.get("SAFEREGX_BUILD_CUDA") == "1":
    # The CUDA binding needs a CUDA torch (its headers); the kernels are torch-free .cuh files.
    # make cuda-build (scripts/cuda_build.sh) builds and checks it without a GPU.
    CUDA = _cuda_libraries()
    EXT = CUDAExtension(
        "saferegx._C",
        SOURCES + ["csrc/cuda/binding.cu"],
        include_dirs=INCLUDE_DIRS + CUDA.pop("include_dirs", []),
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", *_cuda_arch_flags()]},
        **CUDA,
    )
else:
    EXT = CppExtension("saferegx._C", SOURCES, include_dirs=INCLUDE_DIRS, extra_compile_args={"cxx": CXX_FLAGS})

setup(ext_modules=[EXT], cmdclass={"build_ext": BuildExtension})
