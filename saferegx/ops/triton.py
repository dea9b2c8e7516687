"""Triton kernels of the fused safety loss: torch.ops.saferegx.safety_loss_{fwd,bwd}_triton.

Streaming design (as Cut Cross-Entropy): no logit tile ever leaves the chip.

- `_stats_kernel`, grid (row blocks, vocab splits): each program streams the vocab blocks of its
  split, forms the fp32 tiles z = h W^T and r = g W_ref^T with `tl.dot` over D chunks (W read once
  for both when the head is shared) and keeps online statistics per row: running max and shifted
  exp-sum of z and r, the label logit, and the KL numerator on max-shifted logits
  U = sum_v e^(b - m_b) ((b - m_b) - (a - m_a)) ((a, b) = (z, r) forward, (r, z) reverse),
  moved to the new maxima whenever a running max moves. Shifted, the maxima cancel exactly (as
  in the C++ and CUDA kernels): U = sum e^(b - m_b) (b - a) would leave KL = U / S_b - (m_b - m_a)
  + ..., a difference of terms ~|logits| whose fp32 rounding (~1e-5 at logits ~100) swamps a
  small KL.
  Splitting the vocabulary gives enough programs when there are few row blocks; the splits'
  partial statistics are merged by a few [splits, N] torch ops (`_merge`).
- `_grad_kernel`, grid (row blocks x vocab blocks): recomputes its tiles, forms
  dz = s_i (alpha_i (p - onehot) + beta_i dKL/dz) from the saved row statistics and adds
  dz W into dh and dz^T h into dW with fp32 atomics, D chunk by D chunk.

Atomics over a second dW kernel: one recompute pass instead of two (6 GEMM-sized passes in all
instead of 8) and one kernel; dh cannot live in registers anyway (D is thousands), so it would
be read-modify-written in global memory either way. The price: dh/dW are summed in a
nondeterministic order (fp32 rounding differs run to run) and the atomic traffic,
N V D (1/BLOCK_N + 1/BLOCK_V) adds, is not free (see docs/gpu.md).

Scalar reductions form the gradient in the forward (`_grad_kernel` with per-row scale
1/n_valid or 1); reduction='none' runs it in the backward op with the per-row grad_output,
after recomputing the row statistics (see `_safety_loss_bwd`).
Logit tiles are fp32 for every input dtype; for bf16/fp16 inputs dz is rounded to the input
dtype only as the operand of the dh/dW products (fp32 accumulation), as in any mixed-precision
matmul backward. float64 is not supported here (TypeError); the C++ backend takes it.
On CPU tensors the kernels run in Triton's interpreter when TRITON_INTERPRET=1 was set before
this module was imported (tests only: fp32, small sizes).
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import library

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_N_PARTIALS = 6  # max_z, sum_z, max_r, sum_r, kl numerator U, label logit


@triton.jit
def _logit_tiles(
    h_ptr,
    g_ptr,
    w_ptr,
    wr_ptr,
    rows,
    cols,
    N,
    V,
    D,
    HAS_REF: tl.constexpr,
    SHARED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """fp32 tiles z = h[rows] W[cols]^T and r = g[rows] W_ref[cols]^T (0 outside N x V)."""
    row_ok = rows[:, None] < N
    col_ok = cols[:, None] < V
    h_off = rows.to(tl.int64)[:, None] * D
    w_off = cols.to(tl.int64)[:, None] * D
    z = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    r = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)[None, :]
        d_ok = dd < D
        w = tl.load(w_ptr + w_off + dd, mask=col_ok & d_ok, other=0.0)
        h = tl.load(h_ptr + h_off + dd, mask=row_ok & d_ok, other=0.0)
        z = tl.dot(h, tl.trans(w), z, input_precision="ieee")
        if HAS_REF:
            g = tl.load(g_ptr + h_off + dd, mask=row_ok & d_ok, other=0.0)
            if not SHARED:
                w = tl.load(wr_ptr + w_off + dd, mask=col_ok & d_ok, other=0.0)
            r = tl.dot(g, tl.trans(w), r, input_precision="ieee")
    return z, r


# N and the split length vary with the batch: specializing on their divisibility by 16 would
# compile every configuration twice as N changes from step to step, for nothing measurable.
@triton.jit(do_not_specialize=["N", "blocks_per_split"])
def _stats_kernel(
    h_ptr,
    g_ptr,
    w_ptr,
    wr_ptr,
    labels_ptr,
    part_ptr,
    N,
    V,
    D,
    blocks_per_split,
    HAS_REF: tl.constexpr,
    SHARED: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Online softmax statistics of rows block program_id(0) over vocab split program_id(1)."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    labels = tl.load(labels_ptr + rows, mask=rows < N, other=-1)
    m_z = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_z = tl.zeros((BLOCK_N,), tl.float32)
    m_r = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_r = tl.zeros((BLOCK_N,), tl.float32)
    u = tl.zeros((BLOCK_N,), tl.float32)
    z_label = tl.zeros((BLOCK_N,), tl.float32)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(V, BLOCK_V))
    for vb in range(first, last):
        cols = vb * BLOCK_V + tl.arange(0, BLOCK_V)
        z, r = _logit_tiles(
            h_ptr, g_ptr, w_ptr, wr_ptr, rows, cols, N, V, D, HAS_REF, SHARED, BLOCK_N, BLOCK_V, BLOCK_D
        )
        col_ok = (cols < V)[None, :]
        z_label += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        new_m_z = tl.maximum(m_z, tl.max(tl.where(col_ok, z, float("-inf")), axis=1))
        e_z = tl.where(col_ok, tl.exp(z - new_m_z[:, None]), 0.0)
        rescale_z = tl.exp(m_z - new_m_z)
        if HAS_REF:
            new_m_r = tl.maximum(m_r, tl.max(tl.where(col_ok, r, float("-inf")), axis=1))
            e_r = tl.where(col_ok, tl.exp(r - new_m_r[:, None]), 0.0)
            rescale_r = tl.exp(m_r - new_m_r)
            # earlier terms of U move by -(change of m_b - change of m_a); none on the first block
            moved = (new_m_z - tl.where(m_z == float("-inf"), new_m_z, m_z)) - (
                new_m_r - tl.where(m_r == float("-inf"), new_m_r, m_r)
            )
            diff = (z - new_m_z[:, None]) - (r - new_m_r[:, None])
            if REVERSE:  # U = sum e^(z - m_z) ((z - m_z) - (r - m_r))
                u = (u - moved * s_z) * rescale_z + tl.sum(e_z * diff, axis=1)
            else:  # U = sum e^(r - m_r) ((r - m_r) - (z - m_z))
                u = (u + moved * s_r) * rescale_r - tl.sum(e_r * diff, axis=1)
            s_r = s_r * rescale_r + tl.sum(e_r, axis=1)
            m_r = new_m_r
        s_z = s_z * rescale_z + tl.sum(e_z, axis=1)
        m_z = new_m_z
    out = part_ptr + split * N + rows
    stride = n_splits * N
    ok = rows < N
    tl.store(out, m_z, mask=ok)
    tl.store(out + stride, s_z, mask=ok)
    tl.store(out + 2 * stride, m_r, mask=ok)
    tl.store(out + 3 * stride, s_r, mask=ok)
    tl.store(out + 4 * stride, u, mask=ok)
    tl.store(out + 5 * stride, z_label, mask=ok)


@triton.jit(do_not_specialize=["N", "ignore_index", "n_row_blocks"])
def _grad_kernel(
    h_ptr,
    g_ptr,
    w_ptr,
    wr_ptr,
    labels_ptr,
    coef_ptr,
    lse_ptr,
    kl_ptr,
    dh_ptr,
    dw_ptr,
    N,
    V,
    D,
    ignore_index,
    n_row_blocks,
    HAS_REF: tl.constexpr,
    SHARED: tl.constexpr,
    REVERSE: tl.constexpr,
    GRAD_H: tl.constexpr,
    GRAD_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dh += dz W and dW += dz^T h for one (row block, vocab block) tile, dz recomputed.

    coef_ptr holds [2, N]: the CE and KL coefficients alpha_i s_i and beta_i s_i. lse_ptr holds
    [4, N]: each log-sum-exp as a (shift, log-sum) pair, (max_z, log S_z, max_r, log S_r) from
    the forward, so that log p = (z - max) - log S keeps full precision at |z| ~ 1e3 (an fp32 lse
    there is off by up to its ulp).
    Row blocks vary fastest, so the programs running together share one block of W.
    """
    pid = tl.program_id(0)
    pid_n = pid % n_row_blocks
    pid_v = pid // n_row_blocks
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_in = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_in, other=ignore_index)
    ca = tl.load(coef_ptr + rows, mask=row_in, other=0.0)
    cb = tl.load(coef_ptr + N + rows, mask=row_in, other=0.0)
    z, r = _logit_tiles(h_ptr, g_ptr, w_ptr, wr_ptr, rows, cols, N, V, D, HAS_REF, SHARED, BLOCK_N, BLOCK_V, BLOCK_D)
    m_z = tl.load(lse_ptr + rows, mask=row_in, other=0.0)
    l_z = tl.load(lse_ptr + N + rows, mask=row_in, other=0.0)
    log_p = (z - m_z[:, None]) - l_z[:, None]
    p = tl.exp(log_p)
    dz = ca[:, None] * (p - tl.where(cols[None, :] == labels[:, None], 1.0, 0.0))
    if HAS_REF:
        m_r = tl.load(lse_ptr + 2 * N + rows, mask=row_in, other=0.0)
        l_r = tl.load(lse_ptr + 3 * N + rows, mask=row_in, other=0.0)
        log_q = (r - m_r[:, None]) - l_r[:, None]
        if REVERSE:  # d KL(p || q) / dz = p (log p - log q - KL)
            kl = tl.load(kl_ptr + rows, mask=row_in, other=0.0)
            dz += cb[:, None] * (p * (log_p - log_q - kl[:, None]))
        else:  # d KL(q || p) / dz = p - q
            dz += cb[:, None] * (p - tl.exp(log_q))
    # where, not a product: an ignored row's saved lse is 0, so its p may be inf
    keep = (row_in & (labels != ignore_index))[:, None] & (cols < V)[None, :]
    dz = tl.where(keep, dz, 0.0).to(w_ptr.dtype.element_ty)

    h_off = rows.to(tl.int64)[:, None] * D
    w_off = cols.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)[None, :]
        d_ok = dd < D
        if GRAD_H:
            w = tl.load(w_ptr + w_off + dd, mask=(cols[:, None] < V) & d_ok, other=0.0)
            tl.atomic_add(
                dh_ptr + h_off + dd, tl.dot(dz, w, input_precision="ieee"), mask=row_in[:, None] & d_ok, sem="relaxed"
            )
        if GRAD_W:
            h = tl.load(h_ptr + h_off + dd, mask=row_in[:, None] & d_ok, other=0.0)
            tl.atomic_add(
                dw_ptr + w_off + dd,
                tl.dot(tl.trans(dz), h, input_precision="ieee"),
                mask=(cols[:, None] < V) & d_ok,
                sem="relaxed",
            )


