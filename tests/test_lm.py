"""saferegx.lm: the decoder blocks found by structure, the last attended token, a forward stopped
at a layer (the prompt-prefix cache is checked in tests/risk/test_table.py)."""

import pytest
import torch

from saferegx.lm import decoder_layers, last_positions, layer_outputs, lm_head

from _models import tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_layers=4)


def test_decoder_layers_found_by_structure(model):
    assert decoder_layers(model) is model.model.layers
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    assert decoder_layers(gpt2) is gpt2.transformer.h
    with pytest.raises(ValueError, match="decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_decoder_layers_through_peft(model):
    import peft

    wrapped = peft.get_peft_model(tiny_llama(num_layers=2), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert len(decoder_layers(wrapped)) == 2


def test_last_positions_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_positions(right).tolist() == [2, 3, 0]
    assert last_positions(left).tolist() == [3, 3, 3]


def test_layer_outputs_stop_at_the_deepest_layer_and_equal_the_full_forward(model):
    ran = []
    handles = [b.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, b in enumerate(model.model.layers)]
    ids = torch.randint(0, 256, (2, 7))
    mask = torch.ones_like(ids)
    try:
        taps = layer_outputs(model, ids, mask, [0, 2])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1, 2] and set(taps) == {0, 2}
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(taps[2], full[3])


def test_lm_head_is_the_output_projection(model):
    assert lm_head(model) is model.lm_head
