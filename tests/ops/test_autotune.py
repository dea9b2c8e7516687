"""backend="auto"'s measured pick (saferegx.ops.autotune), exercised on CPU.

On CUDA auto times `triton` against `cuda`; here the real candidates are the C++ `cpu` kernel
and the `unfused` one, timed by perf_counter with the API's own run_fn (forward + backward
on the caller's inputs). CPU auto itself never measures: it is always `cpu`.
"""

import collections
import time

import pytest
import torch

import saferegx
from saferegx.ops import api, autotune

from _problems import assert_close, make_problem, oracle, run

pytestmark = pytest.mark.skipif("cpu" not in saferegx.available_backends(), reason="C++ extension not built")

CANDIDATES = ["cpu", "unfused"]


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv(autotune.ENV, raising=False)
    autotune.clear()
    yield
    autotune.clear()


class Counting:
    """run_fn wrapper that counts the calls per backend."""

    def __init__(self, fn):
        self.fn, self.calls = fn, collections.Counter()

    def __call__(self, name):
        self.calls[name] += 1
        return self.fn(name)


def step(n, d=19, v=1031, grads=True):
    """The API's run_fn (wrapped in a counter) and key for a fresh fp32 problem of N rows."""
    p = make_problem(n=n, d=d, v=v).to(torch.float32)
    hidden, weight = p.hidden.requires_grad_(grads), p.weight.requires_grad_(grads)
    args = (p.labels, p.ref_hidden, p.kwargs["ce_weight"], p.kwargs["kl_weight"], None, "forward", -100, "mean")
    key = autotune.make_key(hidden, weight, separate_ref_head=False, kl="forward", grads=grads, reduction="mean")
    return Counting(api._timing_run(hidden, weight, args, grads)), key, hidden, weight


def test_picks_the_candidate_with_the_lower_median(seed):
    # The API's real run_fn for both, with 0.2 s added to one: a margin no load on a shared
    # machine can close (the op itself takes ~1 ms here), so the test checks the pick, not speed.
    real, key, hidden, weight = step(64)
    run_fn = Counting(lambda name: (real(name), time.sleep(0.2 if name == "unfused" else 0)))
    assert autotune.pick(CANDIDATES, run_fn, key, repeats=5) == "cpu"
    assert run_fn.calls == {"cpu": 6, "unfused": 6}  # one warmup + 5 timed each
    choice = autotune.choices()[key]
    assert choice.backend == "cpu" and choice.seconds["cpu"] < choice.seconds["unfused"]
    assert hidden.grad is None and weight.grad is None  # timing leaves the caller's .grad alone


def test_cached_per_key_and_re_timed_for_another_n_bucket(seed):
    run_fn, key, _, _ = step(40)
    first = autotune.pick(CANDIDATES, run_fn, key)
    timed = sum(run_fn.calls.values())
    assert timed == 2 * (1 + autotune.REPEATS)
    assert autotune.pick(CANDIDATES, run_fn, key) == first
    same_bucket, key_64, _, _ = step(64)  # 40 and 64 both round up to 64
    assert key_64 == key
    assert autotune.pick(CANDIDATES, same_bucket, key_64) == first
    assert sum(run_fn.calls.values()) == timed and not same_bucket.calls
    other, key_128, _, _ = step(65)
    assert key_128.n_bucket == 128 and key_128 != key
    autotune.pick(CANDIDATES, other, key_128)
    assert sum(other.calls.values()) == 2 * (1 + autotune.REPEATS)
    assert set(autotune.choices()) == {key, key_128}


