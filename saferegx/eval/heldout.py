"""The held-out evaluation of a model: two attack sets, the utility task, two over-refusal sets.

- HarmBench prompts of the shared split's test part (never trained on);
- AdvBench (the pyrit wheel's copy): a fixed random draw, near-duplicates of any prompt used in
  training dropped (MiniLM cosine similarity >= ``NEAR_DUPLICATE``), each with its harm category;
- the utility task's test split (exact match);
- benign prompts of the shared split's test part, and the held-out benign look-alikes.

An attack succeeds by the response-reading judge (its verdict, ``eval/judge.py``) and, beside it,
by refusal match (no refusal marker and a few words): both counts are kept, with their n, so that
a report can put a Wilson interval on every rate.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..data.lookalikes import lookalike_prompts
from ..data.prompts import advbench_prompts
from ..data.tasks import utility_task
from .asr import attack_success_rate, over_refusal_rate
from .generate import generate
from .utility import utility_accuracy

NEAR_DUPLICATE = 0.85  # cosine similarity of MiniLM sentence embeddings


@dataclass
class HeldOut:
    harmbench: list[str]
    advbench: list[tuple[str, str]]  # (prompt, harm category)
    task: list[dict]
    benign: list[str]
    lookalike: list[str]
    dropped: list[str] = field(default_factory=list)  # AdvBench near-duplicates of training prompts

    def sizes(self) -> dict:
        return {
            "harmbench": len(self.harmbench),
            "advbench": len(self.advbench),
            "utility": len(self.task),
            "benign": len(self.benign),
            "lookalike": len(self.lookalike),
        }

    def to_json(self) -> dict:
        """Every set as drawn (a rerun reads them back instead of drawing and checking again)."""
        return {"sizes": self.sizes(), **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> HeldOut:
        fields = {k: v for k, v in data.items() if k != "sizes"}
        return cls(**{**fields, "advbench": [tuple(x) for x in fields["advbench"]]})


def held_out(
    harmbench: Sequence[str],
    benign: Sequence[str],
    training: Sequence[str],
    *,
    n_advbench: int,
    n_task: int,
    n_lookalike: int | None = None,
    seed: int = 0,
    encoder=None,
) -> HeldOut:
    """The evaluation sets, AdvBench drawn once by ``seed`` and checked against ``training``."""
    advbench = advbench_prompts()
    random.Random(f"advbench-{seed}").shuffle(advbench)
    keep, dropped = [], []
    near = near_duplicates([p for p, _ in advbench], training, encoder)
    for k, item in enumerate(advbench):
        if len(keep) == n_advbench:
            break
        (dropped if k in near else keep).append(item)
    looks = lookalike_prompts("test", seed)
    return HeldOut(
        list(harmbench),
        keep,
        utility_task("test", n_task, seed),
        list(benign),
        looks if n_lookalike is None else looks[:n_lookalike],
        [p for p, _ in dropped],
    )


def near_duplicates(
    candidates: Sequence[str], training: Sequence[str], encoder=None, threshold: float = NEAR_DUPLICATE
) -> set[int]:
    """Indices of ``candidates`` whose embedding is within ``threshold`` cosine of a training one."""
    if not candidates or not training:
        return set()
    if encoder is None:
        from ..risk.critic import MiniLMEncoder

        encoder = MiniLMEncoder()
    a, b = encoder.encode(list(candidates)), encoder.encode(list(dict.fromkeys(training)))
    return set((a @ b.T).amax(1).ge(threshold).nonzero()[:, 0].tolist())


def evaluate(
    model, tokenizer, sets: HeldOut, judge, *, max_new_tokens: int = 64, batch_size: int = 16
) -> tuple[dict, list[dict]]:
    """Counts per set (successes by judge and by refusal match, correct answers, refusals, each
    with its n) and every generation with its verdicts, for the samples file.

    Task answers are a few tokens and a refusal shows in the first sentence, so those sets
    generate at most 24 and 32 new tokens; the attack sets ``max_new_tokens``.
    """

    def gen(prompts, n, desc):
        return generate(
            model, tokenizer, prompts, max_new_tokens=min(n, max_new_tokens), batch_size=batch_size, desc=desc
        )

    out, samples = {}, []
    for name, prompts in (("harmbench", sets.harmbench), ("advbench", [p for p, _ in sets.advbench])):
        asr = attack_success_rate(prompts, gen(prompts, max_new_tokens, name), judge, threshold=judge.threshold)
        out[name] = {"n": asr["n"], "judge": asr["successes_critic"], "refusal": asr["successes_refusal"]}
        records = asr["records"]
        for r in records:
            r["judge_score"], r["success_judge"] = r.pop("critic_score"), r.pop("success_critic")
        samples += [{"set": name, **r} for r in records]
    by_category: dict[str, dict] = {}
    for (_, category), r in zip(sets.advbench, samples[-len(sets.advbench) :] if sets.advbench else []):
        c = by_category.setdefault(category, {"n": 0, "judge": 0, "refusal": 0})
        c["n"] += 1
        c["judge"] += int(r["success_judge"])
        c["refusal"] += int(r["success_refusal"])
    out["advbench"]["by_category"] = dict(sorted(by_category.items(), key=lambda kv: -kv[1]["n"]))
    util = utility_accuracy(sets.task, gen([e["prompt"] for e in sets.task], 24, "utility"))
    out["utility"] = {"n": util["n"], "correct": util["correct"]}
    samples += [{"set": "task", **r} for r in util["records"]]
    for name, prompts in (("benign", sets.benign), ("lookalike", sets.lookalike)):
        over = over_refusal_rate(prompts, gen(prompts, 32, name))
        out[name] = {"n": over["n"], "refused": over["refusals"]}
        samples += [{"set": name, **r} for r in over["records"]]
    return out, samples
