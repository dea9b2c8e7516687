"""Loads saferegx._C (the C++ kernels, which register torch.ops.saferegx.*).

The module built by `pip install` is used when present; otherwise (a source checkout, an editable
install whose build was skipped) it is JIT-compiled once with torch.utils.cpp_extension.load.
"""
import importlib
import os
from pathlib import Path

from ._build_flags import CXX_FLAGS, cpu_sources

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_error: Exception | None = None


def load() -> bool:
    """Imports or builds the extension; True when torch.ops.saferegx's C++ kernels are registered."""
    global _error
    try:
        importlib.import_module("saferegx._C")
        return True
    except ImportError as exc:  # not built: fall back to a JIT build from the sources
        _error = exc
    if not _CSRC.is_dir() or os.environ.get("SAFEREGX_NO_JIT"):
        return False
    try:
        from torch.utils.cpp_extension import load as jit_load

        jit_load(
            name="saferegx_C",
            sources=[str(p) for p in cpu_sources(_CSRC)],
            extra_cflags=CXX_FLAGS,
            verbose=bool(os.environ.get("SAFEREGX_VERBOSE_BUILD")),
        )
        return True
    except Exception as exc:  # a compiler error must not hide the pure-PyTorch backends
        _error = exc
        return False


def load_error() -> Exception | None:
    """Why the C++ extension could not be loaded (None when it was)."""
    return _error


AVAILABLE = load()
