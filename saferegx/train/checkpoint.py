"""Checkpoints that a crash cannot corrupt, and a resume that continues the run exactly.

A checkpoint is a folder ``step-000012/``: ``model.safetensors`` (the trainable parameters only:
LoRA adapters, or everything for full fine-tuning), ``state.pt`` (optimizer, LR scheduler, RNG
states, data position, risk-schedule EMA: tensors and plain containers, loaded with
``weights_only=True``, so no arbitrary pickle) and ``meta.json`` (step, config). It is written into a
temporary folder and renamed into place, so a folder named ``step-*`` is always complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import distributed

_NAME = re.compile(r"^step-(\d+)$")
# Keys that may change between a run and its resume without changing the result.
RESUMABLE_CHANGES = {
    "resume",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
    "log_dir",
    "progress",
    "device",
    "distributed",
}  # a checkpoint holds full tensors in any mode


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: Path, step: int, *, model, optimizer, scheduler, order, schedule, config: dict, keep: int) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep``. Under DDP/FSDP
    every process calls it (FSDP gathers its shards) and the main process writes."""
    weights, optimizer_state = distributed.full_weights(model), distributed.full_optimizer_state(optimizer)
    target = root / f"step-{step:06d}"
    if not distributed.is_main():
        distributed.barrier()  # until the main process has written it
        return target
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a process killed mid-write: a checkpoint's worth of disk
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{target.name}-"))
    try:
        save_file({k: v.cpu() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        torch.save(
            {
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "data": order.state_dict(),
                "schedule": schedule.state_dict(),
            },
            tmp / "state.pt",
        )
        (tmp / "meta.json").write_text(json.dumps({"step": step, "config": config}, indent=1))
        if target.exists():  # a re-run of the same step: replace it
            _discard(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in complete(root)[:-keep]:
        _discard(old)
    distributed.barrier()
    return target


def _discard(path: Path) -> None:
    """Delete a checkpoint so that a crash midway cannot leave a half-deleted ``step-*`` folder:
    first rename it (atomically) to a temporary name, which ``latest`` skips, then delete that."""
    trash = path.with_name(f".tmp-{path.name}-del-{os.urandom(4).hex()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def complete(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are skipped)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    found = complete(root)
    return found[-1] if found else None


def load(path: Path, *, model, optimizer, scheduler, order, schedule, config: dict) -> int:
    """Restore everything saved at ``path``; returns its step. Refuses a changed config."""
    meta = json.loads((path / "meta.json").read_text())
    changed = sorted(
        k
        for k in set(config) | set(meta["config"])
        if k not in RESUMABLE_CHANGES and config.get(k) != meta["config"].get(k)
    )
    if changed:
        raise ValueError(
            f"cannot resume from {path}: config key(s) {', '.join(changed)} differ from "
            "the checkpoint's; resume with the same config or start a new output_dir"
        )
    weights = load_file(str(path / "model.safetensors"))
    expected = set(trainable_state(model))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(
            f"{path}: trainable parameters differ from the model's (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    state = torch.load(path / "state.pt", weights_only=True)
    distributed.load_state(model, optimizer, weights, state["optimizer"])  # FSDP: keeps its shards
    scheduler.load_state_dict(state["scheduler"])
    order.load_state_dict(state["data"])
    schedule.load_state_dict(state["schedule"])
    set_rng_state(state["rng"])
    return meta["step"]
