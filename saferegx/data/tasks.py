"""A benign utility task with exact-match answers, so that "utility preserved" is a number.

Three templated families, each a short instruction with one checkable answer:

| family  | example prompt                                                        | answer          |
|---------|-----------------------------------------------------------------------|-----------------|
| `upper` | Convert 'garden river' to upper case. Reply with the result only.     | `GARDEN RIVER`  |
| `sort`  | Sort these numbers from smallest to largest: 63, 4, 56, 50. Reply ... | `4, 50, 56, 63` |
| `add`   | What is 23 + 58? Reply with the number only.                          | `81`            |

Chosen because they are learnable but not already solved. Measured on SmolLM2-135M-Instruct
(greedy, 2026-11-23): the base model scores 0/40 on the test split (it explains instead of
answering, and its sums are often wrong); after 60 LoRA steps (r=16 on all projections, batch 8,
lr 1e-3, plain CE on 480 train examples, about 5 min on 2 cores) it scores 20/30 (add 7/10,
sort 7/10, upper 6/10). So a short fine-tune has something to learn, not saturated, and a
regularizer that blocks benign learning shows.

Splits are disjoint by construction: an item belongs to ``test`` when a hash of its canonical
form (the phrase; the sorted numbers, so ``23 + 58`` and ``58 + 23`` fall together) lands in one
fifth of the hash space, whatever ``n`` and ``seed`` are.
"""

from __future__ import annotations

import hashlib
import random
import re

FAMILIES = ("upper", "sort", "add")
SPLITS = ("train", "test")

WORDS = """apple river garden pencil window rocket silver candle forest bridge planet violin
orange yellow basket castle dragon engine falcon guitar harbor island jacket kettle lemon
marble needle ocean pepper quiet rabbit saddle tiger umbrella valley wagon winter zebra anchor
butter cactus desert elbow feather ginger hammer igloo jungle kitten ladder meadow nickel olive
parrot puzzle rainbow shadow tunnel velvet walnut button cotton dinner honey insect lantern
mirror napkin oyster pillow ribbon sunset timber turtle carpet copper mango cherry spider
thunder blanket chimney comet donkey finger lizard monkey noodle pirate pumpkin rocket sailor
tomato trumpet wallet wizard""".split()
WORDS = list(dict.fromkeys(WORDS))


def utility_task(split: str, n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` distinct ``{"prompt", "response", "family"}`` examples of ``split``, families in turn.

    Deterministic in ``(split, n, seed)``; a longer list extends a shorter one with the same seed.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{split}-{seed}")
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        family = FAMILIES[len(out) % len(FAMILIES)]
        key, prompt, answer = _MAKERS[family](rng)
        if prompt in seen or _split_of(family, key) != split:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "response": answer, "family": family})
    if len(out) < n:
        raise ValueError(f"could not draw {n} distinct {split} examples (got {len(out)}): ask for fewer")
    return out


def exact_match(prediction: str, answer: str) -> bool:
    """Whether ``prediction`` is ``answer`` after normalization, case-sensitively.

    Normalization: the first non-empty line, surrounding whitespace, quotes, backticks and a
    trailing period removed, runs of spaces collapsed, commas written ``", "``. Case counts
    in every family: in ``upper`` the case is the task; ``sort`` and ``add`` answers are digits.
    """
    return _normalize(prediction) == _normalize(answer)


def _normalize(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text.strip().strip("\"'`").strip().rstrip(".").strip().strip("\"'`")
    text = re.sub(r"\s*,\s*", ", ", text)
    return " ".join(text.split())


def _split_of(family: str, key: str) -> str:
    digest = hashlib.sha256(f"{family}:{key}".encode()).digest()
    return "test" if digest[0] % 5 == 0 else "train"


def _upper(rng: random.Random) -> tuple[str, str, str]:
    phrase = " ".join(rng.sample(WORDS, 2))
    return phrase, f"Convert '{phrase}' to upper case. Reply with the result only.", phrase.upper()


def _sort(rng: random.Random) -> tuple[str, str, str]:
    numbers = [rng.randint(1, 99) for _ in range(4)]
    ordered = ", ".join(map(str, sorted(numbers)))
    prompt = (
        f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}. Reply with the sorted list only."
    )
    return ordered, prompt, ordered


def _add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{min(a, b)}+{max(a, b)}", f"What is {a} + {b}? Reply with the number only.", str(a + b)


_MAKERS = {"upper": _upper, "sort": _sort, "add": _add}
