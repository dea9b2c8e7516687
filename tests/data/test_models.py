import pytest
import torch

from saferegx.data.models import DEFAULT_MODEL, default_model_path, load_model
from saferegx.lm import model_name

from _models import tiny_llama


def test_tiny_llama_is_small_and_deterministic():
    a, b = tiny_llama(seed=0), tiny_llama(seed=0)
    assert sum(p.numel() for p in a.parameters()) < 100_000
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert model_name(a) == "tiny-llama"


@pytest.mark.slow
def test_default_model_converted_from_gguf_works():
    path = default_model_path()
    assert (path / "model.safetensors").exists() and not (path / "config.json").read_text().count("gguf")
    model, tokenizer = load_model()
    assert model_name(model) == DEFAULT_MODEL
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # the weights survived the conversion: the model knows a fact
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
