"""The backends of saferegx's ops, by name: where each runs and which kernels implement it.

Everything that offers or picks a backend asks this table: the argument checks and ``auto`` of
``safety_loss`` and ``probe_risk``, the autotuner's candidates and the trainer config's choices.
A new backend is one entry here (and its kernels registered under ``torch.ops.saferegx``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import library
from .unfused import probe_risk_unfused


@dataclass(frozen=True)
class Backend:
    name: str
    fused: bool  # never holds the [N, V] logits
    devices: tuple[str, ...]  # device types it is built for (empty: any, plain torch)
    loss_op: Callable[[], Callable] | None  # -> the safety_loss_fwd op (None: unfused, torch)
    probe_op: Callable[[], Callable] | None  # -> the probe_risk function; None: no probe kernel
    ready: Callable[[torch.device], bool]  # usable for tensors on this device here


# Whether the C++ extension registered a kernel for each device type, read once at import: the
# dispatcher query cannot run under torch.compile tracing, and the answer never changes.
_CPP_KERNELS = {
    t: library.CPP_AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("saferegx::safety_loss_fwd", key)
    for t, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def _cpp_ready(device_type: str) -> Callable[[torch.device], bool]:
    """The C++ extension is loaded and has a kernel for the device type."""

    def ready(device: torch.device) -> bool:
        return device.type == device_type and _CPP_KERNELS[device_type]

    return ready


def _triton_ready(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (tests only)."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        importlib.import_module(".triton", __package__)  # registers its ops
    except ImportError:
        return False
    return True


def _cpp_loss():
    return torch.ops.saferegx.safety_loss_fwd  # the dispatcher picks the CPU or CUDA kernel


def _cpp_probe():
    return torch.ops.saferegx.probe_risk


def _triton_loss():
    from .triton import safety_loss_fwd

    return safety_loss_fwd


def _triton_probe():
    from .probe_triton import probe_risk_triton

    return probe_risk_triton


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "unfused",
            fused=False,
            devices=(),
            loss_op=None,
            probe_op=lambda: probe_risk_unfused,
            ready=lambda device: True,
        ),
        Backend("cpu", fused=True, devices=("cpu",), loss_op=_cpp_loss, probe_op=_cpp_probe, ready=_cpp_ready("cpu")),
        Backend(
            "triton", fused=True, devices=("cuda",), loss_op=_triton_loss, probe_op=_triton_probe, ready=_triton_ready
        ),
        Backend("cuda", fused=True, devices=("cuda",), loss_op=_cpp_loss, probe_op=None, ready=_cpp_ready("cuda")),
    )
}
NAMES = tuple(BACKENDS)
CHOICES = ("auto", *NAMES)  # what a `backend=` argument or config key accepts
RENAMED = {"reference": "unfused"}  # 0.2.0: "reference" now means only the frozen safe model


def get(name: str) -> Backend:
    """The backend called ``name``; ValueError naming the choices (and any rename) otherwise."""
    if name in BACKENDS:
        return BACKENDS[name]
    if name in RENAMED:
        raise ValueError(f"backend {name!r} was renamed {RENAMED[name]!r} in saferegx 0.2.0")
    raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")


def available(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on tensors of ``device`` here."""
    device = torch.device(device)
    return [b.name for b in BACKENDS.values() if b.ready(device)]


def auto_candidates(device: torch.device, *, probe: bool = False) -> list[str]:
    """The fused backends ``auto`` may pick on ``device``: built for its type and ready here (so
    Triton's CPU interpreter, a test tool, never is); with ``probe``, those with a probe kernel."""
    return [
        b.name
        for b in BACKENDS.values()
        if b.fused and device.type in b.devices and b.ready(device) and (not probe or b.probe_op is not None)
    ]
