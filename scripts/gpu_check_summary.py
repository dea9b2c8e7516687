"""benchmarks/gpu_check.sh's helper: what the machine has, which carried wheels to install, and the
final summary (gpu_check.json plus a short table, printed last).

    python scripts/gpu_check_summary.py inventory OUTDIR
    python scripts/gpu_check_summary.py wheels OUTDIR WHEEL_DIR      # prints the wheels to install
    python scripts/gpu_check_summary.py summary OUTDIR
"""

import json
import re
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

# distribution -> the stages that need it ("optional": a stage runs without it, with less)
PACKAGES = {
    "torch": "all",
    "triton": "triton backend, tests, bench",
    "transformers": "train",
    "peft": "train",
    "accelerate": "train",
    "safetensors": "train",
    "tokenizers": "train",
    "datasets": "train",
    "pyarrow": "train",
    "pandas": "train",
    "numpy": "all",
    "tqdm": "train",
    "pyyaml": "train",
    "huggingface-hub": "train",
    "psutil": "optional",
    "pytest": "tests, properties",
    "pygments": "tests",
    "hypothesis": "properties",
    "pytest-benchmark": "optional",
    "liger-kernel": "bench (liger rows)",
    "ninja": "build (else a slow serial build)",
    "pybind11": "optional",
    "setuptools": "build",
    "matplotlib": "optional",
    "tensorboard": "optional",
    "gguf": "optional",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(norm(name), dist.version)
    return out


def inventory(outdir: Path) -> int:
    have = installed()
    inv = {name: {"version": have.get(norm(name)), "needed_by": why} for name, why in PACKAGES.items()}
    missing = [n for n, v in inv.items() if v["version"] is None]
    report = dict(python=sys.version.split()[0], packages=inv, missing=missing)
    try:
        import torch

        report.update(torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            report.update(
                device=props.name,
                sms=props.multi_processor_count,
                capability=list(torch.cuda.get_device_capability(0)),
                memory_gib=round(props.total_memory / 2**30, 1),
            )
    except Exception as exc:  # torch itself missing or broken: the report says so
        report["torch_error"] = repr(exc)
    (outdir / "inventory.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "packages"}, indent=1))
    for name, v in inv.items():
        print(f"  {name:18s} {v['version'] or 'MISSING':24s} {v['needed_by']}")
    return 0


def wheels(outdir: Path, wheel_dir: Path) -> int:
    """The carried wheels whose distribution is not installed (one path per line)."""
    have = installed()
    for whl in sorted(wheel_dir.glob("*.whl")):
        if norm(whl.name.split("-")[0]) not in have:
            print(whl)
    return 0


def _junit(path: Path) -> dict | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{c.get('classname')}::{c.get('name')}"
        for s in suites
        for c in s.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = failed[:50]
    return counts


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(outdir: Path) -> int:
    stages = (
        [json.loads(line) for line in (outdir / "stages.jsonl").read_text().splitlines()]
        if (outdir / "stages.jsonl").exists()
        else []
    )
    result = dict(
        stages=stages,
        inventory=_load(outdir / "inventory.json"),
        cuda_build=_load(outdir / "cuda_check.json"),
        triton_compile=None,
        tests=_junit(outdir / "tests_gpu.xml"),
        properties=_junit(outdir / "tests_properties.xml"),
        bench=_load(outdir / "bench.json"),
        train=_load(outdir / "train" / "train_summary.json"),
    )
    sm90 = _load(outdir / "triton_sm90.json")
    if sm90:
        result["triton_compile"] = dict(
            triton=sm90["triton"],
            variants=len(sm90["variants"]),
            seconds=round(sm90["seconds"]),
            problems=[
                f"{v['kernel']} {v['dtype']} {v['constexprs']}: {p}" for v in sm90["variants"] for p in v["problems"]
            ],
        )
    result["ok"] = bool(stages) and all(s["status"] in ("ok", "dry-run") for s in stages)
    (outdir / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))

    lines = [
        "",
        "gpu_check summary (gpu_check.json; logs in gpu_check.log)",
        f"{'stage':12s} {'status':10s} {'s':>5s}  result",
    ]
    detail = {
        "tests": lambda: _tests_line(result["tests"]),
        "properties": lambda: _tests_line(result["properties"]),
        "build": lambda: _build_line(result["cuda_build"]),
        "warm": lambda: _compile_line(result["triton_compile"]),
        "bench": lambda: _bench_line(result["bench"]),
        "train": lambda: _train_line(result["train"]),
        "env": lambda: _env_line(result["inventory"]),
    }
    for s in stages:
        try:
            text = detail.get(s["stage"], lambda: "")()
        except Exception as exc:  # a malformed partial result must not hide the table
            text = f"(unreadable: {exc})"
        lines.append(f"{s['stage']:12s} {s['status']:10s} {s['seconds']:5d}  {text}")
    lines.append(f"overall: {'OK' if result['ok'] else 'NOT OK'}")
    print("\n".join(lines))
    return 0 if result["ok"] else 1


def _env_line(inv):
    if not inv:
        return ""
    dev = inv.get("device", "no CUDA device")
    return f"{dev}; missing: {', '.join(inv['missing']) or 'none'}"


def _tests_line(t):
    if not t:
        return "no report"
    return f"{t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped" + (
        f" (first: {t['failed_tests'][0]})" if t["failed_tests"] else ""
    )


def _build_line(c):
    if not c:
        return "no check report"
    cuda = all(k.get("CUDA") for k in (c.get("kernels") or {}).values()) and bool(c.get("kernels"))
    return f"CUDA kernels {'registered' if cuda else 'MISSING'}, {len(c.get('warnings', []))} warnings"


def _compile_line(t):
    if not t:
        return "no report"
    return f"Triton {t['triton']}: {t['variants']} variants, {len(t['problems'])} problems"


def _bench_line(b):
    if not b:
        return "no report"
    parts = []
    for target in b.get("targets", []):
        mark = {True: "ok", False: "MISSED", None: "n/a"}[target.get("met")]
        parts.append(f"{target['name']}: {target.get('value', '-')} ({mark})")
    return "; ".join(parts) or f"{len(b.get('rows', []))} rows"


def _train_line(t):
    if not t:
        return "no summary"
    return (
        f"{t['steps_logged']}/{t['steps_asked']} steps, loss {t.get('first_loss')} -> "
        f"{t.get('last_loss')}, {t['seconds_per_step']} s/step, "
        f"auto: {sorted({v['picked'] for v in t.get('autotune', {}).values()}) or '-'}"
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("inventory", "wheels", "summary"):
        print(__doc__, file=sys.stderr)
        return 2
    outdir = Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    if argv[0] == "inventory":
        return inventory(outdir)
    if argv[0] == "wheels":
        return wheels(outdir, Path(argv[2]))
    return summary(outdir)


if __name__ == "__main__":
    sys.exit(main())
