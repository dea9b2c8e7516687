"""Compiles every Triton kernel saferegx can launch for Hopper (sm_90), ahead of time, no GPU.

    python scripts/triton_sm90.py [--jobs 2] [--json out.json] [--write-docs docs/gpu.md]

Which kernels, with which constexprs and launch options, comes from the code itself: the loss op's
own forward and backward (`saferegx.ops.triton._forward` / `_backward` on `_Inputs` built with
`_config("cuda", 132)`, the H100/H200 SM count) and the probe op's launch, run on meta tensors of
the benchmark sizes (8192 x 4096 x 128256 and 16384 x 576 x 49152) with a recording launcher for
every case the public API can produce: fp32/bf16/fp16, no reference / shared / separate head,
forward/reverse KL, mean/sum/none, gradients for (hidden, weight), (hidden), (weight) or none.
Each launch is bound by Triton's own JIT binder for the sm_90 backend, so the signature,
constexprs, integer/pointer specializations (divisible by 16, equal to 1) and options are what
`kernel[grid](...)` compiles on an H100/H200; duplicates are compiled once.

Per compiled variant it reports: shared memory (metadata; sm_90 allows 227 KB per block),
registers, spill stores/loads and stack frame (Triton's bundled `ptxas -v` on the PTX, with
Triton's flags), and each `tl.dot`'s lowering read from the TTGIR (`warp_group_dot` = wgmma,
`#mma` result = mma.sync, `#blocked` result = FMA) with the PTX's wgmma / mma.sync counts.
tests/ops/test_triton_sm90.py runs this and fails on a compile error, a spill, shared memory over the
limit, or a bf16/fp16 dot without tensor cores. `--write-docs` replaces the table in docs/gpu.md.
"""

import os

os.environ.pop("TRITON_INTERPRET", None)  # before Triton decorates a kernel: compile, not interpret

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import inspect  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Triton 3.9 warns that its FP-fusion default will change; the default (on) is what runs.
warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")

SIZES = ((8192, 4096, 128256), (16384, 576, 49152))
SMS = 132  # H100 SXM and H200
CAPABILITY = 90
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90
DOC_BEGIN = "<!-- triton-sm90-table:begin (scripts/triton_sm90.py --write-docs docs/gpu.md) -->"
DOC_END = "<!-- triton-sm90-table:end -->"
KL_NAMES = ("forward", "reverse")
REFS = ("none", "shared", "separate")
REDUCTIONS = ("mean", "sum", "none")
GRADS = ((True, True), (True, False), (False, True), (False, False))  # (hidden, weight)
PROBE_SHAPES = ((8, 512), (8, 1))  # (B, T): pool "last" reads [B, T, D]; pool "mean" [B, 1, D]
KERNEL_MODULES = {
    "_stats_kernel": "saferegx.ops.triton",
    "_grad_kernel": "saferegx.ops.triton",
    "_probe_kernel": "saferegx.ops.probe_triton",
}


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", CAPABILITY, 32)


class Recorder:
    """A launcher for _Inputs / the probe op: binds each launch as Triton's JIT would for sm_90
    and keeps one entry per distinct compilation, with the API cases that need it."""

    def __init__(self):
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        self.backend = make_backend(_target())
        self._binders = {}
        self._create = create_function_from_signature
        self.variants: dict[str, dict] = {}
        self.case = ""

    def __call__(self, kernel, grid, *args, **kwargs):
        from triton import knobs

        name = kernel.fn.__name__
        if name not in self._binders:
            self._binders[name] = self._create(kernel.signature, kernel.params, self.backend)
        kwargs = dict(kwargs)
        # what JITFunction.run adds before binding (the names differ between Triton versions)
        kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
        for knob in ("instrumentation_mode", "fpsan_homomorphic_casts"):
            if hasattr(knobs.compilation, knob):
                kwargs[knob] = getattr(knobs.compilation, knob)
        bound, specialization, options = self._binders[name](*args, **kwargs)
        opts, signature, constexprs, attrs = kernel._pack_args(self.backend, kwargs, bound, specialization, options)
        key = f"{name}|{specialization}|{sorted(options.items())}"
        entry = self.variants.get(key)
        if entry is None:
            names = list(signature)
            entry = self.variants[key] = dict(
                kernel=name,
                module=KERNEL_MODULES[name],
                signature=signature,
                constexprs={names[k[0]]: v for k, v in constexprs.items()},
                constexpr_paths=[[list(k), v] for k, v in constexprs.items()],
                attrs=[[list(k), v] for k, v in attrs.items()],
                options=opts.__dict__,
                specialized=_specialized(kernel.params, names, specialization),
                dtype=_dtype(signature),
                cases=[],
            )
        entry["cases"].append(self.case)


