"""``SafetyTrainer``: the same loss inside ``transformers.Trainer``, for people already on HF/TRL.

``compute_loss`` runs the reference (adapters disabled, or ``ref_model``), reads the risk, applies
the schedule and calls the fused op with ``reduction="sum"``, divided by HF's ``num_items_in_batch``
(the response-token count of the whole accumulated batch, so unequal micro-batches are exact).
The policy forward (:func:`policy_hidden`) goes through the (possibly DDP-wrapped) model with
``logits_to_keep=1`` and takes the final hidden states from a forward hook on the decoder, so neither
the full ``[tokens, vocab]`` logits nor every layer's hidden states are formed.

Differences from :func:`saferegx.train.train`: in ``batch`` schedule mode the EMA advances per
micro-batch (HF hands ``compute_loss`` one micro-batch at a time); FSDP/ZeRO-3 are not supported
(the LM head weight is read outside its module's forward).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers import Trainer

from ..lm import lm_head, unwrap
from ..loss import response_rows, risk_weighted_loss
from ..risk.critic import SafetyCritic
from ..risk.probe import Probe
from ..risk.schedule import RiskSchedule
from .batches import Batch, collate
from .model import reference_in_bf16, reference_pass
from .signals import RiskSource

_BATCH_FIELDS = [f.name for f in dataclasses.fields(Batch)]


def policy_hidden(
    model: nn.Module, policy: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(final hidden states [B, T, D], LM head weight [V, D])`` of the policy, with gradients.

    ``model`` is what the HF trainer hands ``compute_loss`` (possibly DDP-wrapped), ``policy`` the
    same model unwrapped (``accelerator.unwrap_model``). The call must go through ``model`` itself:
    DDP's ``forward`` is what prepares its reducer for the backward, so that the gradient hooks
    all-reduce every bucket; calling the decoder directly would skip it and leave each process with
    its own gradients. So ``model`` runs whole, with ``logits_to_keep=1`` (the head projects one
    position per sequence, ``[B, 1, V]``, which the loss ignores), and a forward hook on the decoder
    (the backbone, ending with the final norm) takes its output. ``output_hidden_states`` is not
    asked for, so no tuple of every layer's hidden states is built and kept. Raising from the hook
    to skip the head would skip DDP's post-forward step as well, hence the one-position head.
    """
    decoder = unwrap(policy).get_decoder()
    captured: list[torch.Tensor] = []

    def grab(_module, _args, output):
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = decoder.register_forward_hook(grab)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"the decoder of {type(unwrap(policy)).__name__} ran {len(captured)} times in one forward; expected once"
        )
    return captured[0], lm_head(policy).weight


class SafetyCollator:
    """Examples ``{"prompt", "response"[, "risk"]}`` -> the dict of a :class:`Batch` (``labels``
    already shifted; ``shift_labels`` tells HF to count them as they are)."""

    def __init__(self, tokenizer, max_length: int = 512):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples):
        batch = collate(self.tokenizer, examples, self.max_length)
        out = {k: getattr(batch, k) for k in _BATCH_FIELDS}
        out["shift_labels"] = batch.labels
        return out


class SafetyTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``alpha * CE + beta * KL(ref || policy)``.

    ``risk``: ``probe`` (give ``probe``), ``critic`` (give ``critic``), ``fixed`` (``beta``) or
    ``none``. The reference is the model with its adapters disabled (a ``PeftModel``) or
    ``ref_model`` (full fine-tuning). Use :class:`SafetyCollator` as the data collator.
    ``reference_precision``: as the trainer's config key (``auto``: bf16 where it is native).
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the global token count itself

    def __init__(
        self,
        *args,
        risk: str = "critic",
        probe: Probe | None = None,
        critic: SafetyCritic | None = None,
        beta: float = 0.5,
        schedule: RiskSchedule | None = None,
        kl: str = "forward",
        backend: str = "auto",
        ref_model: torch.nn.Module | None = None,
        reference_precision: str = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # Our columns (prompts, prompt_pos, risk) are not model.forward arguments; keep them.
        self.args.remove_unused_columns = False
        # Always have HF count num_items_in_batch over the accumulated micro-batches.
        self.model_accepts_loss_kwargs = True
        self.source = RiskSource(risk, probe=probe, critic=critic, fixed_beta=beta)
        self.schedule = schedule or RiskSchedule()
        self.kl, self.backend = kl, backend
        self.reference_bf16 = reference_in_bf16(reference_precision, self.args.device)
        self.ref_model = None if ref_model is None else ref_model.to(self.args.device).eval().requires_grad_(False)
        if self.source.needs_reference and ref_model is None and not hasattr(self.model, "disable_adapter"):
            raise ValueError("SafetyTrainer needs a reference: a PeftModel (adapters disabled) or ref_model=")
        if ref_model is None and hasattr(lm_head(self.model), "lora_A"):
            raise ValueError("LoRA on the LM head is not supported: policy and reference must share it")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = Batch(**{k: inputs[k] for k in _BATCH_FIELDS})
        loss, res, risk = micro_batch_loss(
            self, model, batch, self.schedule, num_items_in_batch, kl=self.kl, kl_gate=0.0, backend=self.backend
        )
        if return_outputs:
            return loss, {"ce": res.ce, "kl": res.kl, "risk": risk, "beta": res.beta}
        return loss


def micro_batch_loss(
    trainer: Trainer,
    model,
    batch: Batch,
    schedule: RiskSchedule,
    num_items_in_batch,
    *,
    kl: str,
    kl_gate: float,
    backend: str,
):
    """``(loss, terms, risk)`` of one micro-batch of an HF trainer (``SafetyTrainer``,
    ``saferegx.trl.SafeSFTTrainer``): the reference pass (its probe taps read the risk), the
    schedule, the policy's final hidden states and the shared ``risk_weighted_loss``, divided by the
    accumulated batch's token count (``num_items_in_batch``) so that accumulation is exact. The
    trainer gives ``source``, ``ref_model``, ``reference_bf16``, ``accelerator`` and ``args``."""
    policy = trainer.accelerator.unwrap_model(model)
    ref_hidden, taps = None, {}
    if trainer.source.needs_reference:
        ref_hidden, taps = reference_pass(
            policy, trainer.ref_model, batch, trainer.source.layers, trainer.reference_bf16
        )
    risk = trainer.source.risk(batch, taps)
    alpha, beta = trainer.source.weights(risk, batch.input_ids.shape[0], schedule, batch.input_ids.device)
    hidden, head = policy_hidden(model, policy, batch.input_ids, batch.attention_mask)
    rows, labels, seq = response_rows(hidden, batch.labels)
    res = risk_weighted_loss(
        rows,
        head,
        labels,
        None if ref_hidden is None else response_rows(ref_hidden, batch.labels)[0],
        seq,
        alpha,
        beta,
        ref_weight=None if trainer.ref_model is None else lm_head(trainer.ref_model).weight,
        kl=kl,
        kl_gate=kl_gate,
        reduction="sum",
        backend=backend,
    )
    n = num_items_in_batch if num_items_in_batch is not None else labels.numel()
    loss = res.loss / torch.as_tensor(n, device=res.loss.device).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes  # DDP averages gradients over processes
    return loss, res, risk


__all__ = ["SafetyCollator", "SafetyTrainer", "micro_batch_loss", "policy_hidden"]
