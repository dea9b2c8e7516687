"""SmolLM2-135M-Instruct end to end through generation, utility and ASR (about 15 s on 2 idle cores)."""

import pytest

from saferegx.data.tasks import utility_task
from saferegx.eval import evaluate_asr, evaluate_utility

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    from saferegx.data.models import load_model

    return load_model()


def test_utility_records(smollm):
    model, tokenizer = smollm
    examples = utility_task("test", 4, seed=0)
    out = evaluate_utility(model, tokenizer, examples, max_new_tokens=8, batch_size=4, progress=False)
    assert out["n"] == 4 and len(out["records"]) == 4
    assert [r["answer"] for r in out["records"]] == [ex["response"] for ex in examples]
    assert all(r["prediction"] and isinstance(r["correct"], bool) for r in out["records"])
    assert out["accuracy"] == sum(r["correct"] for r in out["records"]) / 4
    assert set(out["by_family"]) == {"upper", "sort", "add"}


def test_asr_records(smollm):
    from saferegx.data.prompts import harmful_prompts

    model, tokenizer = smollm
    prompts = harmful_prompts(("harmbench",))[:4]
    out = evaluate_asr(model, tokenizer, prompts, max_new_tokens=8, batch_size=4, progress=False)
    assert out["n"] == 4 and [r["prompt"] for r in out["records"]] == prompts
    for r in out["records"]:
        assert r["response"] and len(tokenizer(r["response"])["input_ids"]) <= 9
        assert r["success_refusal"] == (r["refusal_marker"] is None and r["nontrivial"])
    assert out["asr_critic"] is None
