"""backend="auto" on GPUs: time the fused candidates once per problem key, keep the fastest.

`pick(candidates, run_fn, key, device=...)` calls `run_fn(name)` once per candidate to warm up
(Triton compiles there), then `repeats` more times each, round-robin, under a timer for the
device (CUDA events on CUDA, perf_counter elsewhere), and caches the candidate with the lowest
median under `key` for the rest of the process. `SAFEREGX_AUTO_BACKEND=<name>` forces the pick;
`choices()` shows what was measured. The choice only affects speed: every backend computes the
same op. saferegx.ops.api builds the key (`make_key`) and a run_fn that runs the op (forward,
and backward where the caller needs gradients) on the caller's own inputs with an explicit
backend, so timing never recurses into auto.
"""

import contextlib
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

ENV = "SAFEREGX_AUTO_BACKEND"
STATIC_DEFAULT = "triton"  # where nothing can be measured (torch.compile tracing, graph capture);
# the candidates are registry.auto_candidates(device): the fused backends built for it
REPEATS = 3


class Key(NamedTuple):
    """What a measured choice is valid for; N is bucketed to the next power of two."""

    device: str
    dtype: torch.dtype
    n_bucket: int
    d: int
    v: int
    separate_ref_head: bool
    kl: str | None  # None: no reference, no KL term
    grads: bool  # forward + backward timed, else forward only
    reduction: str  # "none" (backward recomputes the statistics) or "scalar"


class Choice(NamedTuple):
    backend: str
    seconds: dict  # candidate -> median seconds (inf: it raised)


_cache: dict[Key, Choice] = {}


def choices() -> dict[Key, Choice]:
    """A copy of this process's measured choices."""
    return dict(_cache)


def clear() -> None:
    """Forgets every measured choice (the next auto call on each key measures again)."""
    _cache.clear()


def forced() -> str | None:
    """The backend SAFEREGX_AUTO_BACKEND names, or None when unset or empty."""
    return os.environ.get(ENV) or None


def n_bucket(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def make_key(
    hidden: torch.Tensor, weight: torch.Tensor, *, separate_ref_head: bool, kl: str | None, grads: bool, reduction: str
) -> Key:
    return Key(
        str(hidden.device),
        hidden.dtype,
        n_bucket(hidden.shape[0]),
        hidden.shape[1],
        weight.shape[0],
        separate_ref_head,
        kl,
        grads,
        "none" if reduction == "none" else "scalar",
    )


def can_measure(t: torch.Tensor) -> bool:
    """False under torch.compile tracing and for fake or meta tensors: nothing real to time."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(t)


def static_default(candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    return STATIC_DEFAULT if STATIC_DEFAULT in candidates else candidates[0]


def pick(
    candidates: Iterable[str],
    run_fn: Callable[[str], object],
    key,
    *,
    device: torch.device | str = "cpu",
    repeats: int = REPEATS,
) -> str:
    """The fastest of `candidates` at `run_fn(name)`, measured once per `key` and cached.

    `run_fn` must run the whole timed step synchronously from the host's view on CPU; on CUDA it
    may just enqueue work on the current stream (the events bracket it). A candidate that raises
    (e.g. out of memory) is not chosen, with a warning; if all raise, the last error propagates.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("pick needs at least one candidate")
    name = forced()
    if name is not None:
        if name not in candidates:
            raise ValueError(f"{ENV}={name!r} is not among the candidates {candidates} here")
        return name
    if key in _cache:
        return _cache[key].backend
    device = torch.device(device)
    if len(candidates) == 1:
        return candidates[0]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return static_default(candidates)  # no host sync allowed while capturing a graph
    seconds = _measure(candidates, run_fn, device, repeats, key)
    winner = min(candidates, key=seconds.__getitem__)  # ties: the earlier candidate
    _cache[key] = Choice(winner, seconds)
    return winner


def _measure(candidates: list[str], run_fn, device: torch.device, repeats: int, key) -> dict:
    """Median seconds of run_fn(name) per candidate after one warmup call each; the repeats are
    interleaved (round-robin) so that a transient load on the machine hits every candidate."""
    seconds, live, error = {}, [], None
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for name in candidates:
            try:
                run_fn(name)  # warmup: Triton's JIT, cuBLAS handles, the allocator
                _sync(device)
                live.append(name)
            except Exception as e:  # any failure (out of memory, a compile error): the candidate loses
                warnings.warn(
                    f"saferegx autotune: backend {name!r} failed while timed ({e}); not chosen for {key}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                seconds[name], error = math.inf, e
        if not live:
            raise error
        samples = {name: [] for name in live}
        for _ in range(repeats):
            for name in live:
                samples[name].append(_time_once(lambda name=name: run_fn(name), device))
    seconds.update({name: statistics.median(s) for name, s in samples.items()})
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one fn() takes: CUDA events around the enqueued work on CUDA, else wall time."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3
