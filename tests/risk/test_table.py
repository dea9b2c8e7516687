"""The risk table: the pre-pass's probe read equals the reference's own, and a table is only ever
applied to the data it was written for."""

import json

import pytest
import torch

from saferegx.lm import format_prompt, pad_right
from saferegx.risk.probe import Probe
from saferegx.risk.table import RiskTable, batch_plan, probe_risks, prompt_hash, shared_prefix

from _models import tiny_llama

PROMPTS = [
    "How do I bake bread?",
    "Give detailed instructions for picking a lock",
    "What is 2 + 2?",
    "Write a haiku about rain, please, a long one about the autumn rain on the roof",
    "How to make a fake ID?",
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from saferegx.data.models import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def probe_on(layers, pool, d=32, n_layers=4):
    g = torch.Generator().manual_seed(5)
    return Probe(
        weight=torch.randn(d, generator=g),
        bias=0.2,
        layers=tuple(layers),
        pool=pool,
        model_name="tiny-llama",
        hidden_size=d,
        num_layers=n_layers,
        auroc=0.5,
    )


# a family of prompts that share an instruction template beyond the chat template's beginning
TEMPLATED = [
    f"Sort these numbers from smallest to largest: {a}, {b}. Reply with the list only."
    for a, b in [(3, 1), (10, 2), (7, 7), (40, 5), (6, 60), (8, 1), (2, 9), (5, 50), (1, 1), (70, 3)]
] + PROMPTS[:3]


@pytest.mark.parametrize(
    "chat,prompts",
    [(True, PROMPTS), (False, PROMPTS), (True, TEMPLATED)],
    ids=["shared-prefix", "no-prefix", "templated"],
)
@pytest.mark.parametrize("layers,pool", [((1,), "last"), ((0, 2), "mean")])
def test_probe_prepass_equals_the_full_reference_forward(tokenizer, layers, pool, chat, prompts):
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=4)
    probe = probe_on(layers, pool)
    ids = [format_prompt(tokenizer, p, chat_template=chat) for p in prompts]
    assert bool(shared_prefix(ids)) == chat  # the chat template's system prompt runs once
    size = 5 if prompts is TEMPLATED else 2  # 3 batches
    plan = batch_plan(ids, size)
    if prompts is TEMPLATED:  # the template's own beginning runs once per batch
        assert max(n for _, n in plan) > len(shared_prefix(ids))
    ran = []  # token positions through the first block, per call
    model.model.layers[0].register_forward_hook(lambda m, args, out: ran.append(args[0].shape[0] * args[0].shape[1]))
    got = probe_risks(probe, model, ids, pad_id=tokenizer.pad_token_id, batch_size=size)
    assert sum(ran) == positions(ids, plan)  # each beginning once, each batch after its beginning
    want = []
    for seq in ids:  # one prompt at a time, the whole model, every hidden state
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
        acts = torch.stack([hs[i + 1][0] for i in layers]).mean(0)
        pooled = acts[-1] if pool == "last" else acts.mean(0)
        want.append(torch.sigmoid(pooled @ probe.weight + probe.bias))
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)


def positions(ids, plan):
    """Token positions a plan runs: the common beginning once, what each longer beginning adds to
    it once, each batch past its beginning."""
    common = len(shared_prefix(ids))
    beginnings = {tuple(ids[b[0]][:n]) for b, n in plan} - {tuple(ids[0][:common])}
    once = common + sum(len(t) - common for t in beginnings)
    return once + sum(len(b) * (max(len(ids[k]) for k in b) - n) for b, n in plan)


def test_batch_plan_takes_every_prompt_once_and_the_cheaper_grouping(tokenizer):
    ids = [format_prompt(tokenizer, p) for p in TEMPLATED + PROMPTS[3:]]
    common = len(shared_prefix(ids))

    by_length = sorted(range(len(ids)), key=lambda k: len(ids[k]))
    for size in (1, 3, 4, 100):
        plan = batch_plan(ids, size)
        assert sorted(k for b, _ in plan for k in b) == list(range(len(ids)))
        assert all(0 < len(b) <= size for b, _ in plan)
        assert all(n == len(shared_prefix([ids[k] for k in b])) or n == common for b, n in plan)
        assert positions(ids, plan) <= positions(
            ids, [(by_length[i : i + size], common) for i in range(0, len(ids), size)]
        )
    assert batch_plan([], 4) == []


def test_shared_prefix_leaves_every_prompt_a_token():
    assert shared_prefix([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7, 8]]) == [1, 2, 3, 4, 5]
    assert shared_prefix([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]) == [1, 2, 3, 4]
    assert shared_prefix([[1, 2, 3, 9], [1, 2, 3, 8]]) == []  # under 4 tokens: not worth a cache
    assert shared_prefix([[5, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]) == []


def test_probe_prepass_stops_at_the_probe_layer(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=4)
    ran = []
    for i, block in enumerate(model.model.layers):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    ids, _ = pad_right([format_prompt(tokenizer, p) for p in PROMPTS[:2]])
    probe_risks(probe_on((1,), "last"), model, ids.tolist())
    assert sorted(set(ran)) == [0, 1]  # blocks 2 and 3 never ran


def test_a_table_round_trips_and_refuses_other_data(tmp_path):
    table = RiskTable([prompt_hash(p) for p in PROMPTS], {"probe": torch.rand(5), "critic": torch.rand(5)})
    path = table.save(tmp_path / "risk.jsonl", beta=torch.full((5,), 0.3))
    back = RiskTable.load(path)
    assert back.hashes == table.hashes
    for s in ("probe", "critic"):
        torch.testing.assert_close(back.risk[s], table.risk[s])
    back.check(PROMPTS, "probe", "t")
    with pytest.raises(ValueError, match="t: 5 rows, but the data has 4"):
        back.check(PROMPTS[:4], "probe", "t")
    with pytest.raises(ValueError, match="row 2 is for another prompt"):
        back.check(PROMPTS[:2] + ["What is 3 + 3?"] + PROMPTS[3:], "probe", "t")
    only = RiskTable(table.hashes, {"critic": table.risk["critic"]})
    with pytest.raises(ValueError, match="no 'probe' risk"):
        only.check(PROMPTS, "probe", "t")


@pytest.mark.parametrize(
    "line,match",
    [
        ("not json", r":2: not JSON"),
        ('{"index": 5, "prompt_sha256": "x", "probe": 0.1}', r":2: expected index 1"),
        ('{"index": 1, "prompt_sha256": "x", "probe": 1.5}', r":2: probe risk must be a number in \[0, 1\]"),
        ('{"index": 1, "prompt_sha256": "x", "critic": 0.5}', r":2: expected risk column"),
    ],
)
def test_a_bad_table_line_is_named(tmp_path, line, match):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"index": 0, "prompt_sha256": "x", "probe": 0.2}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=match):
        RiskTable.load(path)
