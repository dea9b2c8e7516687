"""Activation probe: a calibrated logistic read of a decoder layer's hidden state.

Causal attention means the hidden state at the last prompt token has seen only the prompt, so the
probe gives a pre-generation risk. Training reads it from the frozen reference pass, which runs
anyway for the KL; this module fits the probe, stores it (safetensors with JSON metadata, no
pickle) and refuses to apply it to a model it was not fitted on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import lm
from ..lm import decoder_layers, format_prompt, last_positions, layer_outputs, pad_right
from ..ops import probe_risk
from .logistic import fit_logistic, platt
from .metrics import auroc

POOLS = ("last", "mean")


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """``[B, T, D]`` -> ``[B, D]`` fp32: the last prompt token, or the masked mean over it."""
    if pool == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_positions(attention_mask)].float()
    if pool == "mean":
        m = attention_mask.to(torch.float32)[..., None]
        return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


def pooled_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Sequence[int],
    pool: str | tuple[str, ...] = "last",
):
    """Pooled outputs ``[len(layers), B, D]`` (fp32) of the given decoder layers, from a forward
    that stops at the deepest of them. With a tuple of pools, one forward serves them all:
    returns ``{pool: [len(layers), B, D]}``."""
    pools = (pool,) if isinstance(pool, str) else tuple(pool)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    taps = layer_outputs(model, input_ids, attention_mask, layers)
    stacked = {p: torch.stack([pool_hidden(taps[i], attention_mask, p) for i in layers]) for p in pools}
    return stacked[pool] if isinstance(pool, str) else stacked


def prompt_activations(
    model,
    tokenizer,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    pool: str | tuple[str, ...] = "last",
    batch_size: int = 16,
    max_length: int = 128,
    chat_template: bool = True,
    bf16: bool = False,
    progress: bool = False,
):
    """Pooled hidden states ``[len(layers), N, D]`` of prompts (all layers by default); with a
    tuple of pools, ``{pool: [len(layers), N, D]}`` from the same forward passes.

    Prompts longer than ``max_length`` tokens keep their end, where the last prompt token is.
    Batches group prompts of similar length so that little compute goes to padding.
    ``bf16``: the forward under bf16 autocast, as the trainer's reference pass reads the probe
    (where the hardware has bf16 matmuls); the pooled states stay fp32. ``progress``: a tqdm bar
    on stderr.
    """
    layers = list(range(len(decoder_layers(model)))) if layers is None else list(layers)
    seqs = [format_prompt(tokenizer, p, chat_template)[-max_length:] for p in prompts]
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    pools = (pool,) if isinstance(pool, str) else tuple(pool)
    out = {p: torch.empty(len(layers), len(seqs), model.config.hidden_size) for p in pools}
    with tqdm(total=len(seqs), desc="activations", unit="prompt", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_right([seqs[k] for k in idx], pad_id)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                got = pooled_hidden(model, ids.to(device), mask.to(device), layers, pools)
            for p in pools:
                out[p][:, idx] = got[p].cpu()
            bar.update(len(idx))
    return out[pool] if isinstance(pool, str) else out


@dataclass
class Probe:
    """A calibrated linear probe: ``risk = sigmoid(mean_{l in layers} pooled_l @ weight + bias)``."""

    weight: torch.Tensor  # [D] fp32, calibration folded in
    bias: float
    layers: tuple[int, ...]
    pool: str
    model_name: str
    hidden_size: int
    num_layers: int
    auroc: float  # validation AUROC of the chosen layer(s)
    data: str = ""  # what it was fitted on
    sweep: list[dict] = field(default_factory=list)  # validation AUROC per candidate

    def risk(self, acts: torch.Tensor) -> torch.Tensor:
        """Risk in [0, 1] of pooled activations ``[..., D]``."""
        return torch.sigmoid(acts.float() @ self.weight.to(acts.device) + self.bias)

    def read(self, model, tokenizer, prompts: Sequence[str], **kwargs) -> torch.Tensor:
        """Risk ``[N]`` of prompts, read from ``model`` (checked to be the one fitted on)."""
        self.check(model)
        acts = prompt_activations(model, tokenizer, prompts, self.layers, self.pool, **kwargs)
        return self.risk(acts.mean(0))

    def check(self, model) -> None:
        """Raise ``ValueError`` unless ``model`` is the model this probe was fitted on."""
        self._check(lm.model_name(model), model.config.hidden_size, len(decoder_layers(model)))

    def _check(self, name: str | None, hidden_size: int | None, num_layers: int | None) -> None:
        if name is not None and name != self.model_name:
            raise ValueError(f"probe was fitted on model {self.model_name!r}, not {name!r}")
        if hidden_size is not None and hidden_size != self.hidden_size:
            raise ValueError(f"probe expects hidden size {self.hidden_size}, model has {hidden_size}")
        if num_layers is not None and num_layers != self.num_layers:
            raise ValueError(f"probe expects {self.num_layers} layers, model has {num_layers}")

    def save(self, path: str | Path) -> None:
        """One safetensors file; the metadata travels as JSON in its header."""
        from safetensors.torch import save_file

        meta = {k: v for k, v in asdict(self).items() if k != "weight"}
        save_file(
            {"weight": self.weight.float().contiguous()}, str(path), metadata={"saferegx.probe": json.dumps(meta)}
        )

    @classmethod
    def load(
        cls, path: str | Path, model=None, *, model_name: str | None = None, hidden_size: int | None = None
    ) -> Probe:
        """Load a probe, refusing (``ValueError``) one fitted on another model."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get("saferegx.probe")
            if header is None:
                raise ValueError(f"{path}: not a saferegx probe (no 'saferegx.probe' metadata)")
            weight = f.get_tensor("weight")
        meta = json.loads(header)
        meta["layers"] = tuple(meta["layers"])
        probe = cls(weight=weight, **meta)
        if weight.shape != (probe.hidden_size,):
            raise ValueError(f"{path}: weight shape {tuple(weight.shape)} != ({probe.hidden_size},)")
        if model is not None:
            probe.check(model)
        probe._check(model_name, hidden_size, None)
        return probe


