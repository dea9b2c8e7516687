"""Per-step metrics: one JSONL line and one set of TensorBoard scalars per optimizer step.

On resume the JSONL keeps the lines up to the checkpoint's step (a crash may have logged steps the
checkpoint does not hold) and TensorBoard purges the same steps, so both read as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SCALARS = ("loss", "ce", "kl", "risk", "beta", "lr", "grad_norm", "tokens_per_s", "ref_seconds")


class MetricsLog:
    """``write=False`` (the other processes of a multi-process run) keeps only ``history``."""

    def __init__(self, path: Path, start_step: int, tensorboard_dir: Path | None, write: bool = True):
        self.path = path if write else None
        self.history: list[dict] = []
        self.writer = None
        if not write:
            return
        if start_step > 0 and path.exists():
            lines = path.read_text().splitlines()
            self.history = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= start_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1 if start_step else None)

    def write(self, record: dict) -> None:
        """Append one step; NaN or missing values (e.g. no risk in plain SFT) become null."""
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.history.append(record)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in SCALARS:
                if record.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
