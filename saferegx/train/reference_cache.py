"""The frozen reference's outputs per example, computed once and reused in later epochs.

The reference never changes during training, so for a given example its final hidden states at the
response tokens (the KL's input) and its risk (probe or critic) are the same every epoch; TRL's
``precompute_ref_log_probs`` makes the same observation for DPO. Storing the ``[n_response, D]``
hidden rows (not ``[n_response, V]`` log-probs) keeps the entry small: 0.6 MB for 256 response
tokens of SmolLM2-135M in fp32. Over ``limit_mb`` new entries are simply not stored, so a run that
does not fit computes them as before; nothing is lost but the saving.

Entries are kept where the pass computed them (the training device) and are not checkpointed: a
resumed run recomputes them, which agrees with the stored values to float rounding (the batch the
example sits in changes the GEMM shapes, not the math).
"""
from __future__ import annotations

from typing import Sequence

import torch


class ReferenceCache:
    def __init__(self, limit_mb: float):
        self.limit = int(limit_mb * 2**20)
        self.bytes = 0
        self.hits = self.misses = 0
        self._rows: dict[int, torch.Tensor | None] = {}   # example -> [n_response, D] or None
        self._risk: dict[int, torch.Tensor | None] = {}   # example -> scalar risk or None

    def lookup(self, ids: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        """``(ref_rows, risk)`` for a micro-batch of examples ``ids``, or None unless all are stored.

        ``ref_rows`` is ``[sum n_response, D]`` in batch order, i.e. ``ref_hidden[labels != ignore]``.
        """
        if not all(i in self._rows for i in ids):
            self.misses += 1
            return None
        self.hits += 1
        rows = [self._rows[i] for i in ids]
        risks = [self._risk[i] for i in ids]
        return (None if rows[0] is None else torch.cat(rows),
                None if risks[0] is None else torch.stack(risks))

    def store(self, ids: Sequence[int], response_mask: torch.Tensor, ref_hidden: torch.Tensor | None,
              risk: torch.Tensor | None) -> None:
        """Keeps each example's response rows of ``ref_hidden [B, T, D]`` and its ``risk [B]``."""
        for b, i in enumerate(ids):
            if i in self._rows:
                continue
            rows = None if ref_hidden is None else ref_hidden[b][response_mask[b]]
            size = 0 if rows is None else rows.numel() * rows.element_size()
            if self.bytes + size > self.limit:
                return
            self._rows[i] = None if rows is None else rows.clone()
            self._risk[i] = None if risk is None else risk[b].clone()
            self.bytes += size

    def __len__(self) -> int:
        return len(self._rows)
