"""torch.library glue for torch.ops.saferegx.safety_loss_*: fake impls and the autograd formula.

The schema and the CPU kernels come from C++ (csrc/); other backends (Triton) define ops with the
same signature and reuse `register_autograd_for`. The loss is terminal, so for scalar reductions
the forward already forms the gradients (for grad_output = 1) and the backward only scales them;
for reduction='none' the backward op recomputes the logit tiles (and each row's log-sum-exp) from
the saved inputs and the forward's per-row KL.
"""

import torch

# The integer codes of the ops' kl_mode and reduction arguments; C++ and CUDA define the same
# values in csrc/common/codes.h (tests/test_op_library.py checks that they agree).
KL_MODES = {"forward": 0, "reverse": 1}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
REDUCTION_NONE = REDUCTIONS["none"]


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the op computes and returns in: fp32, or float64 for float64 inputs."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def fake_fwd(
    hidden,
    weight,
    labels,
    ref_hidden,
    ref_weight,
    ce_weight,
    kl_weight,
    kl_mode,
    ignore_index,
    reduction,
    grad_hidden,
    grad_weight,
):
    """Shapes and dtypes of safety_loss_fwd's outputs, for fake tensors and torch.compile."""
    n, d = hidden.shape
    v = weight.shape[0]
    acc = acc_dtype(hidden)

    def new(*shape):
        return hidden.new_empty(shape, dtype=acc)

    loss = new(n) if reduction == REDUCTION_NONE else new()
    return (loss, new(n), new(n), new(n, d) if grad_hidden else new(0), new(v, d) if grad_weight else new(0))


def fake_bwd(
    grad_rows,
    hidden,
    weight,
    labels,
    ref_hidden,
    ref_weight,
    ce_weight,
    kl_weight,
    kl,
    kl_mode,
    ignore_index,
    grad_hidden,
    grad_weight,
):
    """Shapes and dtypes of safety_loss_bwd's outputs."""
    n, d = hidden.shape
    acc = acc_dtype(hidden)
    return (
        hidden.new_empty((n, d) if grad_hidden else (0,), dtype=acc),
        hidden.new_empty((weight.shape[0], d) if grad_weight else (0,), dtype=acc),
    )


def register_autograd_for(fwd_name: str, bwd_op) -> None:
    """Attaches the safety loss's backward to the forward op `fwd_name` (any backend)."""

    def setup_context(ctx, inputs, output):
        (
            hidden,
            weight,
            labels,
            ref_hidden,
            ref_weight,
            ce_weight,
            kl_weight,
            kl_mode,
            ignore_index,
            reduction,
            grad_hidden,
            grad_weight,
        ) = inputs
        _, ce, kl, gh, gw = output
        ctx.mark_non_differentiable(ce, kl, gh, gw)
        ctx.args = (kl_mode, ignore_index)
        ctx.reduction = reduction
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.formed = (grad_hidden, grad_weight)
        if reduction == REDUCTION_NONE:
            ctx.save_for_backward(hidden, weight, labels, ref_hidden, ref_weight, ce_weight, kl_weight, kl)
        else:
            ctx.save_for_backward(gh, gw)

    def backward(ctx, grad_loss, *_unused):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h_dtype, w_dtype = ctx.dtypes
        if ctx.reduction == REDUCTION_NONE:
            saved = ctx.saved_tensors
            gh, gw = bwd_op(grad_loss, *saved, *ctx.args, need_h, need_w)
            scale = None
        else:
            if (need_h and not ctx.formed[0]) or (need_w and not ctx.formed[1]):
                raise RuntimeError(
                    "saferegx: the forward was called with grad_hidden/grad_weight=False but a "
                    "gradient is needed; call saferegx.safety_loss, which sets them"
                )
            gh, gw = ctx.saved_tensors
            scale = grad_loss
        dh = dw = None
        if need_h:
            dh = (gh if scale is None else gh * scale).to(h_dtype)
        if need_w:
            dw = (gw if scale is None else gw * scale).to(w_dtype)
        return (dh, dw) + (None,) * 10

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


def _register_cpp_ops() -> bool:
    """Registers fake impls and autograd for the C++ ops, if the extension loaded."""
    from .. import _ext

    if not _ext.AVAILABLE:
        return False
    torch.library.register_fake("saferegx::safety_loss_fwd")(fake_fwd)
    torch.library.register_fake("saferegx::safety_loss_bwd")(fake_bwd)
    register_autograd_for("saferegx::safety_loss_fwd", torch.ops.saferegx.safety_loss_bwd)
    return True


CPP_AVAILABLE = _register_cpp_ops()
