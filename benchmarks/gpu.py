"""GPU benchmark of the fused safety loss: correctness first, then forward+backward time and memory.

    python benchmarks/gpu.py [--out results.json] [--sizes 8192x4096x128256 16384x576x49152]
                             [--full-check] [--dry-run]

Checks `triton` and `cuda` (when built) against the float64 reference at a small size, then times
forward+backward (dL/dh and dL/dW) at each size in bf16 with `triton.testing.do_bench` medians,
next to the `unfused` op, Liger-Kernel's chunked CE + JSD (`LigerFusedLinearJSDLoss`,
weights 0.5/0.5, beta=1.0, the closest peer: CE plus a KL to a teacher), Liger's fused linear CE
(a lower bound: no reference logits at all) and the cuBLAS floor (the four GEMMs any exact
method must do: z = h W^T, r = g W^T, dh = dz W, dW = dz^T h). Peak memory is
`torch.cuda.max_memory_allocated` above the inputs. Prints a Markdown table; --out writes JSON.

`--full-check` also compares `triton` and `cuda` at the first size, in the benchmark's dtype,
against float64 (the unfused op in row chunks, so it fits): loss, per-row ce and kl, dh, dW.
The JSON's "targets" are docs/gpu.md's, checked at 8192 x 4096 x 128256 in bf16: triton's
forward+backward within 1.2x of the GEMM floor, at least 1.3x faster than liger-jsd, peak memory
within the O(N*D + chunk*V) bound (`memory_bound_mib`), relative error against float64 within
1e-2. `--dry-run` prints the plan and the bounds without a GPU.
"""

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

import torch

