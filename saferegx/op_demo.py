"""An end-to-end example of the fused op on the embedded model and real harmful prompts.

A few steps of fine-tuning SmolLM2-135M-Instruct's last decoder layer on a mixed batch: harmful
HarmBench prompts paired with compliant answers (the attack) and benign prompts with helpful ones.
Each sequence's risk comes from its source (1 harmful, 0 benign; the activation probe of the risk
module replaces this label in the trainer), sets beta = 0.1 + 0.8 s, alpha = 1 - beta, and the
fused op computes risk-weighted CE + forward KL to the frozen start model. The first step is also
run through the unfused reference to show both agree; the table shows the harmful rows being held
near the reference (small KL, slow CE drop) while the benign rows train.
"""
from __future__ import annotations

import time

import torch

import saferegx
from saferegx.data.models import load_model
from saferegx.data.prompts import benign_prompts, harmful_prompts

IGNORE = -100


def _batch(tokenizer, prompts, answers):
    """Chat-formatted prompt+answer ids, labels on answer tokens only (already shifted)."""
    rows, labels = [], []
    for prompt, answer in zip(prompts, answers):
        chat = [{"role": "user", "content": prompt}]
        p_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        if not isinstance(p_ids, list):  # newer transformers return a BatchEncoding
            p_ids = p_ids["input_ids"]
        a_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = p_ids + a_ids
        rows.append(ids)
        labels.append([IGNORE] * (len(p_ids) - 1) + a_ids + [IGNORE])  # label t = token t+1
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    label_t = torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels])
    return input_ids, mask, label_t


def run(steps: int = 6, per_side: int = 6, lr: float = 3e-4, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    model, tokenizer = load_model()
    model.requires_grad_(False)
    trained = model.model.layers[-1]
    trained.requires_grad_(True)
    harmful = harmful_prompts(("harmbench",))[:per_side]
    benign = benign_prompts(per_side, seed=seed)
    answers = [f"Sure, here is exactly how to do it. Step 1: {p.split()[0].lower()} ..." for p in harmful]
    answers += [f"Happy to help. Here is a clear answer about {p.split()[-1].strip('?.')}." for p in benign]
    input_ids, mask, labels = _batch(tokenizer, harmful + benign, answers)
    risk = torch.tensor([1.0] * len(harmful) + [0.0] * len(benign))
    beta_seq = 0.1 + 0.8 * risk
    tokens = labels.numel()
    beta = beta_seq[:, None].expand_as(labels).reshape(-1)
    alpha = 1.0 - beta
    flat_labels = labels.reshape(-1)
    harm_rows = (risk[:, None].expand_as(labels).reshape(-1) == 1) & (flat_labels != IGNORE)
    benign_rows = (risk[:, None].expand_as(labels).reshape(-1) == 0) & (flat_labels != IGNORE)
    with torch.no_grad():  # the frozen safe reference: the model before any update
        ref_hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    ref_hidden = ref_hidden.reshape(tokens, -1)
    head = model.lm_head.weight  # tied to the embeddings, frozen: dL/dh only
    opt = torch.optim.AdamW(trained.parameters(), lr=lr)

    def loss_of(backend):
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return saferegx.safety_loss(hidden.reshape(tokens, -1), head, flat_labels, ref_hidden,
                                    ce_weight=alpha, kl_weight=beta, backend=backend)

    # Step 0 through both backends: same loss, same gradients.
    grads = {}
    for backend in ("reference", "cpu"):
        opt.zero_grad()
        out = loss_of(backend)
        out.loss.backward()
        grads[backend] = (out.loss.item(), [p.grad.clone() for p in trained.parameters()])
    loss_diff = abs(grads["cpu"][0] - grads["reference"][0])
    grad_err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                   for a, b in zip(grads["cpu"][1], grads["reference"][1]))
    print(f"step 0, fused vs unfused: |loss diff| = {loss_diff:.2e}, max rel grad err = {grad_err:.2e}")

    history = []
    for step in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        out = loss_of("cpu")
        out.loss.backward()
        opt.step()
        history.append({
            "step": step, "loss": out.loss.item(), "seconds": time.perf_counter() - t0,
            "ce_harmful": out.ce[harm_rows].mean().item(), "ce_benign": out.ce[benign_rows].mean().item(),
            "kl_harmful": out.kl[harm_rows].mean().item(), "kl_benign": out.kl[benign_rows].mean().item(),
        })
    return history


def main(steps: int = 6) -> None:
    print("saferegx op demo: SmolLM2-135M-Instruct, last layer trained, HarmBench vs benign prompts")
    print("risk 1 (harmful) -> beta 0.9, alpha 0.1; risk 0 (benign) -> beta 0.1, alpha 0.9")
    history = run(steps)
    print("| step | loss | CE harmful | CE benign | KL harmful | KL benign | s/step |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for h in history:
        print(f"| {h['step']} | {h['loss']:.4f} | {h['ce_harmful']:.3f} | {h['ce_benign']:.3f} | "
              f"{h['kl_harmful']:.4f} | {h['kl_benign']:.4f} | {h['seconds']:.2f} |")
