"""Risk before training: every example's risk, computed once from its prompt, and its table.

An example's risk is a property of its prompt under the frozen reference: the same in every epoch
and known before step 1. The probe reads the reference's forward over the prompt tokens only,
stopped at the probe's deepest layer (the blocks above it, the response and the head never run);
the critic scores the prompt text. ``saferegx audit`` writes the table as JSONL; the trainer
computes it in a pre-pass (or reads the audit's), so its steps need no probe hook.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..lm import batch_cache, layer_outputs, pad_right, prefix_cache
from .probe import Probe, read_probe

SOURCES = ("probe", "critic")


def prompt_hash(prompt: str) -> str:
    """sha256 of the prompt text: what ties a table row to its example."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass
class RiskTable:
    """Per-example risk from each source that scored it, in the data's order."""

    hashes: list[str]
    risk: dict[str, torch.Tensor]  # source ("probe" | "critic") -> [n] fp32

    def __len__(self) -> int:
        return len(self.hashes)

    def check(self, prompts: Sequence[str], source: str, where: str) -> None:
        """ValueError naming ``where`` unless the table is for exactly these prompts and has
        ``source``: a table of another dataset (or of an edited one) must never be applied."""
        if len(prompts) != len(self):
            raise ValueError(f"{where}: {len(self)} rows, but the data has {len(prompts)} examples")
        for i, (h, p) in enumerate(zip(self.hashes, prompts)):
            if h != prompt_hash(p):
                raise ValueError(
                    f"{where}: row {i} is for another prompt than example {i} of the "
                    "data (prompt hash differs): the table was written for other data"
                )
        if source not in self.risk:
            raise ValueError(f"{where}: no {source!r} risk (it has {', '.join(self.risk) or 'none'})")

    def save(self, path: str | Path, beta: torch.Tensor | None = None) -> Path:
        """One JSON line per example (``index``, ``prompt_sha256``, a risk per source and, when
        given, the ``beta`` a schedule assigns), written through ``datasets`` atomically."""
        from datasets import Dataset

        columns = {"index": list(range(len(self))), "prompt_sha256": self.hashes}
        columns.update({k: v.tolist() for k, v in self.risk.items()})
        if beta is not None:
            columns["beta"] = beta.tolist()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        Dataset.from_dict(columns).to_json(str(tmp), lines=True)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RiskTable:
        """A table written by :meth:`save`; a bad line raises ValueError naming file and line."""
        if not Path(path).is_file():
            raise ValueError(f"risk table {path} does not exist")
        hashes, risk = [], {}
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
                if (
                    not isinstance(row, dict)
                    or row.get("index") != len(hashes)
                    or not isinstance(row.get("prompt_sha256"), str)
                ):
                    raise ValueError(f"{path}:{n}: expected index {len(hashes)} and a prompt_sha256")
                sources = [s for s in SOURCES if s in row]
                if not sources or (risk and sorted(sources) != sorted(risk)):
                    raise ValueError(f"{path}:{n}: expected risk column(s) {sorted(risk) or list(SOURCES)}")
                for s in sources:
                    value = row[s]
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                        raise ValueError(f"{path}:{n}: {s} risk must be a number in [0, 1], got {value!r}")
                    risk.setdefault(s, []).append(float(value))
                hashes.append(row["prompt_sha256"])
        if not hashes:
            raise ValueError(f"{path}: no rows")
        return cls(hashes, {s: torch.tensor(v, dtype=torch.float32) for s, v in risk.items()})


