"""Training data: JSONL examples -> chat-tokenized, right-padded batches in a resumable order.

The files are read as a ``datasets.Dataset`` (Arrow, memory-mapped, cached) after each line is
checked here, so a bad line is still reported as ``file:line``; ``tokenize`` runs ``encode`` over
it with ``Dataset.map``, whose cache makes a rerun on the same data and tokenizer skip the work.

An example is ``{"prompt": str, "response": str}`` with an optional ``"risk": float`` in [0, 1]
(a known per-example risk that overrides the probe or critic for that example). The prompt is
tokenized as the model sees it before answering (chat template with the generation prompt, the same
ids the probe was fitted on), the response follows with EOS, and only response tokens carry labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..lm import format_prompt

IGNORE_INDEX = -100


def load_examples(paths: str | Path | Sequence[str | Path]):
    """Examples from one or more JSONL files as a ``datasets.Dataset`` (rows ``{"prompt",
    "response", "risk"}``, ``risk`` None where not given); a bad line raises ValueError naming
    file and line."""
    from datasets import load_dataset

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    examples = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"data file {path} does not exist (config key 'data')")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    ex = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not JSON ({e.msg})") from None
                examples.append(_check_example(ex, where))
    if not examples:
        raise ValueError(f"no examples in {', '.join(map(str, paths))}")
    dataset = load_dataset("json", data_files=[str(p) for p in paths], split="train")
    if "risk" not in dataset.column_names:
        dataset = dataset.add_column("risk", [None] * len(dataset))
    return dataset.select_columns(["prompt", "response", "risk"])


def tokenize(dataset, tokenizer, max_length: int):
    """``dataset`` with ``input_ids`` and ``n_prompt`` (see :func:`encode`) per row, by a cached
    ``Dataset.map``: the same files, tokenizer and ``max_length`` are tokenized once."""

    def fn(batch):
        encoded = [encode(tokenizer, p, r, max_length) for p, r in zip(batch["prompt"], batch["response"])]
        return {"input_ids": [ids for ids, _ in encoded], "n_prompt": [n for _, n in encoded]}

    return dataset.map(fn, batched=True, desc="tokenize")


def _check_example(ex, where: str) -> dict:
    if not isinstance(ex, dict):
        raise ValueError(f"{where}: expected an object with 'prompt' and 'response'")
    extra = set(ex) - {"prompt", "response", "risk"}
    if extra:
        raise ValueError(f"{where}: unknown field(s) {sorted(extra)}")
    for key in ("prompt", "response"):
        if not isinstance(ex.get(key), str):
            raise ValueError(f"{where}: '{key}' must be a string")
    risk = ex.get("risk")
    if risk is not None and (isinstance(risk, bool) or not isinstance(risk, (int, float)) or not 0.0 <= risk <= 1.0):
        raise ValueError(f"{where}: 'risk' must be a number in [0, 1], got {risk!r}")
    return ex


def encode(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """``(ids, n_prompt)``: chat-formatted prompt ids then response ids and EOS.

    Over ``max_length``, the response is cut at its end and the prompt at its start (its end, the
    last prompt token the probe reads, is always kept); the response keeps at least half the
    budget when it needs it, so every example still trains on something.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    prompt_ids = format_prompt(tokenizer, prompt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    budget = max(max_length - len(prompt_ids), min(len(response_ids), max_length // 2))
    response_ids = response_ids[:budget]
    prompt_ids = prompt_ids[-(max_length - len(response_ids)) :]
    return prompt_ids + response_ids, len(prompt_ids)


@dataclass
class Batch:
    """One micro-batch. ``labels[b, t]`` is the target of position ``t`` (already shifted: token
    ``t + 1``), ``IGNORE_INDEX`` on prompt and padding; ``prompt_pos[b]`` is the last prompt token;
    ``risk[b]`` the example's given risk or NaN."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_pos: torch.Tensor
    risk: torch.Tensor
    prompts: list[str]
    responses: list[str]

    def to(self, device) -> Batch:
        tensors = {
            k: getattr(self, k).to(device) for k in ("input_ids", "attention_mask", "labels", "prompt_pos", "risk")
        }
        return Batch(**tensors, prompts=self.prompts, responses=self.responses)

    def select(self, rows: Sequence[int]) -> Batch:
        """The sub-batch of the given sequences, its right padding cut to the longest of them (the
        gated-in sequences' reference pass: a causal model's outputs at the kept positions are
        those of the full width)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        width = int(self.attention_mask[index].sum(1).max()) if len(index) else 0
        tensors = {k: getattr(self, k)[index, :width] for k in ("input_ids", "attention_mask", "labels")}
        tensors.update({k: getattr(self, k)[index] for k in ("prompt_pos", "risk")})
        return Batch(**tensors, prompts=[self.prompts[i] for i in rows], responses=[self.responses[i] for i in rows])

    @property
    def n_tokens(self) -> int:
        """Rows the loss counts (response tokens)."""
        return int((self.labels != IGNORE_INDEX).sum())


def collate(tokenizer, examples: Sequence[dict], max_length: int) -> Batch:
    """Right-pad examples into a :class:`Batch`, tokenizing those that :func:`tokenize` has not."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [
        (ex["input_ids"], ex["n_prompt"])
        if "input_ids" in ex
        else encode(tokenizer, ex["prompt"], ex["response"], max_length)
        for ex in examples
    ]
    width = max(len(ids) for ids, _ in encoded)
    b = len(encoded)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    for k, (ids, n_prompt) in enumerate(encoded):
        seq = torch.tensor(ids, dtype=torch.long)
        input_ids[k, : len(ids)] = seq
        attention_mask[k, : len(ids)] = 1
        labels[k, n_prompt - 1 : len(ids) - 1] = seq[n_prompt:]  # label t = token t + 1
    prompt_pos = torch.tensor([n_prompt - 1 for _, n_prompt in encoded], dtype=torch.long)
    risk = torch.tensor(
        [math.nan if ex.get("risk") is None else float(ex["risk"]) for ex in examples], dtype=torch.float32
    )
    return Batch(
        input_ids,
        attention_mask,
        labels,
        prompt_pos,
        risk,
        [ex["prompt"] for ex in examples],
        [ex["response"] for ex in examples],
    )


class DataOrder:
    """Shuffled micro-batches of example indices, epoch after epoch, resumable exactly.

    Epoch ``e`` uses the permutation seeded by ``(seed, e)``, so the position ``(epoch, index)``
    is the whole state: no RNG stream to save. The last micro-batch of an epoch may be smaller
    (the loop normalizes by the global token count, so unequal micro-batches are exact).
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int = 0):
        if n_examples < 1 or batch_size < 1:
            raise ValueError("need at least one example and batch_size >= 1")
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.epoch, self.index = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next(self) -> list[int]:
        """The next micro-batch's example indices; advances the position."""
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index * self.batch_size
        self.index += 1
        return self.permutation(self.epoch)[start : start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["n"], state["batch_size"]) != (self.seed, self.n, self.batch_size):
            raise ValueError(
                "checkpoint data order was for another dataset, batch size or seed: "
                f"{state}, now n={self.n}, batch_size={self.batch_size}, seed={self.seed}"
            )
        self.epoch, self.index = state["epoch"], state["index"]
