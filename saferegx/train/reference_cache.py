"""The frozen reference's outputs per example, computed once and reused in later epochs.

The reference never changes during training, so for a given example its final hidden states at the
response tokens (the KL's input) are the same every epoch (its risk, likewise, is computed once
before training: see prepass.py); TRL's
``precompute_ref_log_probs`` makes the same observation for DPO. Storing the ``[n_response, D]``
hidden rows (not ``[n_response, V]`` log-probs) keeps the entry small: 0.6 MB for 256 response
tokens of SmolLM2-135M in fp32. Over ``limit_mb`` new entries are simply not stored, so a run that
does not fit computes them as before; nothing is lost but the saving.

Entries are kept where the pass computed them (the training device) and are not checkpointed: a
resumed run recomputes them, which agrees with the stored values to float rounding (the batch the
example sits in changes the GEMM shapes, not the math).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ReferenceCache:
    def __init__(self, limit_mb: float):
        self.limit = int(limit_mb * 2**20)
        self.bytes = 0
        self.hits = self.misses = 0
        self._rows: dict[int, torch.Tensor] = {}  # example -> [n_response, D]

    def lookup(self, ids: Sequence[int]) -> torch.Tensor | None:
        """The reference rows ``[sum n_response, D]`` of examples ``ids`` in that order (i.e.
        ``ref_hidden[labels != ignore]`` of their batch), or None unless all are stored."""
        if not all(i in self._rows for i in ids):
            self.misses += 1
            return None
        self.hits += 1
        return torch.cat([self._rows[i] for i in ids]) if ids else None

    def store(self, ids: Sequence[int], response_mask: torch.Tensor, ref_hidden: torch.Tensor) -> None:
        """Keeps each example's response rows of ``ref_hidden [B, T, D]`` (row b is example ids[b])."""
        for b, i in enumerate(ids):
            if i in self._rows:
                continue
            rows = ref_hidden[b][response_mask[b]]
            size = rows.numel() * rows.element_size()
            if self.bytes + size > self.limit:
                return
            self._rows[i] = rows.clone()
            self.bytes += size

    def __len__(self) -> int:
        return len(self._rows)
