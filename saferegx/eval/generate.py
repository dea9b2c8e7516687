"""Batched greedy generation for evaluation: deterministic, so arms compare on the same footing.

Prompts are wrapped in the chat template (as the model is used, and as it was trained) and
left-padded, so every row's new tokens start at the same column. Rows are batched by length to
waste little compute on padding, then returned in the caller's order. Works for plain HF causal
LMs and PEFT-wrapped ones (both expose ``generate``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..lm import format_prompt


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat_template: bool = True,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy responses to ``prompts``, decoded without special tokens and stripped."""
    ids = generate_ids(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chat_template=chat_template,
        progress=progress,
        desc=desc,
    )
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat_template: bool = True,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[int]]:
    """New token ids per prompt (at most ``max_new_tokens``, cut after the first end token)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be >= 1")
    encoded = [format_prompt(tokenizer, p, chat_template) for p in prompts]
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k]))
    out: list[list[int]] = [[] for _ in encoded]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(encoded), desc=desc, disable=not progress, leave=False) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, mask = _pad_left([encoded[k] for k in rows], pad_id)
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad_id,
                    eos_token_id=eos,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
                for k, row in zip(rows, generated[:, input_ids.shape[1] :].tolist()):
                    out[k] = _cut(row, eos)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return out


def _eos_ids(model, tokenizer) -> list[int]:
    """End tokens: the model's generation config first (chat models end turns with their own)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "neither the model's generation_config nor the tokenizer has an eos_token_id: generation would have no end"
        )
    return [eos] if isinstance(eos, int) else list(eos)


def _pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask)``: new tokens then start in one column."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, s in enumerate(seqs):
        ids[k, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[k, width - len(s) :] = 1
    return ids, mask


def _cut(row: list[int], eos: list[int]) -> list[int]:
    """Drop the first end token and what follows it (padding of rows that finished early)."""
    for i, tok in enumerate(row):
        if tok in eos:
            return row[:i]
    return row
