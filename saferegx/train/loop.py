"""The training loop: read it top to bottom.

Before step 1 a pre-pass scores every example's risk (probe or critic) from its prompt alone
(prepass.py). One optimizer step = ``grad_accum`` micro-batches. For the whole step we first turn
the risk into per-sequence ``(alpha, beta)``, so that batch-mode beta is one value per optimizer
batch however it is split; with ``kl_gate`` a beta below the gate becomes 0. Then the frozen
reference runs (final hidden states for the KL) on the sequences whose beta is left, and only on
those. Then each micro-batch runs the policy to its final hidden states and the fused
op adds ``alpha * CE + beta * KL(ref || policy)`` over its response tokens (``reduction="sum"``),
divided by the response-token count of the *whole* step: unequal micro-batches then give exactly
the gradient of one big batch.

Under ``torchrun`` / ``accelerate launch`` each process takes its share of every micro-batch; the
token count, the batch-mode risk and the logged sums are all-reduced, and the loss is scaled by the
number of processes (DDP and FSDP average gradients), so the step is that of one process on the
same global batch. Only the main process writes logs and checkpoints (see distributed.py).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..lm import lm_head
from ..loss import gate, response_rows, risk_weighted_loss
from ..risk.critic import EmbeddingCritic, SafetyCritic, default_critic
from ..risk.probe import Probe
from ..risk.schedule import RiskSchedule
from . import checkpoint, distributed
from .batches import IGNORE_INDEX, DataOrder, collate, load_examples, tokenize
from .config import TrainConfig
from .metrics import MetricsLog
from .model import prepare, reference_in_bf16, reference_pass
from .prepass import example_risks
from .reference_cache import ReferenceCache
from .signals import RiskSource


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; the last good checkpoint is left in place."""