def _codes(codes: dict) -> str:
    """'0 (none), 1 (mean), 2 (sum)': a code table for error messages."""
    return ", ".join(f"{code} ({name})" for name, code in codes.items())


def _config(device_type: str, dtype: torch.dtype, sms: int = 0) -> tuple[dict, dict, int]:
    """(tile sizes, launch options, target number of stats programs) for inputs of `dtype` on a
    device type with `sms` streaming multiprocessors: what the kernels are launched with, and
    what scripts/triton_sm90.py compiles ahead of time for sm_90 (with the H100/H200's 132).

    GPU sizes are not tuned on a GPU yet (none was available when this was written). They are
    checked to compile for sm_90 without register spills, within its shared memory, with every
    bf16/fp16 dot on tensor cores (wgmma); the table is in docs/gpu.md. fp32 dots run as FMA
    (input_precision="ieee": no TF32), which needs smaller tiles: 64 x 128 x 64 spilled up to
    50 KB per thread there. On CPU (the interpreter) small tiles that divide none of the tests'
    sizes, and two vocab splits so that the merge of partial statistics is exercised.
    """
    if device_type == "cpu":
        return dict(BLOCK_N=16, BLOCK_V=32, BLOCK_D=16), {}, 2
    options = dict(num_warps=8, num_stages=3)
    if dtype == torch.float32:
        return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_D=16), options, 4 * sms
    return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_D=64), options, 4 * sms


