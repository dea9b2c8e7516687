"""CPU benchmark of the fused safety loss against the unfused baseline, Liger-Kernel and the GEMM floors.

Each (size, mode) runs in its own subprocess, so that peak RSS is that mode's alone. In the child:
inputs are created, one warmup step runs (Liger's torch.compile happens there), the kernel's peak
RSS mark is reset (/proc/self/clear_refs), then `--repeats` timed steps run; a step is forward +
backward to dL/dh (the head frozen) or, with `--train-head`, to dL/dh and dL/dW. The child reports
the median time and the peak RSS over the timed steps minus the RSS just before them (inputs and
head already resident), i.e. the working memory of the loss itself.

Modes:
  cpu            saferegx.safety_loss(backend="cpu"), the C++ chunked kernel
  unfused        saferegx.safety_loss(backend="unfused"), plain PyTorch (materializes [N, V])
  liger          liger_kernel.chunked_loss.LigerFusedLinearJSDLoss(0.5, 0.5, beta=1.0, compiled=True)
  liger-eager    the same with compiled=False (not in the default set)
  floor          the GEMMs alone, full size: z = h W^T, r = g W^T, dh = dz W (+ dW = dz^T h)
  floor-chunked  the same GEMMs chunk by chunk into reused tiles, the C++ kernel's chunk size

    .venv/bin/python benchmarks/cpu_loss.py                 # full sizes (minutes; quiet machine)
    .venv/bin/python benchmarks/cpu_loss.py --quick         # smoke run
    .venv/bin/python benchmarks/cpu_loss.py --write         # and append to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from _common import RESULTS, append_results, machine

ALL_MODES = ("cpu", "unfused", "liger", "liger-eager", "floor", "floor-chunked")
DEFAULT_MODES = ("cpu", "unfused", "liger", "floor", "floor-chunked")
DEFAULT_SIZES = "4096x576x49152,1024x2048x128256"
QUICK_SIZES = "512x576x8192"

NOTES = """\
- Step = forward + backward; dL/dh only unless the heading says the head is trained.
- Loss in every non-floor mode: 0.5 * mean CE + 0.5 * mean KL(p_policy || p_ref) (reverse KL) with
  a shared head, no ignored rows. saferegx modes get ce_weight = kl_weight = 0.5 per row, which makes
  them the same function as Liger's LigerFusedLinearJSDLoss(weight_hard_loss=0.5,
  weight_soft_loss=0.5, beta=1.0): in Liger's source beta == 1 is
  F.kl_div(teacher_logp, student_logp, log_target=True) = KL(student || teacher), i.e. reverse KL,
  not a JSD mixture. The `loss` column checks that they agree.
- Liger always computes dL/dW (torch.func.grad over the weight, whatever requires_grad says), so in
  the frozen-head rows it does one GEMM more than the others (4 instead of 3).
- floor: three full-size torch.mm calls (plus dW with --train-head) into fresh [N, V] outputs: it pays
  the page faults of the [N, V] buffers. floor-chunked: the same GEMMs on row chunks of the C++
  kernel's size (64 MiB of fp32 tiles: policy and reference logits stacked, one GEMM for both as the
  kernel does), reused buffers: the stricter floor, what the fused kernel must approach.
