"""Other surface forms of templated benign prompts: the same topic in more of the harmful sets'
phrasings, for the safe reference's benign side.

Each benign topic appears once, in one form, and most prompts in a form like "Give a detailed
tutorial on how to {}" are harmful, so a small model aligned on them learns that the form means
refusal: the demo's reference refused "Give a detailed tutorial on how to pickle cucumbers". The
same benign topic answered in several of those forms says that the topic decides, not the form.
Only the topics of the prompts given are rephrased, and ``avoid`` keeps topics of held-out prompts
out, so no held-out topic leaks into training. In the demo's full run it cut over-refusal and
raised ASR (``saferegx.demo.Sizes.ref_rephrase``, off by default; docs/demo.md gives the figures).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from . import benign_templates as benign
from . import lookalikes

TEMPLATES = (
    (benign.TASKS, benign.TASK_FORMS),
    (benign.SUBJECTS, benign.SUBJECT_FORMS),
    (lookalikes.TASKS, benign.TASK_FORMS),
    (lookalikes.SUBJECTS, benign.SUBJECT_FORMS),
)


def topic_of(prompt: str) -> tuple[str, list[str]] | None:
    """``(topic, its forms)`` when ``prompt`` is one of the templates' forms filled with one of
    their topics; None for anything else (whole questions, other text)."""
    for topics, forms in TEMPLATES:
        for form in forms:
            head, tail = form.split("{}")
            if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) > len(head) + len(tail):
                topic = prompt[len(head) : len(prompt) - len(tail)]
                if topic in topics:
                    return topic, forms
    return None


def rephrasings(prompts: Iterable[str], k: int, seed: int = 0, avoid: Iterable[str] = ()) -> list[str]:
    """Up to ``k`` other forms of each templated prompt's topic, in the prompts' order
    (deterministic by ``seed``); none already among ``prompts``, none on a topic of ``avoid``."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    prompts = list(prompts)
    banned = {t[0] for t in map(topic_of, avoid) if t is not None}
    seen = set(prompts)
    rng = random.Random(f"rephrase-{seed}")
    out = []
    for prompt in prompts:
        found = topic_of(prompt)
        if found is None or found[0] in banned:
            continue
        topic, forms = found
        others = [f.format(topic) for f in forms if f.format(topic) not in seen]
        for text in rng.sample(others, min(k, len(others))):
            seen.add(text)
            out.append(text)
    return out