def _device_config(device: torch.device, dtype: torch.dtype) -> tuple[dict, dict, int]:
    """_config for tensors on `device` (its SM count read from the driver on CUDA)."""
    sms = 0
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    return _config(device.type, dtype, sms)


def _launch(kernel, grid, *args, **kwargs) -> None:
    """Runs a Triton kernel inside a triton_op (wrap_triton lets torch.compile trace it)."""
    wrap_triton(kernel)[grid](*args, **kwargs)


class _Inputs:
    """Contiguous operands, flags and per-row coefficients shared by the forward and backward."""

    def __init__(
        self,
        hidden,
        weight,
        labels,
        ref_hidden,
        ref_weight,
        ce_weight,
        kl_weight,
        kl_mode,
        ignore_index,
        target=None,
        launch=_launch,
    ):
        """target: (device type, SM count) to configure the kernels for, default hidden's device;
        launch(kernel, grid, *args, **kwargs) runs each kernel (scripts/triton_sm90.py passes
        ("cuda", 132) and a launcher that records the launches, on meta tensors)."""
        if hidden.dtype not in _DTYPES:
            raise TypeError(
                f"the triton backend takes float32/bfloat16/float16 inputs, got "
                f"{hidden.dtype}; use backend='cpu' or 'unfused' for float64"
            )
        for name, t in (("weight", weight), ("ref_hidden", ref_hidden), ("ref_weight", ref_weight)):
            if t is not None and t.dtype != hidden.dtype:
                raise TypeError(f"{name} dtype {t.dtype} differs from hidden dtype {hidden.dtype}")
        if kl_mode not in library.KL_MODES.values():
            raise ValueError(f"kl_mode must be one of {_codes(library.KL_MODES)}, got {kl_mode}")
        self.h, self.w = hidden.contiguous(), weight.contiguous()
        self.has_ref = ref_hidden is not None
        self.shared = ref_weight is None
        self.g = ref_hidden.contiguous() if self.has_ref else self.h
        self.wr = self.w if self.shared else ref_weight.contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        self.ignore_index = ignore_index
        self.reverse = kl_mode == library.KL_MODES["reverse"]
        self.valid = self.labels != ignore_index
        self.n, self.d = hidden.shape
        self.v = weight.shape[0]
        ones = torch.ones(self.n, device=hidden.device, dtype=torch.float32)
        self.alpha = ones if ce_weight is None else ce_weight.to(torch.float32)
        if not self.has_ref:
            self.beta = torch.zeros_like(ones)
        else:
            self.beta = ones if kl_weight is None else kl_weight.to(torch.float32)
        self.blocks, self.options, self.programs = (
            _device_config(hidden.device, hidden.dtype)
            if target is None
            else _config(target[0], hidden.dtype, target[1])
        )
        self.run = launch

    def flags(self) -> dict:
        """The kernels' constexprs (without a reference the KL direction is moot: one variant)."""
        return dict(HAS_REF=self.has_ref, SHARED=self.shared, REVERSE=self.reverse and self.has_ref, **self.blocks)

    def row_stats(self):
        """(ce, kl), each [N] fp32 and zero on ignored rows, and the [4, N] lse pairs."""
        bn, bv = self.blocks["BLOCK_N"], self.blocks["BLOCK_V"]
        row_blocks, v_blocks = triton.cdiv(self.n, bn), triton.cdiv(self.v, bv)
        want = max(1, min(v_blocks, triton.cdiv(self.programs, max(row_blocks, 1))))
        per_split = triton.cdiv(v_blocks, want)
        splits = triton.cdiv(v_blocks, per_split)
        part = torch.empty((_N_PARTIALS, splits, self.n), device=self.h.device, dtype=torch.float32)
        if self.n:
            self.run(
                _stats_kernel,
                (row_blocks, splits),
                self.h,
                self.g,
                self.w,
                self.wr,
                self.labels,
                part,
                self.n,
                self.v,
                self.d,
                per_split,
                **self.flags(),
                **self.options,
            )
        return self._merge(part)

    def _merge(self, part):
        """Combines the vocab splits' partial statistics (max-shifted, so equal rows give KL 0)."""
        m_z, s_z, m_r, s_r, u, z_label = part.unbind(0)
        max_z = m_z.amax(0)
        sum_z = (s_z * torch.exp(m_z - max_z)).sum(0)
        log_z = sum_z.log()
        zero = torch.zeros_like(max_z)
        ce = torch.where(self.valid, (max_z - z_label.sum(0)) + log_z, zero)
        if not self.has_ref:
            return ce, zero, torch.stack([max_z, log_z, zero, zero])
        max_r = m_r.amax(0)
        sum_r = (s_r * torch.exp(m_r - max_r)).sum(0)
        log_r = sum_r.log()
        # KL(softmax b || softmax a) = U / S_b + log S_a - log S_b, U shifted by the row maxima:
        # each split's U is shifted by its own, so moved as in the kernel
        if self.reverse:  # (a, b) = (r, z)
            moved = (max_z - m_z) - (max_r - m_r)
            u_total = ((u - moved * s_z) * torch.exp(m_z - max_z)).sum(0)
            kl = u_total / sum_z + log_r - log_z
        else:  # (a, b) = (z, r)
            moved = (max_r - m_r) - (max_z - m_z)
            u_total = ((u - moved * s_r) * torch.exp(m_r - max_r)).sum(0)
            kl = u_total / sum_r + log_z - log_r
        kl = torch.where(self.valid, kl, zero)
        return ce, kl, torch.stack([max_z, log_z, max_r, log_r])

    def grads(self, scale, lse_pairs, kl, grad_hidden, grad_weight):
        """fp32 (dh or [0], dW or [0]) for per-row loss scale `scale` (grad_output x reduction)."""
        f32 = dict(device=self.h.device, dtype=torch.float32)
        dh = torch.zeros((self.n, self.d), **f32) if grad_hidden else torch.empty(0, **f32)
        dw = torch.zeros((self.v, self.d), **f32) if grad_weight else torch.empty(0, **f32)
        if self.n and (grad_hidden or grad_weight):
            zero = torch.zeros_like(self.alpha)
            coef = torch.stack(
                [torch.where(self.valid, self.alpha * scale, zero), torch.where(self.valid, self.beta * scale, zero)]
            )
            row_blocks = triton.cdiv(self.n, self.blocks["BLOCK_N"])
            grid = (row_blocks * triton.cdiv(self.v, self.blocks["BLOCK_V"]),)
            self.run(
                _grad_kernel,
                grid,
                self.h,
                self.g,
                self.w,
                self.wr,
                self.labels,
                coef,
                lse_pairs.to(torch.float32).contiguous(),
                kl.to(torch.float32).contiguous(),
                dh,
                dw,
                self.n,
                self.v,
                self.d,
                self.ignore_index,
                row_blocks,
                GRAD_H=grad_hidden,
                GRAD_W=grad_weight,
                **self.flags(),
                **self.options,
            )
        return dh, dw


