"""Triton kernel of saferegx.probe_risk (GPUs; CPU tensors under TRITON_INTERPRET=1)."""

import torch
import triton
import triton.language as tl


@triton.jit
def _probe_kernel(acts_ptr, pos_ptr, w_ptr, bias_ptr, out_ptr, stride_b, stride_t, stride_d, D, BLOCK_D: tl.constexpr):
    """One program per sequence: its probe token's row dotted with w in fp32 blocks."""
    b = tl.program_id(0)
    pos = tl.load(pos_ptr + b).to(tl.int64)
    row = acts_ptr + b.to(tl.int64) * stride_b + pos * stride_t
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        mask = offs < D
        a = tl.load(row + offs * stride_d, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += a * w
    z = tl.sum(acc, axis=0) + tl.load(bias_ptr).to(tl.float32)
    tl.store(out_ptr + b, 1.0 / (1.0 + tl.exp(-z)))


def _launch(kernel, grid, *args, **kwargs) -> None:
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def _run(acts, positions, weight, bias, out, launch=_launch) -> None:
    """Fills ``out [B]``; ``launch(kernel, grid, *args, **kwargs)`` runs the kernel
    (scripts/triton_sm90.py records it instead, to compile it for sm_90 ahead of time)."""
    if acts.shape[0]:
        d = acts.shape[2]
        launch(
            _probe_kernel,
            (acts.shape[0],),
            acts,
            positions,
            weight,
            bias,
            out,
            acts.stride(0),
            acts.stride(1),
            acts.stride(2),
            d,
            BLOCK_D=min(1024, triton.next_power_of_2(max(d, 16))),
        )


@torch.library.triton_op("saferegx::probe_risk_triton", mutates_args=())
def probe_risk_triton(
    acts: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``[B]`` fp32 risks; reads acts through its strides (no copy of a hidden-state slice)."""
    out = acts.new_empty((acts.shape[0],), dtype=torch.float32)
    _run(acts, positions, weight, bias, out)
    return out
