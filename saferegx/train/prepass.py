"""The trainer's pre-pass: the risk of every example, once, before step 1.

Each process scores its share of the examples (every ``world_size``-th) and the shares are summed
into the whole table, which the main process saves beside the run (``risk_table.jsonl``): a resumed
run reads it back instead of scoring again, so its risks are the original's bit for bit. A table
from ``saferegx audit`` (config key ``risk_table``) is used instead when given, after checking that
it was written for this data. An example's own ``risk`` field overrides its table value.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..risk.table import RiskTable, prompt_hash
from . import distributed
from .config import TrainConfig
from .signals import RiskSource

TABLE_NAME = "risk_table.jsonl"


def example_risks(cfg: TrainConfig, examples, model, tokenizer, source: RiskSource, *, bf16: bool) -> torch.Tensor:
    """``[n]`` fp32 (CPU) risk per example of ``examples`` (tokenized, see batches.tokenize)."""
    prompts = examples["prompt"]
    saved = Path(cfg.output_dir) / TABLE_NAME
    if cfg.risk_table is not None or (cfg.resume and saved.exists()):
        path = Path(cfg.risk_table) if cfg.risk_table is not None else saved
        table = RiskTable.load(path)
        table.check(
            prompts,
            cfg.risk,
            f"risk table {path} (config key 'risk_table')" if cfg.risk_table is not None else f"risk table {path}",
        )
    else:
        table = _score(cfg, examples, model, tokenizer, source, bf16)
    risk = table.risk[cfg.risk].clone()
    given = torch.tensor([math.nan if r is None else r for r in examples["risk"]], dtype=torch.float32)
    risk = torch.where(torch.isnan(given), risk, given)
    if cfg.risk_table is None and distributed.is_main() and not saved.exists():
        beta = cfg.beta_min + (cfg.beta_max - cfg.beta_min) * risk  # sequence mode, for reading
        table.save(saved, beta=beta)
    distributed.barrier()
    return risk


def _score(cfg, examples, model, tokenizer, source, bf16) -> RiskTable:
    n = len(examples)
    mine = distributed.shard(list(range(n)))
    device = next(model.parameters()).device
    values = torch.zeros(n, dtype=torch.float32, device=device)
    if mine:
        rows = examples.select(mine)
        ids = [row[:k] for row, k in zip(rows["input_ids"], rows["n_prompt"])]  # as in training
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        values[mine] = source.score_prompts(
            model, rows["prompt"], ids, pad_id=pad_id, bf16=bf16, progress=cfg.progress and distributed.is_main()
        ).to(device)
    values = distributed.all_reduce_sum(values).cpu()  # each example scored by one process
    return RiskTable([prompt_hash(p) for p in examples["prompt"]], {cfg.risk: values})