@dataclass
class TrainResult:
    history: list[dict]  # one record per optimizer step (as in metrics.jsonl)
    model: torch.nn.Module  # the trained policy (a PeftModel with LoRA)
    tokenizer: object
    output_dir: Path
    prepass_seconds: float = 0.0  # the risk pre-pass before step 1 (or reading its table)

    def save_adapter(self, out_dir: str | Path) -> Path:
        """``save_pretrained`` of the trained model: the LoRA adapter, or the full model. Under
        DDP/FSDP every process calls it (FSDP gathers the shards); the main process writes."""
        weights = distributed.full_weights(self.model) if distributed.sharded(self.model) else None
        if distributed.is_main():
            self.model.save_pretrained(str(out_dir), state_dict=weights)
            if not hasattr(self.model, "peft_config"):
                self.tokenizer.save_pretrained(str(out_dir))
        distributed.barrier()
        return Path(out_dir)


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then cosine towards 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train(cfg: TrainConfig, *, model=None, tokenizer=None, critic: SafetyCritic | None = None) -> TrainResult:
    """Fine-tune per ``cfg``. ``model``/``tokenizer`` default to ``cfg.model`` (None: the embedded
    SmolLM2); ``critic`` to ``cfg.critic`` (None: the embedded MiniLM critic)."""
    steps = train_steps(cfg, model=model, tokenizer=tokenizer, critic=critic)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def train_steps(cfg: TrainConfig, *, model=None, tokenizer=None, critic: SafetyCritic | None = None):
    """``train`` one optimizer step per ``next()``: yields each step's metrics record (as written to
    metrics.jsonl); the generator's return value (``StopIteration.value``) is the ``TrainResult``.
    For callers that run something between steps, e.g. several runs interleaved step by step so
    that a shared machine's drift hits them alike. Set-up (and its errors) comes with the first
    ``next()``."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = distributed.local_device(_device(cfg))
    mode = distributed.setup(cfg, device)  # joins the launcher's process group; "none" in one process
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    resume_from = checkpoint.latest(ckpt_root) if cfg.resume else None
    if not cfg.resume and checkpoint.latest(ckpt_root) is not None:
        raise ValueError(
            f"{ckpt_root} holds checkpoints of an earlier run: set resume: true to "
            "continue it, or choose another output_dir"
        )

    # --- data (every line checked before the model loads) --------------------------------------
    examples = load_examples(cfg.data)
    order = DataOrder(len(examples), cfg.batch_size, cfg.seed)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * order.batches_per_epoch / cfg.grad_accum)

    # --- model, reference, risk -------------------------------------------------------------
    if model is None:
        from ..data.models import load_model

        model, tokenizer = load_model(cfg.model)
    elif tokenizer is None:
        raise ValueError("train(model=...) needs its tokenizer too")
    probe = Probe.load(cfg.probe, model) if cfg.risk == "probe" else None
    if cfg.risk == "critic" and critic is None:
        critic = EmbeddingCritic.load(cfg.critic) if cfg.critic else default_critic()
    source = RiskSource(cfg.risk, probe=probe, critic=critic, fixed_beta=cfg.beta)
    examples = tokenize(examples, tokenizer, cfg.max_length)
    # The reference pass is frozen and only sets a KL target: bf16 costs ~3e-4 nats of KL per token
    # and makes it ~1.7x faster (the pass is a third of a plain LoRA step).
    ref_bf16 = cfg.bf16 or reference_in_bf16(cfg.reference_precision, device)

    # --- risk, before step 1: the model is still the reference; prompt tokens only -------------
    risk_of, t_prepass = None, time.perf_counter()  # [n] per example
    if cfg.risk in ("probe", "critic"):
        risk_of = example_risks(cfg, examples, model.to(device), tokenizer, source, bf16=ref_bf16)
    t_prepass = time.perf_counter() - t_prepass
    model, reference = prepare(model, cfg)
    model.to(device).train()
    if reference is not None:
        reference.to(device)
    policy = distributed.wrap(model, cfg, device)  # (hidden, head) in one call, under DDP/FSDP if launched
    ref_head = None if reference is None else lm_head(reference).weight
    schedule = RiskSchedule(cfg.beta_min, cfg.beta_max, cfg.schedule_mode, cfg.momentum, cfg.alpha)
    params = [p for p in model.parameters() if p.requires_grad]  # after wrap: FSDP swaps in shards
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=cfg.warmup_steps, total=total_steps)
    )
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    # --- resume -----------------------------------------------------------------------------
    step = 0
    if resume_from is not None:
        step = checkpoint.load(
            resume_from,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            order=order,
            schedule=schedule,
            config=cfg.to_dict(),
        )
    log = MetricsLog(
        out / "metrics.jsonl",
        step,
        Path(cfg.log_dir or out / "tensorboard") if cfg.tensorboard else None,
        write=distributed.is_main(),
    )
    save = partial(
        checkpoint.save,
        ckpt_root,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        order=order,
        schedule=schedule,
        config=cfg.to_dict(),
        keep=cfg.keep_checkpoints,
    )
    last_good = resume_from
    # Under FSDP the LoRA reference pass gathers shards with the other processes: all must run it,
    # once per micro-batch (on a stand-in sequence where none of theirs is gated in).
    collective_ref = mode == "fsdp" and reference is None
    cache = ReferenceCache(0 if collective_ref else cfg.reference_cache_mb)
    world = distributed.world_size()

    bar = tqdm(total=total_steps, initial=step, disable=not cfg.progress or not distributed.is_main(), desc="train")
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            batches = [order.next() for _ in range(cfg.grad_accum)]  # global micro-batches
            sizes = [len(distributed.shard(ids)) for ids in batches]  # this process's sequences
            # An empty share (a micro-batch with fewer examples than processes) runs one example
            # whose loss rows are dropped below: DDP and FSDP need every process in every pass.
            micro_ids = [distributed.shard(ids) or ids[:1] for ids in batches]
            micro = [collate(tokenizer, [examples[i] for i in ids], cfg.max_length).to(device) for ids in micro_ids]

            for k, n in enumerate(sizes):
                if n == 0:  # the stand-in example of an empty share: its loss rows are dropped
                    micro[k].labels.fill_(IGNORE_INDEX)

            # 1. risk (from the pre-pass) and weights for the whole optimizer batch, the gate
            risk = (
                None
                if risk_of is None
                else torch.cat([risk_of[ids[:n]] for ids, n in zip(micro_ids, sizes)]).to(device)
            )
            alpha, beta = source.weights(risk, sum(sizes), schedule, device, mean=distributed.mean)
            if beta is not None and cfg.kl_gate > 0:
                beta = gate(beta, cfg.kl_gate)

            # 2. reference pass, only for the gated-in sequences (stored after epoch 1)
            refs, ref_seconds = [], 0.0
            for k, (ids, batch) in enumerate(zip(micro_ids, micro)):
                if beta is None:
                    refs.append(None)
                    continue
                keep = list(range(sizes[k]))
                if cfg.kl_gate > 0:
                    keep = (beta[sum(sizes[:k]) : sum(sizes[: k + 1])] >= cfg.kl_gate).nonzero()[:, 0].tolist()
                rows = cache.lookup([ids[j] for j in keep])
                if rows is None and (keep or collective_ref):
                    t_ref = time.perf_counter()
                    sub = batch.select(keep or [0])
                    ref_hidden, _ = reference_pass(policy, reference, sub, (), ref_bf16)
                    ref_seconds += time.perf_counter() - t_ref
                    mask = sub.labels != IGNORE_INDEX
                    rows = ref_hidden[mask] if keep else ref_hidden[mask][:0]
                    if keep:
                        cache.store([ids[j] for j in keep], mask, ref_hidden)
                refs.append(rows)
            # the normalizer: response tokens of the whole step, in all processes
            n_tokens = int(distributed.all_reduce_sum(torch.tensor(sum(b.n_tokens for b in micro))))

            # 3. policy forward, fused loss over response tokens, backward
            optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(3, dtype=torch.float64)
            for k, (batch, ref_rows) in enumerate(zip(micro, refs)):
                with distributed.gradient_sync(policy, k == len(micro) - 1):
                    with autocast():
                        hidden, head = policy(batch.input_ids, batch.attention_mask)
                    rows, labels, seq = response_rows(hidden, batch.labels)
                    mine = slice(sum(sizes[:k]), sum(sizes[: k + 1]))  # its sequences in the step
                    res = risk_weighted_loss(
                        rows,
                        head,
                        labels,
                        ref_rows,
                        seq,
                        None if alpha is None else alpha[mine],
                        None if beta is None else beta[mine],
                        ref_weight=ref_head,
                        kl=cfg.kl,
                        kl_gate=cfg.kl_gate,
                        reduction="sum",
                        backend=cfg.backend,
                    )
                    # DDP and FSDP average gradients over processes: * world makes that the sum
                    (res.loss * world / n_tokens).backward()
                sums += res.totals()
            loss, ce, kl = (distributed.all_reduce_sum(sums) / n_tokens).tolist()
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"step {step + 1}: loss is {loss} (ce {ce}, kl {kl}); training stopped before "
                    f"the optimizer step. Last good checkpoint: {last_good or 'none'}. "
                    "Lower lr, check the data, or resume from the checkpoint."
                )

            # 4. clip (0: no clipping; the norm, of the global batch's gradient, is logged), step
            grad_norm = distributed.clip_grad_norm(params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1

            # 5. log and checkpoint
            seconds = time.perf_counter() - t0
            seen = distributed.all_reduce_sum(
                torch.tensor(sum(int(b.attention_mask[:n].sum()) for b, n in zip(micro, sizes)))
            )
            record = {
                "step": step,
                "epoch": order.epoch,
                "loss": loss,
                "ce": ce,
                "kl": kl,
                "risk": float("nan") if risk is None else distributed.mean(risk).item(),
                "beta": float("nan") if beta is None else distributed.mean(beta).item(),
                "gated_out": float("nan")
                if beta is None or cfg.kl_gate <= 0
                else distributed.mean((beta < cfg.kl_gate).float()).item(),
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": n_tokens,
                "tokens_per_s": int(seen) / seconds,
                "seconds": seconds,
                "ref_seconds": ref_seconds,  # of them, in the reference forward (0.0: it never ran)
            }
            log.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", kl=f"{kl:.4f}")
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total_steps:
                last_good = save(step)
            yield log.history[-1]
    finally:
        bar.close()
        log.close()
    return TrainResult(log.history, model, tokenizer, out, t_prepass)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"config key 'device' is {cfg.device!r} but CUDA is not available")
    if cfg.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("config key 'bf16' is true but this GPU does not support bf16")
    return device
