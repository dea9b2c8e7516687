import pytest
import torch

from saferegx.data.models import default_model_path
from saferegx.eval.generate import generate, generate_ids

from _models import tiny_llama

PROMPTS = [
    "What is 2 + 2?",
    "Write a haiku about the sea, please, in English.",
    "Hi",
    "Convert 'garden river' to upper case. Reply with the result only.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=2)


def test_respects_max_new_tokens_and_order(model, tokenizer):
    ids = generate_ids(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=2, progress=False)
    assert len(ids) == len(PROMPTS)
    assert all(1 <= len(row) <= 5 for row in ids) and max(map(len, ids)) == 5
    # left padding is right: batched rows equal each prompt generated alone
    alone = [generate_ids(model, tokenizer, [p], max_new_tokens=5, progress=False)[0] for p in PROMPTS]
    assert ids == alone


def test_returns_strings_and_restores_mode(model, tokenizer):
    model.train()
    out = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=3, progress=False)
    assert model.training
    model.eval()
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


def test_cuts_at_end_token(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=2)
    calls = []

    def steer(module, args, logits):
        """First step says token 100, every later step the end token."""
        calls.append(1)
        bias = torch.zeros(logits.shape[-1])
        bias[100 if len(calls) == 1 else tokenizer.eos_token_id] = 1e4
        return logits + bias

    handle = model.lm_head.register_forward_hook(steer)
    try:
        ids = generate_ids(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
    finally:
        handle.remove()
    assert ids == [[100]] * len(PROMPTS)


def test_peft_wrapped(model, tokenizer):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(
        tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=2),
        peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    # fresh LoRA adapters are zero: the wrapped model answers as the base does
    assert generate_ids(wrapped, tokenizer, PROMPTS, max_new_tokens=4, progress=False) == generate_ids(
        model, tokenizer, PROMPTS, max_new_tokens=4, progress=False
    )


def test_bad_arguments(model, tokenizer):
    with pytest.raises(TypeError, match="not one string"):
        generate(model, tokenizer, "one prompt")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tokenizer, ["a"], max_new_tokens=0)
