"""The reference cache: the frozen reference runs once per example, and reusing it changes nothing."""

import pytest
import torch

import saferegx.train.loop as loop
from saferegx.train import train
from saferegx.train.batches import IGNORE_INDEX
from saferegx.train.reference_cache import ReferenceCache

FIELDS = ("loss", "ce", "kl", "risk", "beta")


@pytest.fixture
def counted_reference_pass(monkeypatch):
    """The real reference pass, counting the sequences it runs."""
    seen = []
    real = loop.reference_pass

    def counting(policy, reference, batch, *args, **kwargs):
        seen.append(batch.input_ids.shape[0])
        return real(policy, reference, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "reference_pass", counting)
    return seen


@pytest.mark.parametrize("risk", ["probe", "fixed"])
def test_cached_run_equals_uncached_and_runs_the_reference_once_per_example(
    config, tokenizer, lora_model, probe_file, examples, counted_reference_pass, risk
):
    path, _ = probe_file("last")
    common = dict(risk=risk, probe=path, epochs=3, max_steps=None, batch_size=3, schedule_mode="sequence")
    off = train(
        config(reference_cache_mb=0, output_dir=str(config().output_dir) + "-off", **common),
        model=lora_model(),
        tokenizer=tokenizer,
    ).history
    runs_off = sum(counted_reference_pass)
    counted_reference_pass.clear()
    on = train(config(**common), model=lora_model(), tokenizer=tokenizer).history
    assert runs_off == 3 * len(examples)
    assert sum(counted_reference_pass) == len(examples)  # epoch 1 only
    assert len(on) == len(off) == 9
    assert off[-1]["kl"] > 0  # the policy moved: the cached reference is really compared against it
    for a, b in zip(off, on):
        for f in FIELDS:
            if a[f] is None:  # no risk or beta under this source
                assert b[f] is None
            else:
                assert a[f] == pytest.approx(b[f], rel=1e-5, abs=1e-7), (a["step"], f)


def test_lookup_needs_every_example_and_returns_rows_in_batch_order():
    cache = ReferenceCache(limit_mb=1)
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    rows = labels != IGNORE_INDEX
    cache.store([10, 11], rows, hidden)
    assert cache.lookup([10, 12]) is None
    ref = cache.lookup([11, 10])
    torch.testing.assert_close(ref, torch.cat([hidden[1][rows[1]], hidden[0][rows[0]]]))
    full = cache.lookup([10, 11])
    torch.testing.assert_close(full, hidden[rows])  # what the loss reads without a cache


def test_entries_over_the_limit_are_not_stored():
    row_bytes = 256 * 4
    cache = ReferenceCache(limit_mb=3 * row_bytes / 2**20)  # room for three rows
    hidden = torch.zeros(4, 1, 256)
    cache.store([0, 1, 2, 3], torch.ones(4, 1, dtype=torch.bool), hidden)
    assert len(cache) == 3 and cache.bytes == 3 * row_bytes
    assert cache.lookup([3]) is None and cache.lookup([0, 2]) is not None