@triton_op("saferegx::safety_loss_fwd_triton", mutates_args=())
def _safety_loss_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_hidden: Optional[torch.Tensor],
    ref_weight: Optional[torch.Tensor],
    ce_weight: Optional[torch.Tensor],
    kl_weight: Optional[torch.Tensor],
    kl_mode: int,
    ignore_index: int,
    reduction: int,
    grad_hidden: bool,
    grad_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """saferegx::safety_loss_fwd in Triton (same contract as the C++ op, fp32 outputs)."""
    if reduction not in library.REDUCTIONS.values():
        raise ValueError(f"reduction must be one of {_codes(library.REDUCTIONS)}, got {reduction}")
    if reduction == library.REDUCTIONS["none"] and (grad_hidden or grad_weight):
        raise ValueError("gradients in the forward need a scalar reduction; use safety_loss_bwd")
    x = _Inputs(hidden, weight, labels, ref_hidden, ref_weight, ce_weight, kl_weight, kl_mode, ignore_index)
    return _forward(x, reduction, grad_hidden, grad_weight)


def _forward(x: _Inputs, reduction: int, grad_hidden: bool, grad_weight: bool):
    """The forward op's work on prepared inputs: (loss, ce, kl, dh, dW)."""
    ce, kl, lse_pairs = x.row_stats()
    rows = x.alpha * ce + x.beta * kl
    scale = 1.0
    if reduction == library.REDUCTIONS["none"]:
        loss = rows
    elif reduction == library.REDUCTIONS["sum"]:
        loss = rows.sum()
    else:  # n_valid stays on the device: no host sync
        scale = 1.0 / x.valid.sum().clamp_min(1).to(torch.float32)
        loss = rows.sum() * scale
    dh, dw = x.grads(scale, lse_pairs, kl, grad_hidden, grad_weight)
    return loss, ce, kl, dh, dw


