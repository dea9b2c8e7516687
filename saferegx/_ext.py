"""Loads saferegx._C (the C++ kernels, which register torch.ops.saferegx.*).

The module built by `pip install` is used when present; otherwise (a source checkout, an editable
install whose build was skipped) it is JIT-compiled once with torch.utils.cpp_extension.load.
"""

import importlib
import os
from pathlib import Path
from types import ModuleType

from ._build_flags import CXX_FLAGS, cpu_sources, include_dirs

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_error: Exception | None = None
_module: ModuleType | None = None  # the built or JIT-built module, whichever loaded


def load() -> bool:
    """Imports or builds the extension; True when torch.ops.saferegx's C++ kernels are registered."""
    global _error, _module
    try:
        _module = importlib.import_module("saferegx._C")
        return True
    except ImportError as exc:  # not built: fall back to a JIT build from the sources
        _error = exc
    if not _CSRC.is_dir() or os.environ.get("SAFEREGX_NO_JIT"):
        return False
    try:
        from torch.utils.cpp_extension import load as jit_load

        _module = jit_load(
            name="saferegx_C",
            sources=[str(p) for p in cpu_sources(_CSRC)],
            extra_cflags=CXX_FLAGS,
            extra_include_paths=[str(p) for p in include_dirs(_CSRC)],
            verbose=bool(os.environ.get("SAFEREGX_VERBOSE_BUILD")),
        )
        return True
    except Exception as exc:  # a compiler error must not hide the pure-PyTorch backends
        _error = exc
        return False


def load_error() -> Exception | None:
    """Why the C++ extension could not be loaded (None when it was)."""
    return _error


def cpu_chunk_rows(v: int, has_ref: bool) -> int:
    """Rows per chunk of the CPU kernel's logit tiles for vocabulary size `v`, as the kernel picks
    them (SAFEREGX_CPU_CHUNK included)."""
    if _module is None:
        raise RuntimeError(f"the saferegx C++ extension is unavailable ({_error})")
    return _module.cpu_chunk_rows(v, has_ref)


AVAILABLE = load()
