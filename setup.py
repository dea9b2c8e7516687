"""Builds saferegx._C, the C++ kernels of the fused safety loss, with torch's cpp_extension."""
import os
import sys
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "saferegx"))
from _build_flags import CXX_FLAGS, cpu_sources  # noqa: E402  (shared with the JIT fallback)

setup(
    ext_modules=[
        CppExtension(
            "saferegx._C",
            [os.path.relpath(p, ROOT) for p in cpu_sources(ROOT / "csrc")],
            extra_compile_args={"cxx": CXX_FLAGS},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
