"""What the activation probe read adds to a training step, on the embedded SmolLM2-135M-Instruct.

The design reads the probe from the reference forward that the KL needs anyway, so its cost should
be a forward hook, a gather at the last prompt token, a dot and a sigmoid: next to nothing. This
measures it two ways in one run:

- end to end: a full step (policy forward to the final hidden states, reference forward under
  no_grad, ``saferegx.safety_loss(backend="cpu")``, backward of all parameters) with and without
  the read, alternated (ABBA) so that drift of a shared machine hits both alike; medians, and the
  median of the paired per-repeat differences;
- isolated: the read alone (hook on/off + ``saferegx.probe_risk``, the C++ gather-dot-sigmoid
  op), timed over many calls, as a fraction of the step. The end-to-end difference is bounded by
  timing noise; this one is not.

    .venv/bin/python benchmarks/probe_overhead.py [--batch 8] [--seq-len 256] [--repeats 4] [--warmup 2] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import saferegx
from saferegx.data import load_model
from saferegx.lm import decoder_layers

from _common import RESULTS, append_results, machine

IGNORE = -100


def make_batch(vocab: int, batch: int, seq_len: int, seed: int = 0):
    """Random tokens; each row a prompt of 1/4 to 1/2 of the length, then labelled answer tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
    prompt_len = torch.randint(seq_len // 4, seq_len // 2 + 1, (batch,), generator=g)
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:]  # label t = token t + 1
    t = torch.arange(seq_len)
    labels[t[None, :] < (prompt_len - 1)[:, None]] = IGNORE  # no loss on the prompt
    return ids, torch.ones_like(ids), labels, prompt_len - 1  # positions: last prompt token


class Step:
    """One training step, with the risk read from the reference pass or given as a constant."""

    def __init__(self, model, layer: int, ids, mask, labels, positions):
        self.model, self.ids, self.mask, self.positions = model, ids, mask, positions
        self.labels = labels.reshape(-1)
        self.block = decoder_layers(model)[layer]
        d = model.config.hidden_size
        g = torch.Generator().manual_seed(1)
        self.w, self.b = torch.randn(d, generator=g) / d**0.5, -0.5  # values do not change cost
        captured: dict = {}
        with torch.no_grad(), self.hooked(captured):
            model.model(input_ids=ids, attention_mask=mask)
        self.fixed_risk = self.read(captured)  # the base step weighs the loss the same way

    def read(self, captured: dict) -> torch.Tensor:
        return saferegx.probe_risk(captured["h"], self.positions, self.w, self.b, backend="cpu")

    @contextlib.contextmanager
    def hooked(self, captured: dict):
        """Capture the probe layer's output while inside."""

        def fn(_module, _args, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output

        handle = self.block.register_forward_hook(fn)
        try:
            yield
        finally:
            handle.remove()

    def __call__(self, probe: bool) -> float:
        model, (b, t) = self.model, self.ids.shape
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        hidden = model.model(input_ids=self.ids, attention_mask=self.mask).last_hidden_state
        captured: dict = {}
        with torch.no_grad(), self.hooked(captured) if probe else contextlib.nullcontext():
            ref = model.model(input_ids=self.ids, attention_mask=self.mask).last_hidden_state
        risk = self.read(captured) if probe else self.fixed_risk
        beta = (0.1 + 0.8 * risk)[:, None].expand(b, t).reshape(-1)
        out = saferegx.safety_loss(
            hidden.reshape(b * t, -1),
            model.lm_head.weight,
            self.labels,
            ref.reshape(b * t, -1),
            ce_weight=1 - beta,
            kl_weight=beta,
            backend="cpu",
        )
        out.loss.backward()
        return time.perf_counter() - t0

    def isolated_read(self, calls: int = 200) -> float:
        """Median seconds of the read alone: hook on and off, gather, dot, sigmoid."""
        b, t = self.ids.shape
        h = torch.randn(b, t, self.model.config.hidden_size)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            captured = {}
            with self.hooked(captured):
                pass
            captured["h"] = h
            self.read(captured)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument(
        "--layer", type=int, default=21, help="probe layer (21: best last-token layer of the sweep in docs/risk.md)"
    )
    ap.add_argument("--repeats", type=int, default=4, help="timed steps per variant")
    ap.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps per variant first (the first ones pay allocation and page faults)",
    )
    ap.add_argument("--write", action="store_true", help=f"append the result to {RESULTS}")
    args = ap.parse_args(argv)
    command = "python benchmarks/probe_overhead.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    where = machine()
    print(f"# {command}\n# {where}", flush=True)

    model, _ = load_model(None)
    model.requires_grad_(True)  # full fine-tune: the largest step, the smallest relative overhead
    step = Step(model, args.layer, *make_batch(model.config.vocab_size, args.batch, args.seq_len))
    for _ in range(args.warmup):
        for probe in (False, True):
            step(probe)
    times = {False: [], True: []}
    for r in range(args.repeats):
        for probe in (False, True) if r % 2 == 0 else (True, False):  # ABBA
            times[probe].append(step(probe))
            print(f"  repeat {r} {'probe' if probe else 'base '}: {times[probe][-1]:.3f} s", flush=True)
    base, with_probe = (statistics.median(times[p]) for p in (False, True))
    paired = statistics.median((p - q) / q for p, q in zip(times[True], times[False]))
    read_s = step.isolated_read()
    rows = [("base step (no probe read)", times[False]), ("step with probe read", times[True])]
    text = "\n".join(
        ["| variant | median (s) | min (s) | max (s) |", "|---|---:|---:|---:|"]
        + [f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |" for name, ts in rows]
    )
    text += (
        f"\n\n- overhead of the medians: {100 * (with_probe - base) / base:+.2f}% "
        f"(paired median {100 * paired:+.2f}%); noise: the base steps alone spread "
        f"{100 * (max(times[False]) - min(times[False])) / base:.1f}% (max - min)\n"
        f"- probe read alone (hook on/off, `saferegx.probe_risk`: gather, dot, sigmoid): "
        f"{read_s * 1e6:.0f} us = "
        f"{100 * read_s / base:.4f}% of a step (target <= 1%)"
    )
    setup = (
        f"SmolLM2-135M-Instruct fp32, batch {args.batch} x {args.seq_len} tokens, probe layer "
        f"{args.layer} (pool last), all parameters trained (no optimizer step), forward KL, "
        f"beta = 0.1 + 0.8 risk (the same risk values in both variants); {args.repeats} timed steps "
        f"per variant after {args.warmup} warmup, ABBA order."
    )
    print(f"\n{setup}\n\n{text}")
    if args.write:
        append_results("Probe read overhead", command, where, f"{setup}\n\n{text}")


if __name__ == "__main__":
    main()