def fit_probe(
    acts: torch.Tensor,
    labels: torch.Tensor,
    layers: Sequence[int],
    *,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    model_name: str,
    num_layers: int,
    pool: str = "last",
    candidates: Sequence[Sequence[int]] | None = None,
    l2: float = 1e-2,
    data: str = "",
) -> Probe:
    """Sweep candidates (single layers by default, or ranges averaged), keep the best by validation
    AUROC, and Platt-calibrate it on the validation split.

    ``acts`` is ``[len(layers), N, D]`` as from ``prompt_activations``; labels are 1 = harmful.
    """
    layers = list(layers)
    candidates = [(layer,) for layer in layers] if candidates is None else [tuple(c) for c in candidates]
    labels = labels.flatten()
    best, sweep = None, []
    for cand in candidates:
        x = acts[[layers.index(layer) for layer in cand]].mean(0).double()
        w, b = fit_logistic(x[train_idx], labels[train_idx], l2=l2)
        val_logits = x[val_idx] @ w + b
        score = auroc(val_logits, labels[val_idx])
        sweep.append({"layers": list(cand), "auroc": score})
        if best is None or score > best[0]:
            best = (score, cand, w, b, val_logits)
    score, cand, w, b, val_logits = best
    a, c = platt(val_logits, labels[val_idx])
    return Probe(
        weight=(a * w).float(),
        bias=float(a * b + c),
        layers=tuple(cand),
        pool=pool,
        model_name=model_name,
        hidden_size=acts.shape[-1],
        num_layers=num_layers,
        auroc=score,
        data=data,
        sweep=sweep,
    )


def read_probe(probe: Probe, taps: dict[int, torch.Tensor], prompt_pos: torch.Tensor) -> torch.Tensor:
    """Risk ``[B]`` of each sequence's prompt from decoder-block outputs ``taps`` (``{layer:
    [B, T, D]}``): ``sigmoid(w . pooled + b)`` over the probe's layer(s) averaged, the prompt
    ending at ``prompt_pos [B]``.

    ``last`` gathers the last prompt token inside the op; ``mean`` averages the prompt's tokens
    (not the response's: the risk must be known before the answer) and reads that one row.
    """
    acts = torch.stack([taps[i] for i in probe.layers]).mean(0)
    weight = probe.weight.to(acts.device)
    if probe.pool == "last":
        return probe_risk(acts, prompt_pos, weight, probe.bias)
    t = torch.arange(acts.shape[1], device=acts.device)
    prompt_mask = (t[None, :] <= prompt_pos[:, None]).long()
    pooled = pool_hidden(acts, prompt_mask, "mean")[:, None, :]
    return probe_risk(pooled, torch.zeros_like(prompt_pos), weight, probe.bias)
