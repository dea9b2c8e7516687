"""Checks a CUDA build of saferegx._C without a GPU (the last step of make cuda-build).

    python scripts/cuda_check.py build/cuda/lib/saferegx/_C.cpython-311-x86_64-linux-gnu.so \
        [--log build/cuda/build.log] [--json out.json]

Run by the CUDA torch it was built against: imports torch (its CUDA build loads without a
device), loads the extension module as `saferegx._C` from the given file, and checks that
`saferegx::safety_loss_fwd` / `_bwd` have CUDA (and CPU) kernels registered, that the library
carries sm_90 machine code (Triton's bundled cuobjdump, where there is one), and that the build
log has no compiler warning from this project's files. Exits non-zero on any failure.
"""

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ("saferegx::safety_loss_fwd", "saferegx::safety_loss_bwd")


def load_extension(path: Path):
    spec = importlib.util.spec_from_file_location("saferegx._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_warnings(log: str) -> list[str]:
    """Compiler warnings located in csrc/ or saferegx/ (not torch's or CUDA's headers)."""
    hits = []
    for line in log.splitlines():
        if not re.search(r"warning", line, re.IGNORECASE):
            continue
        if re.search(r"(^|[\s/])(csrc|saferegx)/[\w/.-]+[:(]\d+", line):
            hits.append(line.strip())
    return hits


def kernel_resources(log: str) -> dict:
    """Per CUDA kernel of ours (ptxas --resource-usage in the build log): registers, spill bytes."""
    out, name = {}, None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)' for '(sm_\w+)'", line):
            name = None
            if "saferegx" in m.group(1):
                short = re.search(r"(row_\w+?_kernel)(I\w+?E)?", m.group(1))
                tparam = re.search(r"kernelI(?:\d+)?(\w+?)EEv", m.group(1))
                tname = {"f": "float"}.get(tparam.group(1), tparam.group(1)) if tparam else ""
                name = f"{short.group(1)}<{tname}> {m.group(2)}" if tparam else f"{short.group(1)} {m.group(2)}"
                out[name] = {}
        elif name and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            out[name].update(spill_stores=int(m.group(1)), spill_loads=int(m.group(2)))
        elif name and (m := re.search(r"Used (\d+) registers", line)):
            out[name]["registers"] = int(m.group(1))
    return out


def cuda_elves(path: Path) -> list[str] | None:
    """The sm_XX of the ELF (machine code) images in the library; None without cuobjdump."""
    tool = shutil.which("cuobjdump")
    if tool is None:
        spec = importlib.util.find_spec("triton")
        if spec and spec.submodule_search_locations:
            cand = Path(list(spec.submodule_search_locations)[0]) / "backends/nvidia/bin/cuobjdump"
            tool = str(cand) if cand.exists() else None
    if tool is None:
        return None
    done = subprocess.run([tool, "--list-elf", str(path)], capture_output=True, text=True)
    return sorted(set(re.findall(r"\.(sm_\d+a?)\.", done.stdout)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("extension", type=Path)
    ap.add_argument("--log", type=Path, help="the build's compiler output, scanned for warnings")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch

    result = dict(
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        device=torch.cuda.is_available(),
        extension=str(args.extension),
    )
    failures = []
    if torch.version.cuda is None:
        failures.append(f"torch {torch.__version__} is not a CUDA build")
    try:
        module = load_extension(args.extension)
        result["cpu_chunk_rows"] = module.cpu_chunk_rows(128256, True)
    except Exception as exc:
        failures.append(f"loading {args.extension}: {type(exc).__name__}: {exc}")
    else:
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        result["kernels"] = {op: {key: has(op, key) for key in ("CPU", "CUDA")} for op in OPS}
        for op, keys in result["kernels"].items():
            failures += [f"{op} has no {key} kernel" for key, ok in keys.items() if not ok]
    elves = cuda_elves(args.extension)
    result["sm_elves"] = elves
    if elves is not None and "sm_90" not in elves:
        failures.append(f"no sm_90 machine code in the library (ELF images: {elves})")
    if args.log:
        log = args.log.read_text(errors="replace")
        result["warnings"] = our_warnings(log)
        failures += [f"compiler warning: {w}" for w in result["warnings"]]
        result["kernel_resources"] = kernel_resources(log)
        failures += [
            f"{k} spills registers: {r}"
            for k, r in result["kernel_resources"].items()
            if r.get("spill_stores") or r.get("spill_loads")
        ]
    result["failures"] = failures
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
