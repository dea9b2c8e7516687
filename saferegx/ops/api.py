"""saferegx.safety_loss: argument checks, the result type and the choice of backend."""

import os
from typing import NamedTuple

import torch

from . import autotune, library, registry
from .unfused import safety_loss_unfused


class SafetyLoss(NamedTuple):
    """The loss (differentiable) and, for logging, per-row CE and KL (detached, 0 on ignored rows)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def safety_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_hidden: torch.Tensor | None = None,
    *,
    ce_weight: torch.Tensor | None = None,
    kl_weight: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    kl: str = "forward",
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
) -> SafetyLoss:
    """Risk-weighted CE plus token-level KL to a frozen reference, fused with the LM head.

    Per non-ignored row i: ``ce_weight[i] * CE(W h_i, labels[i]) + kl_weight[i] * KL_i`` with
    ``KL_i = KL(softmax(W_ref g_i) || softmax(W h_i))`` for ``kl="forward"`` (the paper's code) or
    the reverse for ``kl="reverse"``; ``g = ref_hidden`` (None: no KL term), ``W_ref = ref_weight``
    (None: the same head). Reduced by ``mean`` over non-ignored rows, ``sum``, or ``none``.
    Gradients flow to ``hidden`` and ``weight``; the reference and per-row weights are constants.
    ``backend``: ``auto`` (the fused kernel for the tensors' device, measured on CUDA), ``cpu``
    (C++), ``triton``, ``cuda`` or ``unfused`` (plain PyTorch: it holds the [N, V] logits, the
    baseline); see ``saferegx.ops.registry``.
    """
    _check(hidden, weight, labels, ref_hidden, ce_weight, kl_weight, ref_weight, kl, ignore_index, reduction, backend)
    consts = [None if t is None else t.detach() for t in (ref_hidden, ce_weight, kl_weight)]
    ref_head = None if ref_weight is None or ref_weight is weight else ref_weight.detach()
    args = (labels, *consts, ref_head, kl, ignore_index, reduction)
    name = _choose_backend(backend, hidden, tune=lambda candidates: _tune(candidates, hidden, weight, args))
    return _compute(name, hidden, weight, *args)


def _compute(
    name, hidden, weight, labels, ref_hidden, ce_weight, kl_weight, ref_head, kl, ignore_index, reduction
) -> SafetyLoss:
    """The op on checked arguments with `name` a concrete backend; constants already detached."""
    backend = registry.get(name)
    if not backend.fused:
        return SafetyLoss(
            *safety_loss_unfused(
                hidden,
                weight,
                labels,
                ref_hidden,
                ce_weight=ce_weight,
                kl_weight=kl_weight,
                ref_weight=ref_head,
                kl=kl,
                ignore_index=ignore_index,
                reduction=reduction,
            )
        )
    scalar = reduction != "none"
    grad_on = torch.is_grad_enabled()
    out = backend.loss_op()(
        hidden,
        weight,
        labels,
        ref_hidden,
        ref_head,
        ce_weight,
        kl_weight,
        library.KL_MODES[kl],
        ignore_index,
        library.REDUCTIONS[reduction],
        scalar and grad_on and hidden.requires_grad,
        scalar and grad_on and weight.requires_grad,
    )
    return SafetyLoss(out[0], out[1], out[2])


def _tune(candidates: list[str], hidden: torch.Tensor, weight: torch.Tensor, args: tuple) -> str:
    """auto's measured pick among `candidates` for this call's problem key (see autotune)."""
    _labels, ref_hidden, _ce_weight, _kl_weight, ref_head, kl, _ignore_index, reduction = args
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    key = autotune.make_key(
        hidden,
        weight,
        separate_ref_head=ref_head is not None,
        kl=None if ref_hidden is None else kl,
        grads=grads,
        reduction=reduction,
    )
    return autotune.pick(candidates, _timing_run(hidden, weight, args, grads), key, device=hidden.device)


def _timing_run(hidden: torch.Tensor, weight: torch.Tensor, args: tuple, grads: bool):
    """run_fn for autotune.pick: one step of backend `name` on this call's inputs, detached.

    With `grads`, forward plus backward (autograd.grad on detached leaves: the caller's graph
    is neither run nor extended and no .grad is written); otherwise the forward alone.
    """

    def run(name: str) -> None:
        h, w = hidden.detach(), weight.detach()
        wrt = []
        if grads:
            wrt = [t.requires_grad_() for t, src in ((h, hidden), (w, weight)) if src.requires_grad]
        out = _compute(name, h, w, *args)
        if wrt:
            torch.autograd.grad(out.loss.sum(), wrt)

    return run


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on tensors of `device` here."""
    return registry.available(device)


def _choose_backend(backend: str, hidden: torch.Tensor, tune=None) -> str:
    """The concrete backend for `backend`. auto: SAFEREGX_AUTO_BACKEND if set; else the fused
    candidate for the device (registry.auto_candidates), the measured fastest where there are
    several (`tune(candidates)`, autotune.pick), the static default where nothing can be measured
    (torch.compile tracing, fake tensors); `unfused` where none is built."""
    device = hidden.device
    if backend == "auto":
        forced = autotune.forced()
        if forced is None:
            candidates = registry.auto_candidates(device)
            if len(candidates) <= 1:
                return candidates[0] if candidates else "unfused"
            if tune is None or not autotune.can_measure(hidden):
                return autotune.static_default(candidates)
            return tune(candidates)
        if forced == "auto":
            raise ValueError(f"{autotune.ENV} must name a backend, one of {registry.NAMES}")
        try:
            registry.get(forced)
        except ValueError as e:
            raise ValueError(f"{autotune.ENV}: {e}") from None
        backend = forced
    chosen = registry.get(backend)
    if chosen.ready(device):
        return backend
    if chosen.devices and device.type not in chosen.devices:
        raise ValueError(f"backend={backend!r} needs {' or '.join(chosen.devices)} tensors; hidden is on {device}")
    why = ""
    if not library.CPP_AVAILABLE:
        from .. import _ext

        why = f" (the C++ extension did not load: {_ext.load_error()})"
    raise RuntimeError(f"backend={backend!r} is not available for tensors on {device} here{why}")


def _check(
    hidden, weight, labels, ref_hidden, ce_weight, kl_weight, ref_weight, kl, ignore_index, reduction, backend
) -> None:
    """Raises TypeError/ValueError naming the bad argument; never lets garbage reach a kernel."""
    if backend != "auto":
        registry.get(backend)  # ValueError naming the choices
    if kl not in library.KL_MODES:
        raise ValueError(f"kl must be 'forward' or 'reverse', got {kl!r}")
    if reduction not in library.REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not hidden.is_floating_point() or hidden.dim() != 2:
        raise ValueError(f"hidden must be a 2-D float tensor [N, D], got {hidden.dtype} {tuple(hidden.shape)}")
    if not weight.is_floating_point() or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D float tensor [V, D], got {weight.dtype} {tuple(weight.shape)}")
    n, d = hidden.shape
    v = weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(f"weight must be [V, {d}] to match hidden [N, {d}], got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
    device = hidden.device
    optional = (
        ("ref_hidden", ref_hidden, (n, d)),
        ("ref_weight", ref_weight, (v, d)),
        ("ce_weight", ce_weight, (n,)),
        ("kl_weight", kl_weight, (n,)),
    )
    for name, t, _ in (("weight", weight, None), ("labels", labels, None)) + optional:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {device}")
    for name, t, shape in optional:
        if t is None:
            continue
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    for name, t in (("ref_hidden", ref_hidden), ("ref_weight", ref_weight)):
        if t is not None and t.dtype != hidden.dtype:
            raise TypeError(f"{name} dtype {t.dtype} differs from hidden dtype {hidden.dtype}")
    if ref_hidden is None and (kl_weight is not None or ref_weight is not None):
        raise ValueError("kl_weight and ref_weight need ref_hidden (the reference's hidden states)")
    if _check_values(device):
        _check_value_ranges(labels, v, ignore_index, ce_weight, kl_weight)


def _check_values(device: torch.device) -> bool:
    """Value checks read tensors: free on CPU, a host sync on GPUs (SAFEREGX_CHECK_VALUES=0 skips)."""
    if torch.compiler.is_compiling() or device.type == "meta":
        return False
    return os.environ.get("SAFEREGX_CHECK_VALUES", "1") != "0"


def _check_value_ranges(labels, vocab, ignore_index, ce_weight, kl_weight) -> None:
    valid = labels[labels != ignore_index]
    if valid.numel() and (bool((valid < 0).any()) or bool((valid >= vocab).any())):
        bad = valid[(valid < 0) | (valid >= vocab)][0].item()
        raise ValueError(f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found {bad}")
    for name, t in (("ce_weight", ce_weight), ("kl_weight", kl_weight)):
        if t is not None and t.numel():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite")
            if bool((t < 0).any()):
                raise ValueError(f"{name} must be non-negative, found {t.min().item()}")
