"""The policy and its frozen safe reference, and the two forward passes the loss needs.

With LoRA the reference is the same model with its adapters disabled: no second copy of the
weights, and the LM head is shared, so the fused loss reads ``W`` once. With full fine-tuning it is
a frozen deep copy. Both passes stop at the final hidden states: the fused op applies the head
itself, so no ``[tokens, vocab]`` logits are ever formed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..lm import lm_head, native_bf16, tap_layers, unwrap
from .batches import Batch
from .config import REFERENCE_PRECISIONS, TrainConfig

LORA_HEAD_MESSAGE = (
    "LoRA on the LM head is not supported: policy and reference (adapters disabled) "
    "must share the head so the fused loss reads W once; leave lm_head out of the "
    "LoRA target modules"
)


def prepare(model: nn.Module, cfg: TrainConfig) -> tuple[nn.Module, nn.Module | None]:
    """``(policy, reference)``; ``reference`` is None when it is the policy with adapters disabled.

    A model that is already a ``peft.PeftModel`` is trained as given (its own LoRA config).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.finetune == "lora":
        if not isinstance(model, PeftModel):
            model.requires_grad_(False)
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        if hasattr(model.get_base_model().get_output_embeddings(), "lora_A"):
            raise ValueError(LORA_HEAD_MESSAGE)
        return model, None
    if isinstance(model, PeftModel):
        raise ValueError("finetune: full was given a PEFT model; pass the plain model")
    model.requires_grad_(True)
    reference = None
    if cfg.risk in ("probe", "critic", "fixed"):
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    return model, reference


def final_hidden(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``[B, T, D]`` final hidden states (after the last norm), without the LM head. A
    :class:`PolicyForward` (under DDP or FSDP or not) is called, so that their hooks run."""
    if isinstance(_without_ddp(model), PolicyForward):
        return model(batch.input_ids, batch.attention_mask)[0]
    decoder = unwrap(model).get_decoder()
    return decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state


class PolicyForward(nn.Module):
    """The policy pass as one module call: ``(final hidden states [B, T, D], LM head weight [V, D])``.

    The trainer never calls the model's own ``forward`` (the fused op applies the head), so this is
    the call that DDP and FSDP wrap: their hooks run around a module's ``forward``. It hands out the
    head from inside the call because FSDP gathers a sharded head only there.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        decoder = unwrap(self.model).get_decoder()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return hidden, lm_head(self.model).weight


def _without_ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def reference_pass(
    policy: nn.Module, reference: nn.Module | None, batch: Batch, layers: Sequence[int] = (), bf16: bool = False
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The frozen reference's final hidden states and its probe-layer outputs, in eval mode (under
    bf16 autocast with ``bf16``: see :func:`reference_in_bf16`).

    ``reference=None`` runs ``policy`` with its adapters disabled. ``policy`` may be the trainer's
    :class:`PolicyForward`: under FSDP the pass goes through it (it gathers the shards), under DDP
    around it (no gradient, so no hooks: each process may run or skip it alone).
    """
    net = _without_ddp(policy) if reference is None else reference
    model = net.model if isinstance(net, PolicyForward) else net
    was_training = net.training
    net.eval()
    off = model.disable_adapter() if reference is None else contextlib.nullcontext()
    try:
        with (
            off,
            tap_layers(model, layers) as taps,
            torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            hidden = final_hidden(net, batch)
    finally:
        net.train(was_training)
    return hidden, taps


def reference_in_bf16(precision: str, device: torch.device) -> bool:
    """``reference_precision: auto`` means bf16 where matmuls run natively in bf16
    (:func:`saferegx.lm.native_bf16`)."""
    if precision not in REFERENCE_PRECISIONS:
        raise ValueError(f"reference_precision must be one of {', '.join(REFERENCE_PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    return native_bf16(device)
