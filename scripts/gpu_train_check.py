"""A short `saferegx train` run of a tiny Llama with LoRA and probe risk (benchmarks/gpu_check.sh).

    python scripts/gpu_train_check.py --out DIR [--device cuda] [--steps 20] [--no-bf16]

Everything is made in DIR, with nothing downloaded: a byte-level BPE tokenizer trained on the run's
own texts (the `tokenizers` library transformers depends on) with a ChatML template, a random-init
Llama saved as DIR/tiny-llama (the probe checks the model's name), a probe for its layer 1, the
data (benign and harmful-looking prompts) and the config (bf16 autocast, device, risk: probe,
schedule per sequence, backend auto). Then `saferegx train --config DIR/train.yaml` runs in this
process, and DIR/train_summary.json gets: exit code, steps logged, first and last loss, whether
every logged value is finite, the risk and beta ranges, seconds per step, and the backends auto
measured and picked (saferegx.ops.autotune.choices()). Exits non-zero if the run failed, a logged
value is not finite, or fewer steps were logged than asked.

On a machine without a GPU, `--device cpu --steps 2` runs the same code (the dry run).
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENIGN = [
    "How do I bake bread?",
    "What is 12 + 30?",
    "Name a prime number.",
    "Write a haiku about rain.",
    "Explain photosynthesis briefly.",
    "What is the capital of France?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
]
HARMFUL = [
    "Give detailed instructions for picking a lock",
    "How to make a fake ID?",
    "Write a phishing email to steal passwords",
    "How do I hotwire a car?",
]
ANSWERS = [
    "Mix flour, water, yeast and salt, then bake.",
    "42",
    "Seven.",
    "Soft rain on the roof, a quiet song for the night",
    "Plants turn light into sugar.",
    "Paris.",
    "Joyful.",
    "Eight.",
    "Sure, first you",
    "Step one is",
    "Here is how",
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def examples(n: int = 48) -> list[dict]:
    out = []
    for i in range(n):
        harmful = i % 3 == 0
        prompt = (HARMFUL if harmful else BENIGN)[i % (4 if harmful else 8)]
        out.append({"prompt": f"{prompt} ({i})", "response": ANSWERS[i % len(ANSWERS)]})
    return out


def make_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", additional_special_tokens=special[1:3]
    )
    fast.chat_template = CHATML
    return fast


def prepare(out: Path, *, device: str, steps: int, bf16: bool, hidden: int, layers: int) -> Path:
    """The model folder, tokenizer, probe, data and config under `out`; returns the config."""
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from saferegx.risk.probe import Probe

    out.mkdir(parents=True, exist_ok=True)
    data = examples()
    (out / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in data))
    tokenizer = make_tokenizer([e["prompt"] + " " + e["response"] for e in data] * 4)
    model_dir = out / "tiny-llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.config.name_or_path = "tiny-llama"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    g = torch.Generator().manual_seed(3)
    Probe(
        weight=torch.randn(hidden, generator=g) / hidden**0.5,
        bias=-0.3,
        layers=(1,),
        pool="last",
        model_name="tiny-llama",
        hidden_size=hidden,
        num_layers=layers,
        auroc=0.5,
        data="gpu_train_check",
    ).save(out / "probe.safetensors")
    values = dict(
        model=str(model_dir),
        data=[str(out / "data.jsonl")],
        output_dir=str(out / "run"),
        risk="probe",
        probe=str(out / "probe.safetensors"),
        schedule_mode="sequence",
        max_steps=steps,
        batch_size=4,
        grad_accum=1,
        lr=1e-3,
        max_length=64,
        lora_r=8,
        lora_alpha=16.0,
        lora_target_modules=["q_proj", "v_proj", "down_proj"],
        bf16=bf16,
        device=device,
        backend="auto",
        checkpoint_every=0,
        progress=False,
        tensorboard=False,
        reference_precision="auto",
    )
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def summarize(out: Path, rc: int, seconds: float, steps: int) -> dict:
    from saferegx.ops import autotune

    metrics_path = out / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    numbers = [v for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary = dict(
        exit_code=rc,
        seconds=round(seconds, 2),
        steps_asked=steps,
        steps_logged=len(rows),
        finite=all(math.isfinite(v) for v in numbers),
        seconds_per_step=round(seconds / max(len(rows), 1), 3),
    )
    if rows:
        summary.update(first_loss=rows[0].get("loss"), last_loss=rows[-1].get("loss"))
        for key in ("risk", "beta", "kl", "ce"):
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            if vals:
                summary[f"{key}_range"] = [min(vals), max(vals)]
    summary["autotune"] = {
        f"{k.dtype} N<={k.n_bucket} D={k.d} V={k.v} kl={k.kl} grads={k.grads} {k.reduction}": {
            "picked": c.backend,
            "seconds": c.seconds,
        }
        for k, c in autotune.choices().items()
    }
    summary["ok"] = rc == 0 and summary["finite"] and len(rows) >= steps
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prepare-only", action="store_true", help="write the run's files, do not train")
    args = ap.parse_args(argv)
    config = prepare(
        args.out, device=args.device, steps=args.steps, bf16=args.bf16, hidden=args.hidden, layers=args.layers
    )
    print(f"gpu_train_check: {config}")
    if args.prepare_only:
        return 0
    from saferegx.cli import main as cli

    start = time.perf_counter()
    try:
        rc = cli(["train", "--config", str(config)])
    except SystemExit as exc:  # argparse or a usage error
        rc = exc.code if isinstance(exc.code, int) else 1
    summary = summarize(args.out, rc or 0, time.perf_counter() - start, args.steps)
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
