"""``SafeSFTTrainer``: TRL's ``SFTTrainer`` with saferegx's risk-adaptive loss, a drop-in.

A plain TRL script becomes a saferegx one by its import, its two class names and the risk settings::

    from saferegx.trl import SafeSFTConfig, SafeSFTTrainer   # was: from trl import SFTConfig, SFTTrainer
    args = SafeSFTConfig(output_dir="out", risk="probe", probe="probe.safetensors")

Everything TRL does before the loss stays TRL's: model loading, ``peft_config``, tokenization,
truncation, the completion-only labels, the collator, the optimizer. The datasets TRL users have
work as they are: prompt/completion (plain text or conversational) and conversational ``messages``,
which are split into prompt = the conversation up to its last assistant turn and completion = that
turn, so the loss covers the completion's tokens only and each sequence has a prompt to judge.
An optional ``risk`` column (a number in [0, 1] or None) overrides the probe or critic per example,
as in saferegx's own data.

``compute_loss`` is saferegx's: the frozen reference (the PEFT model with its adapters disabled, or
``ref_model=`` for full fine-tuning) runs once, the risk is read at each sequence's last prompt
token (the first label marks the prompt boundary: TRL's completion mask, folded into the labels),
the schedule gives per-sequence ``(alpha, beta)``, and :func:`saferegx.loss.risk_weighted_loss`
adds ``alpha * CE + beta * KL(ref || policy)`` over the completion tokens with ``reduction="sum"``,
divided by HF's ``num_items_in_batch`` (the completion tokens of the whole accumulated batch, over
all processes), so unequal micro-batches give the gradient of one big batch. ``ce``, ``kl``,
``risk`` and ``beta`` are logged with TRL's other metrics, averaged over each logging interval
(``ce``/``kl`` per completion token, ``risk``/``beta`` per sequence).

Differences from :func:`saferegx.train.train`: in ``batch`` schedule mode the EMA advances per
micro-batch (HF hands ``compute_loss`` one micro-batch at a time), the reference runs on every
sequence (also those below ``kl_gate``), there is no reference cache, and packing, padding-free
batches and FSDP/ZeRO-3 are refused or unsupported (the loss needs whole sequences and reads the
LM head weight outside its module's forward). Evaluation reports the loss; no logits are returned
for ``compute_metrics``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from trl import SFTConfig, SFTTrainer
from trl.data_utils import get_dataset_column_names

from .lm import lm_head, unwrap
from .ops import library, registry
from .risk.critic import SafetyCritic
from .risk.probe import Probe
from .risk.schedule import ALPHAS, MODES, RiskSchedule
from .train.batches import IGNORE_INDEX, Batch
from .train.config import REFERENCE_PRECISIONS, RISK_SOURCES
from .train.hf import micro_batch_loss
from .train.model import LORA_HEAD_MESSAGE, reference_in_bf16
from .train.signals import RiskSource

PROMPT_TEXT = "saferegx_prompt"  # the dataset column holding each example's prompt text (the critic's input)
RISK = "risk"  # an optional dataset column: a given risk per example (None: not given)
_STATS = ("ce", "kl", "tokens", "risk", "risk_n", "beta", "beta_n")  # summed per logging interval


@dataclass
class SafeSFTConfig(SFTConfig):
    """``SFTConfig`` plus saferegx's risk, schedule and KL settings, named as in
    :class:`saferegx.train.TrainConfig` (see there and docs/risk.md). Bad values raise ValueError
    naming the field."""

    risk: str = field(
        default="critic",
        metadata={"help": "probe | critic (risk-adaptive beta, the paper) | fixed (constant beta) | none (plain SFT)"},
    )
    probe: str | None = field(default=None, metadata={"help": "probe file from `saferegx probe fit`, for risk: probe"})
    critic: str | None = field(
        default=None, metadata={"help": "EmbeddingCritic file for risk: critic; None = the embedded default critic"}
    )
    beta: float = field(default=0.5, metadata={"help": "the constant beta of risk: fixed"})
    beta_min: float = field(default=0.1, metadata={"help": "beta at risk 0"})
    beta_max: float = field(default=0.9, metadata={"help": "beta at risk 1"})
    schedule_mode: str = field(
        default="batch", metadata={"help": "batch (one beta per micro-batch from its mean risk, the paper) | sequence"}
    )
    momentum: float = field(default=0.0, metadata={"help": "EMA of the batch risk (batch mode)"})
    alpha: str = field(default="clamp", metadata={"help": "clamp | complement | one"})
    kl: str = field(default="forward", metadata={"help": "forward (KL(ref || policy), the paper's code) | reverse"})
    kl_gate: float = field(default=0.0, metadata={"help": "a beta below it trains with beta 0 (0 = off)"})
    reference_precision: str = field(
        default="auto",
        metadata={"help": "of the frozen reference pass: auto (bf16 where matmuls are native bf16) | bf16 | fp32"},
    )
    backend: str = field(default="auto", metadata={"help": "of the loss op: auto | cpu | triton | cuda | unfused"})

    def __post_init__(self):
        check_config(self)  # before TRL's own checks: a typo here is reported first
        super().__post_init__()


def check_config(cfg: SafeSFTConfig) -> None:
    """Refuse (ValueError naming the field) values saferegx cannot train with."""

    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ValueError(f"SafeSFTConfig field {key!r} {what}, got {getattr(cfg, key)!r}")

    def number(key: str):
        value = getattr(cfg, key)
        need(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            key,
            "must be a number",
        )

    choices = {
        "risk": RISK_SOURCES,
        "schedule_mode": MODES,
        "alpha": ALPHAS,
        "kl": tuple(library.KL_MODES),
        "reference_precision": REFERENCE_PRECISIONS,
        "backend": registry.CHOICES,
    }
    for key, allowed in choices.items():
        need(getattr(cfg, key) in allowed, key, f"must be one of {', '.join(allowed)}")
    for key in ("beta", "beta_min", "beta_max", "kl_gate", "momentum"):
        number(key)
    for key in ("beta", "beta_min", "beta_max", "kl_gate"):
        need(0.0 <= getattr(cfg, key) <= 1.0, key, "must be in [0, 1]")
    need(0.0 <= cfg.momentum < 1.0, "momentum", "must be in [0, 1)")
    need(cfg.beta_min <= cfg.beta_max, "beta_max", f"must be >= beta_min ({cfg.beta_min})")
    need(cfg.probe is None or isinstance(cfg.probe, (str, Path)), "probe", "must be a file path or None")
    need(cfg.risk != "probe" or cfg.probe is not None, "probe", "must name a probe file when risk is 'probe'")
    need(cfg.critic is None or isinstance(cfg.critic, (str, Path)), "critic", "must be a file path or None")
    # The loss needs whole sequences with a prompt before the completion:
    need(not cfg.packing, "packing", "is not supported (each sequence needs its own prompt and risk)")
    need(not cfg.padding_free, "padding_free", "is not supported (each sequence needs its own prompt and risk)")
    need(
        cfg.completion_only_loss is not False,
        "completion_only_loss",
        "must be True or None: the loss covers the completion and the risk is read at the prompt's end",
    )


def as_prompt_completion(dataset, name: str = "train"):
    """``dataset`` in TRL's prompt/completion format with a prompt-text column for the critic.

    Conversational ``messages`` become ``prompt`` = every turn before the last assistant turn and
    ``completion`` = that turn. A pre-tokenized dataset (``input_ids`` with ``labels``) is left as it
    is; a plain ``text`` dataset has no prompt to judge and is refused.
    """
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {key: as_prompt_completion(d, key) for key, d in dataset.items()}
    columns = get_dataset_column_names(dataset) or list(next(iter(dataset)))  # an IterableDataset may not know
    if "input_ids" in columns:
        if "labels" not in columns:
            raise ValueError(
                f"the {name} dataset is tokenized but has no 'labels': SafeSFTTrainer needs "
                "-100 on the prompt tokens to find each prompt's end"
            )
        return dataset
    if "messages" in columns:
        kw = {"desc": f"Splitting {name} messages into prompt/completion"} if hasattr(dataset, "num_rows") else {}
        return dataset.map(_split_messages, remove_columns=["messages"], **kw)
    if "prompt" in columns and "completion" in columns:
        kw = {"desc": f"Reading the {name} prompts"} if hasattr(dataset, "num_rows") else {}
        return dataset.map(lambda ex: {PROMPT_TEXT: prompt_text(ex["prompt"])}, **kw)
    raise ValueError(
        f"the {name} dataset has columns {columns}: SafeSFTTrainer needs prompt/completion "
        "or conversational 'messages' (a prompt to judge before each completion)"
    )


def _split_messages(example: dict) -> dict:
    messages = example["messages"]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError(f"a conversation has no assistant turn to train on: {messages!r}")
    last = turns[-1]
    if last != len(messages) - 1:
        raise ValueError(
            "a conversation ends with a non-assistant turn; the completion is the last "
            f"assistant turn and nothing may follow it: {messages[last + 1 :]!r}"
        )
    prompt = messages[:last]
    return {"prompt": prompt, "completion": [messages[last]], PROMPT_TEXT: prompt_text(prompt)}


def prompt_text(prompt) -> str:
    """The text the critic judges: a plain prompt, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"]
    if not users:
        return ""
    content = users[-1]["content"]
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _named(datasets):
    if datasets is None or isinstance(datasets, str):
        return []
    return list(datasets.items()) if isinstance(datasets, dict) else [("eval", datasets)]