- Peak extra RSS: peak resident memory over the timed steps minus the resident memory just before
  them (inputs, head and warmup done), measured in a fresh process per mode, with glibc's
  MALLOC_MMAP_THRESHOLD_=1 MiB so that buffers freed after the warmup leave the RSS."""


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    sizes = []
    for item in text.split(","):
        n, d, v = (int(x) for x in item.lower().split("x"))
        sizes.append((n, d, v))
    return sizes


# ----------------------------------------------------------------------------------------- child


def chunk_rows(v: int, has_ref: bool = True) -> int:
    """The C++ kernel's rows per chunk, asked of the kernel itself (SAFEREGX_CPU_CHUNK included)."""
    from saferegx import _ext

    return _ext.cpu_chunk_rows(v, has_ref)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(resettable: bool) -> int:
    if resettable:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def make_inputs(n: int, d: int, v: int, logit_std: float, ref_noise: float, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * (logit_std / d**0.5)  # logits ~ N(0, logit_std^2)
    ref_hidden = hidden + ref_noise * torch.randn(n, d, generator=g)  # a reference near the policy
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, ref_hidden, labels


def make_step(mode: str, hidden, weight, ref_hidden, labels, kl: str, train_head: bool, ce_w: float, kl_w: float):
    """Returns step() -> (loss or None); it leaves dL/dh in hidden.grad (and dL/dW in weight.grad)."""
    import torch

    n, v = hidden.shape[0], weight.shape[0]
    if mode in ("cpu", "unfused"):
        import saferegx

        ce_weight = torch.full((n,), ce_w)
        kl_weight = torch.full((n,), kl_w)

        def step():
            out = saferegx.safety_loss(
                hidden, weight, labels, ref_hidden, ce_weight=ce_weight, kl_weight=kl_weight, kl=kl, backend=mode
            )
            out.loss.backward()
            return out.loss.detach()

        return step
    if mode in ("liger", "liger-eager"):
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        if kl != "reverse" or ce_w != 0.5 or kl_w != 0.5:
            print(
                f"note: liger always computes 0.5 CE + 0.5 reverse KL here (got kl={kl}, weights {ce_w}/{kl_w})",
                file=sys.stderr,
            )
        loss_fn = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.5, weight_soft_loss=0.5, beta=1.0, compiled=mode == "liger"
        )

        def step():
            loss = loss_fn(hidden, weight, ref_hidden, weight, labels)
            loss.backward()
            return loss.detach()

        return step
    h, w, g = hidden.detach(), weight.detach(), ref_hidden.detach()
    if mode == "floor":

        def step():
            z = torch.mm(h, w.t())
            r = torch.mm(g, w.t())
            hidden.grad = torch.mm(z, w)  # dz has z's shape; its values do not matter to a GEMM
            if train_head:
                weight.grad = torch.mm(z.t(), h)
            del r
            return None

        return step
    if mode == "floor-chunked":
        c = min(chunk_rows(v), n)

        def step():  # tiles allocated per call, as the kernel does, reused across its chunks
            tiles = torch.empty(2 * c, v)
            stacked = torch.empty(2 * c, h.shape[1])
            dh = torch.empty_like(h)
            dw = torch.zeros_like(w) if train_head else None
            for s in range(0, n, c):
                k = min(c, n - s)
                st, zr = stacked[: 2 * k], tiles[: 2 * k]
                st[:k].copy_(h[s : s + k])
                st[k:].copy_(g[s : s + k])
                torch.mm(st, w.t(), out=zr)  # policy and reference logits, one GEMM (shared head)
                z = zr[:k]
                torch.mm(z, w, out=dh[s : s + k])
                if train_head:
                    dw.addmm_(z.t(), h[s : s + k])
            hidden.grad = dh
            if train_head:
                weight.grad = dw
            return None

        return step
    raise ValueError(f"unknown mode {mode!r}")


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n, d, v = parse_sizes(args.size)[0]
    hidden, weight, ref_hidden, labels = make_inputs(n, d, v, args.logit_std, args.ref_noise, args.seed)
    hidden.requires_grad_(True)
    weight.requires_grad_(args.train_head)
    step = make_step(
        args.mode, hidden, weight, ref_hidden, labels, args.kl, args.train_head, args.ce_weight, args.kl_weight
    )
    gc.collect()
    rss_inputs = rss_bytes()

    def run():
        hidden.grad = None
        weight.grad = None
        t0 = time.perf_counter()
        loss = step()
        return time.perf_counter() - t0, loss

    t0 = time.perf_counter()
    warm, _ = run()
    hidden.grad = None
    weight.grad = None
    gc.collect()
    warm_peak = peak_bytes(False) - rss_inputs  # includes compilation (Liger), a rough figure
    resettable = reset_peak()
    rss_before = rss_bytes()
    times, loss = [], None
    for _ in range(args.repeats):
        dt, loss = run()
        times.append(dt)
    peak = peak_bytes(resettable)
    dh = hidden.grad
    print(
        json.dumps(
            {
                "mode": args.mode,
                "size": args.size,
                "median_s": statistics.median(times),
                "times": times,
                "warmup_s": warm,
                "peak_extra_mb": (peak - rss_before) / 2**20,
                "warmup_peak_extra_mb": warm_peak / 2**20,
                "peak_reset": resettable,
                "loss": None if loss is None else float(loss),
                "dh_norm": None if args.mode.startswith("floor") else float(dh.norm()),
                "chunk_rows": chunk_rows(v),
                "threads": torch.get_num_threads(),
                "total_s": time.perf_counter() - t0,
            }
        )
    )


# ---------------------------------------------------------------------------------------- parent