@torch.no_grad()
def probe_risks(
    probe: Probe,
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    batch_size: int = 32,
    bf16: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Risk ``[n]`` of each prompt (token ids, as the model sees them before answering) under
    ``model`` as the reference (a PEFT model's adapters are disabled), from a forward that stops
    at the probe's deepest layer. A beginning that prompts share (a chat template's system prompt,
    often half of a short prompt; an instruction template) runs once, its KV cache reused: see
    :func:`batch_plan` for how prompts are grouped."""
    probe.check(model)
    device = next(model.parameters()).device
    plan = batch_plan(prompt_ids, batch_size)
    out = torch.empty(len(prompt_ids), dtype=torch.float32)
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with (
            off,
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            tqdm(
                total=len(prompt_ids), desc="risk (probe)", unit="prompt", file=sys.stderr, disable=not progress
            ) as bar,
        ):
            common = shared_prefix(prompt_ids)  # every batch's beginning continues this one
            first = prefix_cache(model, common, probe.layers) if common else None
            prefix, cache, head = [], None, {}
            for idx, n_prefix in plan:
                if list(prompt_ids[idx[0]][:n_prefix]) != prefix:  # a new beginning: its cache
                    prefix = list(prompt_ids[idx[0]][:n_prefix])
                    if not prefix:
                        cache, head = None, {}
                    elif len(prefix) == len(common):
                        cache, head = first
                    else:
                        cache, head = prefix_cache(model, prefix, probe.layers, start=first)
                ids, mask = pad_right([prompt_ids[k][len(prefix) :] for k in idx], pad_id)
                ids, mask = ids.to(device), mask.to(device)
                if cache is None:
                    taps = layer_outputs(model, ids, mask, probe.layers)
                else:  # the prefix's outputs in front: a mean-pooled probe averages them too
                    full = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, len(prefix)), mask], 1)
                    taps = layer_outputs(model, ids, full, probe.layers, cache=batch_cache(cache, len(idx)))
                    taps = {i: torch.cat([head[i].expand(len(idx), -1, -1), t], 1) for i, t in taps.items()}
                    mask = full
                out[idx] = read_probe(probe, taps, mask.sum(1) - 1).float().cpu()
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return out


def batch_plan(prompt_ids: Sequence[Sequence[int]], batch_size: int) -> list[tuple[list[int], int]]:
    """The pre-pass's batches: ``[(prompt indices, length of the beginning they share)]``.

    Two ways to group: by length, under the beginning all prompts share (little padding), or in
    token order, each batch under its own shared beginning (an instruction template shared by a
    family of prompts then runs once per batch, not once per prompt). The plan that runs fewer
    token positions is taken: a batch costs its size x (its longest prompt - its beginning), the
    common beginning its length once, each longer beginning what it adds to that once.
    """
    n = len(prompt_ids)
    if n == 0:
        return []
    common = len(shared_prefix(prompt_ids))

    def batches(order):
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]

    by_length = [(b, common) for b in batches(sorted(range(n), key=lambda k: len(prompt_ids[k])))]
    by_tokens = [
        (b, len(shared_prefix([prompt_ids[k] for k in b])))
        for b in batches(sorted(range(n), key=lambda k: list(prompt_ids[k])))
    ]

    def positions(plan):
        beginnings = {tuple(prompt_ids[b[0]][:p]) for b, p in plan} - {tuple(prompt_ids[0][:common])}
        once = common + sum(len(t) - common for t in beginnings)
        return once + sum(len(b) * (max(len(prompt_ids[k]) for k in b) - p) for b, p in plan)

    return min(by_length, by_tokens, key=positions)


def shared_prefix(prompt_ids: Sequence[Sequence[int]], min_length: int = 4) -> list[int]:
    """The longest beginning all prompts share, short of each prompt's last token (so every
    prompt keeps one token of its own); empty when under ``min_length`` tokens."""
    if not prompt_ids:
        return []
    first = list(prompt_ids[0])
    n = min(len(p) for p in prompt_ids) - 1
    for p in prompt_ids[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return first[:n] if n >= min_length else []


def critic_risks(critic, prompts: Sequence[str], *, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Risk ``[n]`` of each prompt from a Safety Critic (its own batching and cache inside)."""
    out = []
    with tqdm(total=len(prompts), desc="risk (critic)", unit="prompt", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            out.append(critic.score(chunk).float().cpu())
            bar.update(len(chunk))
    return torch.cat(out) if out else torch.empty(0)