def test_key_separates_grads_kl_and_reduction(seed):
    p = make_problem(n=9, d=5, v=11).to(torch.float32)
    kw = dict(separate_ref_head=False, kl="forward", grads=True, reduction="mean")
    base = autotune.make_key(p.hidden, p.weight, **kw)
    assert base == autotune.make_key(p.hidden, p.weight, **{**kw, "reduction": "sum"})
    for change in (
        {"grads": False},
        {"kl": "reverse"},
        {"kl": None},
        {"reduction": "none"},
        {"separate_ref_head": True},
    ):
        assert autotune.make_key(p.hidden, p.weight, **{**kw, **change}) != base, change
    assert autotune.make_key(p.hidden.double(), p.weight.double(), **kw) != base
    assert [autotune.n_bucket(n) for n in (0, 1, 2, 3, 256, 257)] == [1, 1, 2, 4, 256, 512]


def test_api_tune_builds_the_key_from_the_call(seed):
    p = make_problem(n=20, d=7, v=33, ref="separate").to(torch.float32)
    hidden, weight = p.hidden.requires_grad_(), p.weight
    args = (p.labels, p.ref_hidden, None, None, p.kwargs["ref_weight"], "reverse", -100, "none")
    with torch.no_grad():
        api._tune(CANDIDATES, hidden, weight, args)
    api._tune(CANDIDATES, hidden, weight, args)
    assert hidden.grad is None
    keys = sorted(autotune.choices(), key=lambda k: k.grads)
    assert [k.grads for k in keys] == [False, True]
    assert all(
        k[:8] == ("cpu", torch.float32, 32, 7, 33, True, "reverse", k.grads) and k.reduction == "none" for k in keys
    )


def test_env_override_forces_the_pick(seed, monkeypatch):
    run_fn, key, _, _ = step(17)
    monkeypatch.setenv(autotune.ENV, "unfused")
    assert autotune.pick(CANDIDATES, run_fn, key) == "unfused"
    assert not run_fn.calls and not autotune.choices()
    monkeypatch.setenv(autotune.ENV, "triton")
    with pytest.raises(ValueError, match=autotune.ENV):
        autotune.pick(CANDIDATES, run_fn, key)


def test_env_override_applies_to_auto_calls(seed, monkeypatch):
    p = make_problem().to(torch.float32)
    monkeypatch.setenv(autotune.ENV, "unfused")
    auto = run(saferegx.safety_loss, p)
    assert all(torch.equal(a, r) for a, r in zip(auto, run(saferegx.safety_loss, p, backend="unfused")))
    monkeypatch.setenv(autotune.ENV, "cuda")  # not for CPU tensors
    with pytest.raises(ValueError, match="needs cuda tensors"):
        run(saferegx.safety_loss, p)
    monkeypatch.setenv(autotune.ENV, "fastest")
    with pytest.raises(ValueError, match=autotune.ENV):
        run(saferegx.safety_loss, p)


def test_auto_on_cpu_is_the_cpu_kernel_unmeasured_and_matches_the_unfused_op(seed):
    p = make_problem(ref="separate").to(torch.float32)
    auto = run(saferegx.safety_loss, p)
    assert all(torch.equal(a, c) for a, c in zip(auto, run(saferegx.safety_loss, p, backend="cpu")))
    assert_close(auto, oracle(p), 1e-5, "auto")
    assert_close(auto, run(saferegx.safety_loss, p, backend="unfused"), 1e-5, "auto")
    assert autotune.choices() == {}


def test_a_failing_candidate_loses_with_a_warning(seed):
    run_fn, key, _, _ = step(17)

    def broken(name):
        if name == "unfused":
            raise MemoryError("pretend out of memory")
        return run_fn(name)

    with pytest.warns(RuntimeWarning, match="pretend out of memory"):
        assert autotune.pick(CANDIDATES, broken, key) == "cpu"
    assert autotune.choices()[key].seconds["unfused"] == float("inf")
    with pytest.raises(MemoryError), pytest.warns(RuntimeWarning):
        autotune.pick(["unfused"] * 2, broken, key._replace(d=1))


def test_nothing_is_measured_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert autotune.can_measure(torch.zeros(2))
    with FakeTensorMode():
        assert not autotune.can_measure(torch.zeros(2))
    assert not autotune.can_measure(torch.zeros(2, device="meta"))