def run_child(args, size: str, mode: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_child",
        "--mode",
        mode,
        "--size",
        size,
        "--repeats",
        str(args.repeats),
        "--kl",
        args.kl,
        "--logit-std",
        str(args.logit_std),
        "--ref-noise",
        str(args.ref_noise),
        "--seed",
        str(args.seed),
        "--ce-weight",
        str(args.ce_weight),
        "--kl-weight",
        str(args.kl_weight),
        "--threads",
        str(args.threads),
    ]
    if args.train_head:
        cmd.append("--train-head")
    env = dict(os.environ)
    # A fixed glibc mmap threshold: freed buffers of 1 MiB and more go back to the OS at once, so
    # the RSS before the timed steps does not hide warmup buffers kept in the heap for reuse (the
    # default threshold rises to 32 MiB after the first large free). Same for every mode.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"mode": mode, "size": size, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(results: list[dict], train_head: bool) -> str:
    rows = [
        "| size (N x D x V) | mode | median s | x floor | x floor-chunked | peak extra RSS MB | loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    by_size: dict[str, list[dict]] = {}
    for r in results:
        by_size.setdefault(r["size"], []).append(r)
    for size, rs in by_size.items():
        floors = {r["mode"]: r.get("median_s") for r in rs if r["mode"].startswith("floor")}
        for r in rs:
            if "error" in r:
                rows.append(f"| {size} | {r['mode']} | failed: {r['error'][:120]} | | | | |")
                continue
            t = r["median_s"]
            f1, f2 = floors.get("floor"), floors.get("floor-chunked")
            rows.append(
                f"| {size} | {r['mode']} | {t:.3f} | {fmt(f1 and t / f1, '.2f')} "
                f"| {fmt(f2 and t / f2, '.2f')} | {r['peak_extra_mb']:.0f} "
                f"| {fmt(r['loss'], '.6f')} |"
            )
    head = "dL/dh and dL/dW (head trained)" if train_head else "dL/dh only (head frozen)"
    return f"Forward + backward, {head}.\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    ap.add_argument("--sizes", default=None, help=f"NxDxV,... (default {DEFAULT_SIZES})")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated, from {', '.join(ALL_MODES)}")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per mode (default 3)")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 1 repeat")
    ap.add_argument("--train-head", action="store_true", help="also dL/dW (the head trained)")
    ap.add_argument(
        "--kl",
        choices=("forward", "reverse"),
        default="reverse",
        help="KL direction of the saferegx modes (Liger's beta=1 is reverse)",
    )
    ap.add_argument("--ce-weight", type=float, default=0.5, help="per-row CE weight (saferegx)")
    ap.add_argument("--kl-weight", type=float, default=0.5, help="per-row KL weight (saferegx)")
    ap.add_argument("--logit-std", type=float, default=3.0, help="std of the policy logits")
    ap.add_argument("--ref-noise", type=float, default=0.1, help="ref_hidden = hidden + this * noise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--write", action="store_true", help=f"append the table to {RESULTS}")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args._child:
        child(args)
        return
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad:
        ap.error(f"unknown modes {bad}; choose from {ALL_MODES}")
    command = "python benchmarks/cpu_loss.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    print(
        f"# {command}\n# {machine()}\n# kl={args.kl}, repeats={args.repeats} after 1 warmup, one subprocess per mode",
        flush=True,
    )
    if any(m.startswith("liger") for m in modes) and (
        args.kl != "reverse" or args.ce_weight != 0.5 or args.kl_weight != 0.5
    ):
        print(
            "# note: liger always computes 0.5 CE + 0.5 reverse KL; the saferegx modes now compute "
            "another function, so their loss values differ from Liger's",
            flush=True,
        )
    results = []
    for size in sizes.split(","):
        n, d, v = parse_sizes(size)[0]
        print(f"## {size}: floor-chunked/cpu chunk = {min(chunk_rows(v), n)} rows", flush=True)
        for mode in modes:
            r = run_child(args, size, mode)
            results.append(r)
            if "error" in r:
                print(f"  {mode:14s} FAILED: {r['error']}", flush=True)
            else:
                print(
                    f"  {mode:14s} median {r['median_s']:.3f} s (warmup {r['warmup_s']:.2f} s), "
                    f"peak extra {r['peak_extra_mb']:.0f} MB, loss {fmt(r['loss'], '.6f')}, "
                    f"|dh| {fmt(r['dh_norm'], '.6g')}",
                    flush=True,
                )
    text = table(results, args.train_head)
    print("\n" + text + "\n\n" + NOTES)
    if args.write:
        append_results(
            "",
            command,
            machine(),
            f"KL: {args.kl}; ce/kl weight {args.ce_weight}/{args.kl_weight}; logit std "
            f"{args.logit_std}; median of {args.repeats} timed step(s) after 1 warmup.\n\n"
            f"{text}\n\n{NOTES}",
        )


if __name__ == "__main__":
    main()
