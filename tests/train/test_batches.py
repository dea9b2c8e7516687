"""Chat tokenization, label masks, last-prompt positions, truncation and the resumable order."""

import json

import pytest
import torch

from saferegx.lm import format_prompt
from saferegx.train.batches import IGNORE_INDEX, DataOrder, collate, encode, load_examples


def test_labels_cover_exactly_the_response_and_eos(tokenizer, examples):
    batch = collate(tokenizer, examples[:3], max_length=256)
    assert batch.input_ids.shape[0] == 3
    for b, ex in enumerate(examples[:3]):
        prompt = format_prompt(tokenizer, ex["prompt"])  # the ids the probe was fitted on
        response = tokenizer(ex["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(response)
        assert batch.input_ids[b, :n].tolist() == prompt + response
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert batch.prompt_pos[b] == len(prompt) - 1
        assert tokenizer.decode(batch.input_ids[b, batch.prompt_pos[b]]) == "\n"  # end of "assistant\n"
        # label t = token t + 1, on response tokens only: the last prompt token predicts the first
        labelled = (batch.labels[b] != IGNORE_INDEX).nonzero()[:, 0].tolist()
        assert labelled == list(range(len(prompt) - 1, n - 1))
        assert batch.labels[b, labelled].tolist() == response
    assert batch.n_tokens == sum(
        len(tokenizer(e["response"], add_special_tokens=False)["input_ids"]) + 1 for e in examples[:3]
    )
    assert torch.isnan(batch.risk).all()
    assert collate(tokenizer, [examples[4]], 64).risk.tolist() == [1.0]


def test_truncation_keeps_the_prompt_end_and_some_response(tokenizer):
    long_prompt = "please " * 200 + "tell me a joke"
    long_response = "ha " * 200
    full, n_full = encode(tokenizer, long_prompt, long_response, 10_000)
    ids, n_prompt = encode(tokenizer, long_prompt, long_response, 40)
    assert len(ids) == 40 and n_prompt == 20
    assert ids[:n_prompt] == full[n_full - 20 : n_full]  # the prompt's end, assistant header included
    assert ids[n_prompt:] == full[n_full : n_full + 20]  # the response's start
    short, n_short = encode(tokenizer, long_prompt, "ok", 40)  # a short response keeps all of itself
    ok = tokenizer("ok", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(short) == 40 and short[n_short:] == ok


def test_data_order_is_seeded_and_resumes_exactly():
    a, b = DataOrder(7, 3, seed=1), DataOrder(7, 3, seed=1)
    first = [a.next() for _ in range(8)]
    assert first == [b.next() for _ in range(8)]
    assert [len(x) for x in first[:3]] == [3, 3, 1]  # the last micro-batch of an epoch is smaller
    assert sorted(sum(first[:3], [])) == list(range(7))  # an epoch sees each example once
    assert first[:3] != first[3:6]  # epochs reshuffle
    assert DataOrder(7, 3, seed=2).next() != first[0]
    c = DataOrder(7, 3, seed=1)
    for _ in range(4):
        c.next()
    d = DataOrder(7, 3, seed=1)
    d.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert [d.next() for _ in range(4)] == first[4:]
    with pytest.raises(ValueError, match="batch size"):
        DataOrder(7, 2, seed=1).load_state_dict(c.state_dict())


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "x"}', "'response' must be a string"),
        ('{"prompt": "x", "response": "y", "risk": 2}', "'risk' must be a number in"),
        ('{"prompt": "x", "response": "y", "label": 1}', "unknown field"),
        ("not json", "not JSON"),
    ],
)
def test_bad_examples_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        load_examples(path)
    assert f"{path}:2" in str(err.value)


def test_missing_and_empty_data_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=f"data file {tmp_path / 'nope.jsonl'} does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=f"no examples in {empty}"):
        load_examples(empty)