class SafetyCollatorWrapper:
    """Around TRL's collator: keeps the prompt text and the given risk of each example, and adds
    ``shift_labels`` (label ``t`` = token ``t + 1``), which HF counts for ``num_items_in_batch``."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        prompts = [ex.get(PROMPT_TEXT) or "" for ex in examples]
        risks = [ex.get(RISK) for ex in examples]
        out = self.collator([{k: v for k, v in ex.items() if k not in (PROMPT_TEXT, RISK)} for ex in examples])
        labels = out["labels"]
        out["shift_labels"] = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], 1)
        out[PROMPT_TEXT] = prompts
        out[RISK] = torch.tensor([math.nan if r is None else float(r) for r in risks], dtype=torch.float32)
        return out


def trainer_batch(inputs: dict) -> Batch:
    """The saferegx :class:`Batch` of a collated micro-batch: shifted labels, the last prompt token
    (the position before the first label), the given risks and the prompt texts."""
    labels = inputs["shift_labels"]
    valid = labels != IGNORE_INDEX
    prompt_pos = valid.int().argmax(1)  # the first labelled position predicts the first completion token
    n = labels.shape[0]
    risk = inputs.get(RISK)
    if risk is None:
        risk = torch.full((n,), math.nan)
    return Batch(
        inputs["input_ids"],
        inputs["attention_mask"],
        labels,
        prompt_pos,
        risk.to(labels.device, torch.float32),
        list(inputs.get(PROMPT_TEXT) or [""] * n),
        [],
    )


class SafeSFTTrainer(SFTTrainer):
    """``trl.SFTTrainer`` whose loss is ``alpha * CE + beta * KL(safe reference || policy)``.

    Takes every argument of ``SFTTrainer`` (``args`` a :class:`SafeSFTConfig`), plus ``ref_model``
    (a model or its path: the frozen reference for full fine-tuning; with ``peft_config`` or a
    ``PeftModel`` the reference is the model with its adapters disabled) and ``critic`` (a
    :class:`~saferegx.risk.critic.SafetyCritic` object, instead of ``args.critic``).
    """

    _tag_names = ["trl", "sft", "saferegx"]
    _name = "SafeSFT"
    loss_is_scaled_for_ga = True  # compute_loss divides by the global token count itself

    def __init__(
        self,
        model,
        args: SafeSFTConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *rest,
        ref_model: nn.Module | str | None = None,
        critic: SafetyCritic | None = None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = SafeSFTConfig(f"{str(name).split('/')[-1]}-SafeSFT")
        elif not isinstance(args, SafeSFTConfig):
            values = args.to_dict()
            values["hub_token"] = args.hub_token  # to_dict hides it
            values.pop("push_to_hub_token", None)
            args = SafeSFTConfig(**values)
        train_dataset = as_prompt_completion(train_dataset, "train")
        eval_dataset = as_prompt_completion(eval_dataset, "eval")
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, *rest, **kwargs)
        self.data_collator = SafetyCollatorWrapper(self.data_collator)
        self.model_accepts_loss_kwargs = True  # HF counts num_items_in_batch over the accumulated batch
        policy = unwrap(self.model)

        probe = None
        if args.risk == "probe":
            if not Path(args.probe).is_file():
                raise ValueError(f"SafeSFTConfig field 'probe': no probe file at {args.probe!r}")
            probe = Probe.load(args.probe, policy)
        if args.risk == "critic" and critic is None:
            from .risk.critic import EmbeddingCritic, default_critic

            critic = EmbeddingCritic.load(args.critic) if args.critic else default_critic()
        self.source = RiskSource(args.risk, probe=probe, critic=critic, fixed_beta=args.beta)
        self.schedule = RiskSchedule(args.beta_min, args.beta_max, args.schedule_mode, args.momentum, args.alpha)
        # As saferegx's loop: bf16 training runs the reference in bf16 too (it only sets the KL
        # target and the probe's input); otherwise reference_precision decides.
        self.reference_bf16 = bool(args.bf16) or reference_in_bf16(args.reference_precision, self.args.device)

        if isinstance(ref_model, str):
            from transformers import AutoModelForCausalLM

            ref_model = AutoModelForCausalLM.from_pretrained(ref_model)
        self.ref_model = None if ref_model is None else ref_model.to(self.args.device).eval().requires_grad_(False)
        if self.source.needs_reference and self.ref_model is None and not hasattr(self.model, "disable_adapter"):
            raise ValueError(
                "SafeSFTTrainer needs a safe reference: pass peft_config= (or a PeftModel), whose "
                "adapters disabled are the reference, or ref_model= for full fine-tuning"
            )
        if self.ref_model is None and hasattr(lm_head(self.model), "lora_A"):
            raise ValueError(LORA_HEAD_MESSAGE)
        zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
        if self.is_fsdp_enabled or zero3:
            raise ValueError(
                "SafeSFTTrainer does not support FSDP or DeepSpeed ZeRO-3: the fused loss reads "
                "the LM head weight outside its module's forward, where it is sharded"
            )
        if args.risk == "critic":
            for name, data in [("train", self.train_dataset)] + list(_named(self.eval_dataset)):
                if PROMPT_TEXT not in (get_dataset_column_names(data) or [PROMPT_TEXT]):
                    raise ValueError(
                        f"risk 'critic' needs the prompts' text, which the pre-tokenized {name} "
                        "dataset lacks: give prompt/completion or messages"
                    )
        self._stats = {mode: torch.zeros(len(_STATS), dtype=torch.float64) for mode in ("train", "eval")}
        self._stat_batches = {"train": 0, "eval": 0}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if eval_dataset is not None and not isinstance(eval_dataset, str):  # a str names a prepared one
            eval_dataset = as_prompt_completion(eval_dataset, "eval")
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for column in (PROMPT_TEXT, RISK):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        batch = trainer_batch(inputs)
        # evaluation must not advance the batch-mode EMA of training
        schedule = self.schedule if mode == "train" else copy.copy(self.schedule)
        loss, res, risk = micro_batch_loss(
            self,
            model,
            batch,
            schedule,
            num_items_in_batch,
            kl=self.args.kl,
            kl_gate=self.args.kl_gate,
            backend=self.args.backend,
        )
        self._record(mode, res, res.ce.numel(), risk, res.beta, inputs)
        if return_outputs:
            return loss, {"ce": res.ce, "kl": res.kl, "risk": risk, "beta": res.beta}
        return loss

    def _record(self, mode, res, n_rows, risk, beta, inputs):
        totals = res.totals()  # [loss, sum CE, sum KL]
        stats = self._stats[mode]
        stats[0] += totals[1]
        stats[1] += totals[2]
        stats[2] += n_rows
        if risk is not None:
            stats[3] += float(risk.double().sum())
            stats[4] += risk.numel()
        if beta is not None:
            stats[5] += float(beta.double().sum())
            stats[6] += beta.numel()
        self._stat_batches[mode] += 1
        if mode == "train":  # as SFTTrainer: the tokens seen, over all processes
            seen = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += seen // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if self._stat_batches[mode]:  # every process has run the same number of micro-batches
            stats = self._stats[mode]
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats.to(self.accelerator.device), "sum").cpu()
            ce, kl, tokens, risk, risk_n, beta, beta_n = stats.tolist()
            prefix = "eval_" if mode == "eval" else ""
            logs[prefix + "ce"] = ce / max(tokens, 1.0)
            logs[prefix + "kl"] = kl / max(tokens, 1.0)
            if risk_n:
                logs[prefix + "risk"] = risk / risk_n
            if beta_n:
                logs[prefix + "beta"] = beta / beta_n
            self._stats[mode].zero_()
            self._stat_batches[mode] = 0
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss only: the fused op forms no logits to hand ``compute_metrics``."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


__all__ = ["SafeSFTConfig", "SafeSFTTrainer", "as_prompt_completion", "check_config", "trainer_batch"]
