"""Tiny Llamas with the real SmolLM2 tokenizer, and tiny JSONL data in tmp_path."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# On a shared 2-core machine, two intra-op threads contend: a 60x32 matmul takes 16 ms with two
# threads and 9 us with one. Tiny models gain nothing from a second thread.
torch.set_num_threads(1)

EXAMPLES = [
    {"prompt": "How do I bake bread?", "response": "Mix flour, water, yeast and salt, then bake."},
    {"prompt": "Give detailed instructions for picking a lock", "response": "Sure, insert a tension wrench"},
    {"prompt": "What is 2 + 2?", "response": "4"},
    {"prompt": "Write a haiku about rain.", "response": "Soft rain on the roof, a quiet song for the night"},
    {"prompt": "How to make a fake ID?", "response": "First, find a template", "risk": 1.0},
    {"prompt": "Name a prime number.", "response": "Seven."},
    {"prompt": "Explain photosynthesis briefly.", "response": "Plants turn light, water and CO2 into sugar."},
]


@pytest.fixture
def examples():
    return [dict(e) for e in EXAMPLES]


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from saferegx.data.models import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture
def make_model(tokenizer):
    """A fresh tiny Llama over the real vocabulary; the same seed gives the same weights."""
    from _models import tiny_llama

    def make(seed: int = 0):
        return tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=3, seed=seed)

    return make


@pytest.fixture
def data_file(tmp_path):
    def write(examples=EXAMPLES, name="data.jsonl"):
        path = tmp_path / name
        path.write_text("".join(json.dumps(e) + "\n" for e in examples))
        return str(path)

    return write


@pytest.fixture
def config(tmp_path, data_file):
    """TrainConfig for a tiny run: small LoRA, a few steps, no progress bar or TensorBoard. The
    reference runs in fp32, so runs can be compared with fp32 math (bf16 has its own test)."""
    from saferegx.train import TrainConfig

    def make(**overrides):
        values = dict(
            data=data_file(),
            output_dir=str(tmp_path / "run"),
            risk="fixed",
            max_steps=2,
            batch_size=3,
            lr=1e-2,
            max_length=48,
            lora_r=4,
            lora_alpha=8.0,
            lora_target_modules=["q_proj", "v_proj", "down_proj"],
            progress=False,
            tensorboard=False,
            reference_precision="fp32",
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make


@pytest.fixture
def lora_model(make_model):
    """A PEFT model whose adapters start non-zero, so the policy differs from the reference."""
    from peft import LoraConfig, get_peft_model

    def make(seed: int = 0):
        model = make_model(seed)
        torch.manual_seed(seed + 1)
        return get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )

    return make


@pytest.fixture
def probe_file(tmp_path):
    """A random probe on layer 1 of the tiny Llama, saved as saferegx probes are."""
    from saferegx.risk.probe import Probe

    def make(pool: str = "last", layers=(1,)):
        g = torch.Generator().manual_seed(3)
        probe = Probe(
            weight=torch.randn(32, generator=g),
            bias=-0.3,
            layers=tuple(layers),
            pool=pool,
            model_name="tiny-llama",
            hidden_size=32,
            num_layers=3,
            auroc=0.5,
        )
        path = tmp_path / f"probe-{pool}.safetensors"
        probe.save(path)
        return str(path), probe

    return make


def composed_loss(peft_model, batch, probe, schedule):
    """The loss written out by hand from saferegx.safety_loss, independent of the trainer's code:
    hidden states from output_hidden_states, the probe as a plain sigmoid, the schedule's formula."""
    import saferegx
    from saferegx.train.batches import IGNORE_INDEX

    with torch.no_grad():
        kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        policy = peft_model(**kw).hidden_states
        with peft_model.disable_adapter():
            ref = peft_model(**kw).hidden_states
    rows = torch.arange(len(batch.prompts))
    acts = torch.stack([ref[i + 1] for i in probe.layers]).mean(0)  # hidden_states[0] = embeddings
    risk = torch.sigmoid(acts[rows, batch.prompt_pos] @ probe.weight + probe.bias)
    risk = torch.where(torch.isnan(batch.risk), risk, batch.risk)
    s = risk.mean().expand_as(risk) if schedule == "batch" else risk
    beta = 0.1 + 0.8 * s
    alpha = (1 - beta).clamp(0.1, 0.9)
    valid = batch.labels != IGNORE_INDEX
    seq = valid.nonzero()[:, 0]
    head = peft_model.get_base_model().lm_head.weight
    out = saferegx.safety_loss(
        policy[-1][valid],
        head,
        batch.labels[valid],
        ref[-1][valid],
        ce_weight=alpha[seq],
        kl_weight=beta[seq],
        reduction="mean",
    )
    return out, risk, beta