def _specialized(params, names, specialization) -> dict:
    """The runtime arguments Triton specialized on: 'D' (divisible by 16), or the constant they
    were folded to (an integer equal to 1)."""
    out = {}
    for param, arg, (kind, value) in zip(params, names, specialization):
        if param.is_constexpr:
            continue
        if kind == "constexpr":
            out[arg] = value
        elif value not in (None, ""):
            out[arg] = value
    return out


def _dtype(signature: dict) -> str:
    return next(v[1:] for k, v in signature.items() if v.startswith("*") and k != "labels_ptr" and k != "pos_ptr")


def _meta(*shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


def record_loss(rec: Recorder, sizes=SIZES):
    """Every forward (and `none` backward) the API can run at `sizes`, through the op's code."""
    import torch

    from saferegx.ops import library
    from saferegx.ops import triton as tb

    for (n, d, v), dtype, ref, kl, reduction, (need_h, need_w) in itertools.product(
        sizes, (torch.float32, torch.bfloat16, torch.float16), REFS, KL_NAMES, REDUCTIONS, GRADS
    ):
        hidden, weight = _meta(n, d, dtype=dtype), _meta(v, d, dtype=dtype)
        labels, rows = _meta(n, dtype=torch.int64), _meta(n, dtype=torch.float32)
        ref_hidden = None if ref == "none" else _meta(n, d, dtype=dtype)
        ref_weight = _meta(v, d, dtype=dtype) if ref == "separate" else None
        kl_weight = None if ref == "none" else rows
        args = (hidden, weight, labels, ref_hidden, ref_weight, rows, kl_weight, library.KL_MODES[kl], -100)
        scalar = reduction != "none"
        rec.case = (
            f"{n}x{d}x{v} {str(dtype)[6:]} ref={ref} kl={kl} {reduction} grads={'h' * need_h}{'w' * need_w or ''}"
        )
        x = tb._Inputs(*args, target=("cuda", SMS), launch=rec)
        tb._forward(x, library.REDUCTIONS[reduction], scalar and need_h, scalar and need_w)
        if not scalar and (need_h or need_w):  # the backward op, on the saved inputs
            tb._backward(tb._Inputs(*args, target=("cuda", SMS), launch=rec), rows, need_h, need_w)


def record_probe(rec: Recorder, sizes=SIZES):
    """The probe read (probe_risk_triton's launch) on each model width's activations."""
    import torch

    from saferegx.ops import probe_triton as pt

    for (_, d, _), dtype, (b, t) in itertools.product(
        sizes, (torch.float32, torch.bfloat16, torch.float16), PROBE_SHAPES
    ):
        rec.case = f"D={d} {str(dtype)[6:]} acts [{b}, {t}, {d}]"
        pt._run(
            _meta(b, t, d, dtype=dtype),
            _meta(b, dtype=torch.int64),
            _meta(d, dtype=torch.float32),
            _meta(1, dtype=torch.float32),
            _meta(b, dtype=torch.float32),
            launch=rec,
        )


# ---------------------------------------------------------------------------------------------
# Compiling one variant (in a worker process)

_ptxas_cmd = None


def _ptxas_base() -> list[str]:
    """Triton's bundled ptxas for sm_90 and the flags Triton's make_cubin passes it."""
    from triton.backends.nvidia import compiler as nv

    tool = nv.get_ptxas(CAPABILITY) if "arch" in inspect.signature(nv.get_ptxas).parameters else nv.get_ptxas()
    extra = ["--regAllocOptLevel=2"] if "regAllocOptLevel" in inspect.getsource(nv.CUDABackend.make_cubin) else []
    arch = nv.sm_arch_from_capability(CAPABILITY)
    return [tool.path, "-lineinfo", "-v", *extra, f"--gpu-name={arch}"]


def ptxas_usage(ptx: str) -> dict:
    """Registers, spill bytes and stack frame from `ptxas -v` on the PTX."""
    global _ptxas_cmd
    if _ptxas_cmd is None:
        _ptxas_cmd = _ptxas_base()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        done = subprocess.run([*_ptxas_cmd, str(src), "-o", str(src.with_suffix(".o"))], capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"ptxas failed:\n{log}")
    grab = lambda pattern: int(m.group(1)) if (m := re.search(pattern, log)) else None  # noqa: E731
    return dict(
        registers=grab(r"Used (\d+) registers"),
        spill_stores=grab(r"(\d+) bytes spill stores"),
        spill_loads=grab(r"(\d+) bytes spill loads"),
        stack_frame=grab(r"(\d+) bytes stack frame"),
        ptxas_log=log.strip(),
    )


def dot_lowering(ttgir: str) -> list[str]:
    """How each tl.dot was lowered: 'wgmma', 'mma' (mma.sync) or 'fma'."""
    kinds = []
    for line in ttgir.splitlines():
        if "ttng.warp_group_dot " in line or re.search(r"= ttng\.warp_group_dot\s", line):
            kinds.append("wgmma")
        elif re.search(r"= tt\.dot\s", line):
            result = line.rsplit("->", 1)[-1]
            kinds.append("mma" if "#mma" in result else "fma")
    return kinds


def compile_variant(variant: dict) -> dict:
    import importlib

    import triton
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(variant["module"]), variant["kernel"])
    constexprs = {tuple(k): v for k, v in variant["constexpr_paths"]}
    attrs = {tuple(k): v for k, v in variant["attrs"]}
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(kernel, variant["signature"], constexprs, attrs), target=_target(), options=variant["options"]
        )
    except Exception as exc:  # reported, and a test failure
        return dict(error=f"{type(exc).__name__}: {exc}"[:4000], seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    md = compiled.metadata
    out = dict(
        error=None,
        seconds=seconds,
        shared=md.shared,
        num_warps=md.num_warps,
        num_stages=md.num_stages,
        dots=dot_lowering(compiled.asm["ttgir"]),
        ptx_wgmma=len(re.findall(r"\bwgmma\.mma_async", ptx)),
        ptx_mma_sync=len(re.findall(r"\bmma\.sync", ptx)),
    )
    out.update(ptxas_usage(ptx))
    return out


# ---------------------------------------------------------------------------------------------


def problems(variant: dict) -> list[str]:
    """What is wrong with a compiled variant (empty: fine)."""
    r = variant["result"]
    if r["error"]:
        return [f"does not compile: {r['error'].splitlines()[0]}"]
    bad = []
    if r["shared"] > SMEM_LIMIT:
        bad.append(f"shared memory {r['shared']} B > {SMEM_LIMIT} B")
    if r["spill_stores"] or r["spill_loads"]:
        bad.append(f"spills: {r['spill_stores']} B stores, {r['spill_loads']} B loads")
    if variant["dtype"] in ("bf16", "fp16"):
        if any(k == "fma" for k in r["dots"]):
            bad.append(f"a {variant['dtype']} dot without tensor cores: {r['dots']}")
        if r["dots"] and not (r["ptx_wgmma"] or r["ptx_mma_sync"]):
            bad.append("no wgmma/mma instruction in the PTX")
    return bad


def describe(variant: dict) -> str:
    """The configuration column: constexprs in words, and the specializations that vary."""
    c = variant["constexprs"]
    if variant["kernel"] == "_probe_kernel":
        return f"BLOCK_D={c['BLOCK_D']}"
    ref = "none" if not c["HAS_REF"] else "shared" if c["SHARED"] else "separate"
    parts = [f"ref {ref}"]
    if c["HAS_REF"]:
        parts.append("reverse" if c["REVERSE"] else "forward")
    if variant["kernel"] == "_grad_kernel":
        parts.append("+".join(n for n, on in (("dh", c["GRAD_H"]), ("dW", c["GRAD_W"])) if on))
    return ", ".join(parts)


def markdown(report: dict) -> str:
    lines = [
        f"Triton {report['triton']}, target sm_90 (`GPUTarget('cuda', 90, 32)`), ptxas "
        f"{report['ptxas']}; {len(report['variants'])} variants from {report['cases']} API cases "
        f"at {', '.join('x'.join(map(str, s)) for s in report['sizes'])}; {report['seconds']:.0f} s "
        f"with {report['jobs']} processes. Spills: bytes stored + loaded; shared: per block.",
        "",
        "| kernel | dtype | configuration | warps/stages | registers | spills (B) | shared (KB) | dots |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for v in report["variants"]:
        r = v["result"]
        if r["error"]:
            lines.append(f"| {v['kernel']} | {v['dtype']} | {describe(v)} | - | - | - | - | ERROR |")
            continue
        dots = ", ".join(f"{k} x{n}" for k, n in sorted({k: r["dots"].count(k) for k in r["dots"]}.items())) or "-"
        spills = r["spill_stores"] + r["spill_loads"]
        lines.append(
            f"| {v['kernel']} | {v['dtype']} | {describe(v)} | {r['num_warps']}/"
            f"{r['num_stages']} | {r['registers']} | {spills} | "
            f"{r['shared'] / 1024:.0f} | {dots} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, table: str) -> None:
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{path} has no {DOC_BEGIN!r} ... {DOC_END!r} markers")
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{table}\n{DOC_END}{tail}")


def _worker_init():
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")


def run(jobs: int, sizes=SIZES) -> dict:
    import triton

    start = time.perf_counter()
    rec = Recorder()
    record_loss(rec, sizes)
    cases = len({c for v in rec.variants.values() for c in v["cases"]})
    record_probe(rec, sizes)
    cases += len({c for v in rec.variants.values() if v["kernel"] == "_probe_kernel" for c in v["cases"]})
    variants = list(rec.variants.values())
    # slowest first (fp32 FMA dots and the gradient kernel), so the pool ends together
    order = sorted(
        range(len(variants)), key=lambda i: (variants[i]["kernel"] != "_grad_kernel", variants[i]["dtype"] != "fp32")
    )
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
            futures = {i: pool.submit(compile_variant, variants[i]) for i in order}
            for i, fut in futures.items():
                variants[i]["result"] = fut.result()
    else:
        for i in order:
            variants[i]["result"] = compile_variant(variants[i])
    for v in variants:
        v["problems"] = problems(v)
    ptxas = re.search(
        r"release ([\d.]+)", subprocess.run([_ptxas_base()[0], "--version"], capture_output=True, text=True).stdout
    )
    return dict(
        triton=triton.__version__,
        ptxas=ptxas.group(1) if ptxas else "?",
        capability=CAPABILITY,
        sms=SMS,
        smem_limit=SMEM_LIMIT,
        sizes=[list(s) for s in sizes],
        jobs=jobs,
        cases=cases,
        seconds=time.perf_counter() - start,
        variants=variants,
    )


def _size(text: str) -> tuple[int, int, int]:
    try:
        n, d, v = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 8192x4096x128256, got {text!r}") from None
    return n, d, v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default: 2)")
    ap.add_argument("--json", type=Path, help="write the full report here")
    ap.add_argument(
        "--write-docs",
        type=Path,
        metavar="GPU_MD",
        help="replace the table between the markers in this file (docs/gpu.md)",
    )
    ap.add_argument(
        "--sizes",
        nargs="+",
        type=_size,
        default=list(SIZES),
        metavar="NxDxV",
        help="problem sizes (default: the two benchmark sizes); on a GPU machine, "
        "compiling the tests' sizes too fills Triton's cache ahead of them",
    )
    ap.add_argument("--list", action="store_true", help="only list the variants, compile nothing")
    args = ap.parse_args(argv)
    if args.list:
        rec = Recorder()
        record_loss(rec, args.sizes)
        record_probe(rec, args.sizes)
        for v in rec.variants.values():
            print(f"{v['kernel']:14s} {v['dtype']:5s} {describe(v)}  ({len(v['cases'])} cases)")
        print(f"{len(rec.variants)} variants")
        return 0
    report = run(args.jobs, args.sizes)
    table = markdown(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if args.write_docs:
        write_docs(args.write_docs, table)
    bad = [(v["kernel"], describe(v), p) for v in report["variants"] for p in v["problems"]]
    for kernel, config, p in bad:
        print(f"PROBLEM {kernel} [{config}]: {p}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