DEFAULT_SIZES = ("8192x4096x128256", "16384x576x49152")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    method: str
    n: int
    d: int
    v: int
    ms: float | None  # median forward+backward, None when it failed
    peak_mib: float | None
    note: str = ""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=[parse_size(s) for s in DEFAULT_SIZES],
        type=parse_size,
        help="NxDxV sizes (tokens x hidden x vocab)",
    )
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument(
        "--kl", choices=("forward", "reverse"), default="reverse", help="reverse matches Liger's JSD at beta=1.0"
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--rep", type=int, default=200, help="do_bench time budget per method (ms)")
    ap.add_argument("--skip-check", action="store_true", help="skip the small correctness check")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument(
        "--full-check", action="store_true", help="at the first size, triton and cuda against float64 (row-chunked)"
    )
    ap.add_argument(
        "--dry-run", action="store_true", help="check the arguments, print the plan and memory bounds; no GPU needed"
    )
    return ap.parse_args(argv)


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        n, d, v = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 8192x4096x128256, got {text!r}") from None
    return n, d, v


def markdown_table(rows: list[Row], dtype_bytes: int = 2) -> str:
    """One line per (size, method): time, ratio to the GEMM floor of that size, liger-jsd's time
    over this one's (> 1: faster than Liger), peak memory and the O(N*D + chunk*V) bound."""
    floor = {(r.n, r.d, r.v): r.ms for r in rows if r.method == "gemm-floor" and r.ms}
    jsd = {(r.n, r.d, r.v): r.ms for r in rows if r.method == "liger-jsd" and r.ms}
    lines = [
        "| N x D x V | method | fwd+bwd ms | x GEMM floor | liger-jsd / this | peak MiB | bound MiB | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        size = (r.n, r.d, r.v)
        ratio = f"{r.ms / floor[size]:.2f}" if r.ms and size in floor else "-"
        speed = f"{jsd[size] / r.ms:.2f}" if r.ms and size in jsd else "-"
        ms = f"{r.ms:.2f}" if r.ms is not None else "-"
        mem = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "-"
        bound = f"{memory_bound_mib(*size, dtype_bytes):.0f}"
        lines.append(f"| {r.n} x {r.d} x {r.v} | {r.method} | {ms} | {ratio} | {speed} | {mem} | {bound} | {r.note} |")
    return "\n".join(lines)


CUDA_TILE_BYTES = 1 << 30  # the cuda backend's fp32 logit tiles per chunk (csrc/cuda/binding.cu)


def memory_bound_mib(n: int, d: int, v: int, dtype_bytes: int = 2) -> float:
    """What a fused fwd+bwd may hold above its inputs, O(N*D + chunk*V): per element of the
    gradients dh [N, D] and dW [V, D], the input-dtype result, its fp32 accumulator and one fp32
    temporary (the backward's grad_output scaling); the cuda backend's ~1 GiB of chunk x V fp32
    tiles and a chunk of dz in the input dtype (the Triton backend holds neither); per-row
    vectors; 64 MiB of slack. At 8192 x 4096 x 128256 in bf16 that is 6.7 GB, while one [N, V]
    fp32 logits tensor alone is 4 GB (logits_mib): a method that holds one does not fit."""
    grads = (n * d + v * d) * (dtype_bytes + 8)
    chunk = min(n, max(16, CUDA_TILE_BYTES // (v * 8)))
    tiles = 2 * chunk * v * 4 + chunk * v * dtype_bytes
    rows = 64 * n * 4
    return (grads + tiles + rows) / 2**20 + 64


def logits_mib(n: int, v: int) -> float:
    """One [N, V] fp32 tensor: what a fused method must never hold."""
    return n * v * 4 / 2**20


# ---------------------------------------------------------------------------------------------
# The problems and the methods under test. Each method maps inputs to a function running one
# forward+backward; the inputs carry the gradients' targets so do_bench can reset them.


def make_inputs(n, d, v, dtype, device="cuda", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, d, device=device, generator=g, dtype=torch.float32)
    weight = torch.randn(v, d, device=device, generator=g, dtype=torch.float32) / d**0.5
    ref_hidden = hidden + 0.5 * torch.randn(n, d, device=device, generator=g)
    labels = torch.randint(0, v, (n,), device=device, generator=g)
    labels[torch.rand(n, device=device, generator=g) < 0.1] = -100
    return dict(
        hidden=hidden.to(dtype).requires_grad_(True),
        weight=weight.to(dtype).requires_grad_(True),
        ref_hidden=ref_hidden.to(dtype),
        labels=labels,
    )


def saferegx_method(backend):
    def build(x, kl):
        import saferegx

        n = x["hidden"].shape[0]
        half = torch.full((n,), 0.5, device=x["hidden"].device)

        def step():
            loss = saferegx.safety_loss(
                x["hidden"],
                x["weight"],
                x["labels"],
                x["ref_hidden"],
                ce_weight=half,
                kl_weight=half,
                kl=kl,
                backend=backend,
            ).loss
            loss.backward()

        return step

    return build


def liger_jsd(x, kl):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.5, weight_soft_loss=0.5, beta=1.0)
    teacher_w = x["weight"].detach()

    def step():
        loss_fn(x["hidden"], x["weight"], x["ref_hidden"], teacher_w, x["labels"]).backward()

    return step


def liger_flce(x, kl):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss()

    def step():
        loss_fn(x["weight"], x["hidden"], x["labels"]).backward()

    return step


def gemm_floor(x, kl):
    """The four products at the inputs' dtype; dz is a preallocated [N, V] operand."""
    h, w, g = x["hidden"].detach(), x["weight"].detach(), x["ref_hidden"]
    dz = torch.randn(h.shape[0], w.shape[0], device=h.device, dtype=h.dtype)

    def step():
        torch.mm(h, w.T)
        torch.mm(g, w.T)
        torch.mm(dz, w)
        torch.mm(dz.T, h)

    return step


METHODS = {
    "triton": saferegx_method("triton"),
    "cuda": saferegx_method("cuda"),
    "unfused": saferegx_method("unfused"),
    "liger-jsd": liger_jsd,
    "liger-flce": liger_flce,
    "gemm-floor": gemm_floor,
}


def available(method: str) -> str | None:
    """None when `method` can run here, else why not."""
    if method in ("triton", "cuda"):
        import saferegx

        if method not in saferegx.available_backends("cuda"):
            return f"backend {method!r} unavailable"
    if method.startswith("liger"):
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return "liger-kernel not installed"
    return None


# ---------------------------------------------------------------------------------------------


def check_correctness(methods, kl) -> list[str]:
    """fp32 and bf16 runs of the fused backends against the float64 reference at a small size."""
    import saferegx

    problems = []
    for backend in (m for m in methods if m in ("triton", "cuda") and available(m) is None):
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
            for reduction in ("mean", "none"):
                x = make_inputs(333, 160, 5003, dtype, seed=1)
                ce_w = torch.rand(333, device="cuda")
                kl_w = torch.rand(333, device="cuda")
                got = run_once(saferegx.safety_loss, x, backend, ce_w, kl_w, kl, reduction)
                x64 = {
                    k: (t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t)
                    for k, t in x.items()
                }
                want = run_once(saferegx.safety_loss, x64, "unfused", ce_w.double(), kl_w.double(), kl, reduction)
                errs = {k: rel_err(got[k], want[k]) for k in want}
                status = "ok" if max(errs.values()) <= tol else "FAIL"
                line = f"{status} {backend} {dtype} {reduction}: " + ", ".join(f"{k} {e:.1e}" for k, e in errs.items())
                print(line)
                if status == "FAIL":
                    problems.append(line)
    return problems


def run_once(fn, x, backend, ce_w, kl_w, kl, reduction):
    h = x["hidden"].detach().clone().requires_grad_(True)
    w = x["weight"].detach().clone().requires_grad_(True)
    out = fn(
        h, w, x["labels"], x["ref_hidden"], ce_weight=ce_w, kl_weight=kl_w, kl=kl, reduction=reduction, backend=backend
    )
    upstream = torch.linspace(0.5, 1.5, out.loss.numel(), device=h.device, dtype=out.loss.dtype)
    (out.loss * upstream.reshape(out.loss.shape)).sum().backward()
    return {"loss": out.loss.detach(), "ce": out.ce, "kl": out.kl, "dh": h.grad, "dW": w.grad}


def rel_err(got, want):
    scale = want.double().abs().max().item()
    diff = (got.double() - want.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


def float64_reference(x, ce_w, kl_w, kl, chunk=512):
    """The unfused op in float64 over row chunks (mean reduction): loss, ce, kl, and dh, dW under
    run_once's grad_output (0.5 for a scalar loss), so that the two compare directly."""
    import saferegx

    upstream = torch.linspace(0.5, 1.5, 1).item()
    labels = x["labels"]
    n_valid = (labels != -100).sum().clamp_min(1).double()
    w = x["weight"].detach().double().requires_grad_(True)
    h = x["hidden"].detach().double()
    g = x["ref_hidden"].double()
    dh = torch.empty_like(h)
    ce = torch.empty(h.shape[0], device=h.device, dtype=torch.float64)
    kls, loss = torch.empty_like(ce), 0.0
    for s in range(0, h.shape[0], chunk):
        e = min(s + chunk, h.shape[0])
        hc = h[s:e].clone().requires_grad_(True)
        rows, ce_c, kl_c = saferegx.safety_loss_unfused(
            hc,
            w,
            labels[s:e],
            g[s:e],
            ce_weight=ce_w[s:e].double(),
            kl_weight=kl_w[s:e].double(),
            kl=kl,
            reduction="none",
        )
        part = rows.sum() / n_valid
        (part * upstream).backward()
        loss = loss + part.detach()
        dh[s:e], ce[s:e], kls[s:e] = hc.grad, ce_c.detach(), kl_c.detach()
        del hc, rows, ce_c, kl_c, part
    return {"loss": loss, "ce": ce, "kl": kls, "dh": dh, "dW": w.grad}


def full_check(backends, n, d, v, dtype, kl) -> dict:
    """Relative errors of each fused backend against float64 at a benchmark size."""
    import saferegx

    x = make_inputs(n, d, v, dtype, seed=2)
    half = torch.full((n,), 0.5, device="cuda")
    want = float64_reference(x, half, half, kl)
    torch.cuda.empty_cache()
    errors = {}
    for backend in backends:
        if available(backend) is not None:
            continue
        got = run_once(saferegx.safety_loss, x, backend, half, half, kl, "mean")
        errors[backend] = {k: rel_err(got[k], want[k]) for k in want}
        del got
        torch.cuda.empty_cache()
        print(
            f"full check {backend} {n}x{d}x{v} {dtype}: "
            + ", ".join(f"{k} {e:.1e}" for k, e in errors[backend].items()),
            flush=True,
        )
    del x, want
    torch.cuda.empty_cache()
    return errors


TARGET_SIZE = (8192, 4096, 128256)


def targets(rows: list[Row], errors: dict, dtype: str) -> list[dict]:
    """docs/gpu.md's targets for `triton` at 8192 x 4096 x 128256 in bf16 (None: not measured)."""
    at = {r.method: r for r in rows if (r.n, r.d, r.v) == TARGET_SIZE}
    t, floor, jsd = at.get("triton"), at.get("gemm-floor"), at.get("liger-jsd")
    out = []

    def add(name, value, threshold, met):
        out.append(
            dict(
                name=name,
                value=None if value is None else round(value, 4),
                threshold=threshold,
                met=met,
                size="x".join(map(str, TARGET_SIZE)),
                dtype=dtype,
            )
        )

    ok = t is not None and t.ms is not None and dtype == "bf16"
    ratio = t.ms / floor.ms if ok and floor and floor.ms else None
    add("triton x GEMM floor", ratio, "<= 1.2", None if ratio is None else ratio <= 1.2)
    speed = jsd.ms / t.ms if ok and jsd and jsd.ms else None
    add("liger-jsd / triton", speed, ">= 1.3", None if speed is None else speed >= 1.3)
    bound = memory_bound_mib(*TARGET_SIZE)
    peak = t.peak_mib if ok else None
    add("triton peak MiB", peak, f"<= {bound:.0f}", None if peak is None else peak <= bound)
    err = max(errors["triton"].values()) if "triton" in errors else None
    add("triton max rel err vs float64", err, "<= 1e-2", None if err is None else err <= 1e-2)
    if "cuda" in errors:
        err = max(errors["cuda"].values())
        add("cuda max rel err vs float64", err, "<= 1e-2", err <= 1e-2)
    return out


def bench(method, n, d, v, dtype, kl, rep) -> Row:
    from triton.testing import do_bench

    reason = available(method)
    if reason:
        return Row(method, n, d, v, None, None, reason)
    x = make_inputs(n, d, v, dtype)
    try:
        step = METHODS[method](x, kl)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        ms = do_bench(step, rep=rep, grad_to_none=[x["hidden"], x["weight"]], return_mode="median")
        return Row(method, n, d, v, ms, peak)
    except torch.cuda.OutOfMemoryError:
        return Row(method, n, d, v, None, None, "out of memory")
    finally:
        del x
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype_bytes = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    plan = dict(
        sizes=["x".join(map(str, s)) for s in args.sizes],
        methods=args.methods,
        dtype=args.dtype,
        kl=args.kl,
        rep_ms=args.rep,
        full_check=args.full_check,
        memory_bound_mib={"x".join(map(str, s)): round(memory_bound_mib(*s, dtype_bytes)) for s in args.sizes},
        logits_mib={"x".join(map(str, s)): round(logits_mib(s[0], s[2])) for s in args.sizes},
    )
    if args.dry_run:
        print(json.dumps(plan, indent=1))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(plan, f, indent=2)
        return 0
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device and a torch built with CUDA; none found")
    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}")
    problems = [] if args.skip_check else check_correctness(args.methods, args.kl)
    os.environ["SAFEREGX_CHECK_VALUES"] = "0"  # the API's label/weight checks sync the host
    errors = {}
    if args.full_check:
        errors = full_check(
            [m for m in ("triton", "cuda") if m in args.methods], *args.sizes[0], DTYPES[args.dtype], args.kl
        )
        problems += [
            f"{b} full-size {k} error {e:.1e} > 1e-2" for b, errs in errors.items() for k, e in errs.items() if e > 1e-2
        ]
    rows = []
    for n, d, v in args.sizes:
        for method in args.methods:
            row = bench(method, n, d, v, DTYPES[args.dtype], args.kl, args.rep)
            print(
                f"  {method:12s} {n}x{d}x{v}: {row.ms if row.ms is None else round(row.ms, 2)} ms {row.note}",
                flush=True,
            )
            rows.append(row)
    goals = targets(rows, errors, args.dtype)
    print()
    print(markdown_table(rows, dtype_bytes))
    print()
    for g in goals:
        mark = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        print(f"target {g['name']} {g['threshold']}: {g['value']} ({mark})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "device": device,
                    "torch": torch.__version__,
                    "plan": plan,
                    "dtype": args.dtype,
                    "kl": args.kl,
                    "correctness_failures": problems,
                    "full_size_errors": errors,
                    "targets": goals,
                    "rows": [asdict(r) for r in rows],
                },
                f,
                indent=2,
            )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
