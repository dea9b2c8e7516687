"""A tiny random-init Llama for unit tests: the same code paths as SmolLM2, in milliseconds."""

import torch


def tiny_llama(vocab_size: int = 256, hidden_size: int = 32, num_layers: int = 4, num_heads: int = 4, seed: int = 0):
    """A random-init Llama small enough for unit tests (same code paths as SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    config.name_or_path = "tiny-llama"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
