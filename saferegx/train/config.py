"""TrainConfig: every knob of a training run, loaded from YAML and checked before any work starts.

A typo in a config file should cost a second, not an hour of training with a default: unknown
keys, wrong types and out-of-range values raise one ValueError that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..ops import registry

RISK_SOURCES = ("probe", "critic", "fixed", "none")
REFERENCE_PRECISIONS = ("auto", "bf16", "fp32")  # of the frozen reference pass (see model.reference_in_bf16)
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """A training run. ``risk`` picks the regularizer: ``probe`` / ``critic`` (risk-adaptive beta,
    the paper), ``fixed`` (constant ``beta``, constrained SFT), ``none`` (plain SFT, CE only)."""

    data: list[str]  # JSONL file(s) of {"prompt", "response"[, "risk"]}
    model: str | None = None  # HF folder; None = the embedded SmolLM2-135M-Instruct
    output_dir: str = "runs/train"
    # what trains
    finetune: str = "lora"  # lora | full
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    # optimization
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 = no clipping
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 4  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 512
    seed: int = 0
    # risk and schedule
    risk: str = "critic"
    probe: str | None = None  # probe file (saferegx probe fit), for risk: probe
    critic: str | None = None  # EmbeddingCritic file; None = the embedded default critic
    beta: float = 0.5  # for risk: fixed
    beta_min: float = 0.1
    beta_max: float = 0.9
    schedule_mode: str = "batch"  # batch (paper) | sequence
    momentum: float = 0.0  # EMA of the batch risk (batch mode)
    alpha: str = "clamp"  # clamp | complement | one
    kl: str = "forward"  # forward (paper's code) | reverse
    kl_gate: float = 0.0  # beta below it -> 0 and no reference work (0 = off)
    risk_table: str | None = None  # risk.jsonl from `saferegx audit`, instead of the pre-pass
    backend: str = "auto"  # of the loss op: auto | cpu | triton | cuda | unfused
    reference_cache_mb: float = 2048.0  # reuse reference hidden states/risk after epoch 1; 0 = off
    reference_precision: str = "auto"  # auto (bf16 where the hardware has bf16 matmuls) | bf16 | fp32
    # machinery
    device: str = "auto"  # auto | cpu | cuda[:N] (launched: cuda = cuda:LOCAL_RANK)
    distributed: str = "auto"  # auto (ddp when launched with >1 process) | ddp | fsdp | none
    bf16: bool = False  # bf16 autocast for the transformer (the loss stays fp32)
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 2
    resume: bool = False
    tensorboard: bool = True
    log_dir: str | None = None  # TensorBoard folder; None = <output_dir>/tensorboard
    progress: bool = True  # tqdm bar

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        _check_types(self)
        _check_values(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        if not isinstance(values, dict):
            raise ValueError(f"config must be a mapping of keys to values, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"unknown config key {key!r}")
        if "data" not in values:
            raise ValueError("config key 'data' is required (JSONL file or list of files)")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        with open(path, encoding="utf-8") as f:
            try:
                values = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: not valid YAML ({e})") from None
        return cls.from_dict(values or {})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_types(cfg: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _is_instance(value, hints[f.name]):
            raise ValueError(
                f"config key {f.name!r} must be {_type_name(hints[f.name])}, got {type(value).__name__} {value!r}"
            )
        if hints[f.name] is float and isinstance(value, int):
            setattr(cfg, f.name, float(value))


def _is_instance(value, tp) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    raise TypeError(f"unsupported config type {tp}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else tp.__name__


def _check_values(cfg: TrainConfig) -> None:
    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ValueError(f"config key {key!r} {what}, got {getattr(cfg, key)!r}")

    need(len(cfg.data) > 0, "data", "must name at least one JSONL file")
    choices = {
        "finetune": ("lora", "full"),
        "risk": RISK_SOURCES,
        "schedule_mode": ("batch", "sequence"),
        "alpha": ("clamp", "complement", "one"),
        "kl": ("forward", "reverse"),
        "backend": registry.CHOICES,
        "distributed": ("auto", "ddp", "fsdp", "none"),
        "reference_precision": REFERENCE_PRECISIONS,
    }
    for key, allowed in choices.items():
        need(getattr(cfg, key) in allowed, key, f"must be one of {', '.join(allowed)}")
    for key in ("lora_r", "epochs", "batch_size", "grad_accum", "keep_checkpoints"):
        need(getattr(cfg, key) >= 1, key, "must be >= 1")
    need(cfg.max_length >= 2, "max_length", "must be >= 2")
    need(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", "must be >= 1 or null")
    for key in ("warmup_steps", "checkpoint_every", "seed"):
        need(getattr(cfg, key) >= 0, key, "must be >= 0")
    need(cfg.lr > 0, "lr", "must be > 0")
    for key in ("weight_decay", "max_grad_norm", "lora_alpha", "reference_cache_mb"):
        need(getattr(cfg, key) >= 0, key, "must be >= 0")
    need(0.0 <= cfg.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
    need(0.0 <= cfg.momentum < 1.0, "momentum", "must be in [0, 1)")
    for key in ("beta", "beta_min", "beta_max", "kl_gate"):
        need(0.0 <= getattr(cfg, key) <= 1.0, key, "must be in [0, 1]")
    need(cfg.beta_min <= cfg.beta_max, "beta_max", f"must be >= beta_min ({cfg.beta_min})")
    need(cfg.risk != "probe" or cfg.probe is not None, "probe", "must name a probe file when risk is 'probe'")
    need(
        cfg.risk_table is None or cfg.risk in ("probe", "critic"),
        "risk_table",
        "needs risk: probe or critic (the table holds their risk)",
    )
    need(
        cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
        "device",
        "must be auto, cpu or cuda[:N]",
    )
    need(bool(cfg.lora_target_modules), "lora_target_modules", "must not be empty")
    need(
        not any(m in ("lm_head",) or m.endswith(".lm_head") for m in cfg.lora_target_modules),
        "lora_target_modules",
        "must not include lm_head: the reference (adapters disabled) shares "
        "the LM head with the policy, so the fused loss reads W once",
    )