@triton_op("saferegx::safety_loss_bwd_triton", mutates_args=())
def _safety_loss_bwd(
    grad_rows: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_hidden: Optional[torch.Tensor],
    ref_weight: Optional[torch.Tensor],
    ce_weight: Optional[torch.Tensor],
    kl_weight: Optional[torch.Tensor],
    kl: torch.Tensor,
    kl_mode: int,
    ignore_index: int,
    grad_hidden: bool,
    grad_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """saferegx::safety_loss_bwd in Triton: reduction='none' gradients, tiles recomputed.

    The row statistics are recomputed too (two more GEMM-sized passes), the (max, log-sum) pairs
    that keep log p exact at |z| ~ 1e3 with them (the C++ backward re-reads its held tiles
    instead); the forward's kl is not needed. The scalar reductions never come here.
    """
    x = _Inputs(hidden, weight, labels, ref_hidden, ref_weight, ce_weight, kl_weight, kl_mode, ignore_index)
    return _backward(x, grad_rows, grad_hidden, grad_weight)


def _backward(x: _Inputs, grad_rows: torch.Tensor, grad_hidden: bool, grad_weight: bool):
    """The backward op's work on prepared inputs: (dh, dW), the row statistics recomputed."""
    _, kl_rows, lse_pairs = x.row_stats()
    return x.grads(grad_rows.to(torch.float32), lse_pairs, kl_rows, grad_hidden, grad_weight)


# Explicit fake impls: tracing the bodies works on GPUs, but the interpreter would run the
# kernels on fake tensors.
_safety_loss_fwd.register_fake(library.fake_fwd)
_safety_loss_bwd.register_fake(library.fake_bwd)
library.register_autograd_for("saferegx::safety_loss_fwd_triton", torch.ops.saferegx.safety_loss_bwd_triton)

#: The registered forward op, called by saferegx.ops.api for backend="triton".
safety_loss_fwd = torch.ops.saferegx.safety_loss_fwd_triton
safety_loss_bwd = torch.ops.saferegx.safety_loss_bwd_triton
