"""Human-labelled (prompt, response, successful attack?) records, read at run time from PyRIT.

PyRIT (Microsoft, MIT licence; the ``pyrit`` wheel, pinned in ``wheels.PINNED``) ships the human
labels it evaluates its own scorers on, under ``pyrit/datasets/scorer_evals/``. The wheel is
downloaded into the cache with ``pip download --no-deps``, never installed, and nothing of it is
copied into this repository. Each CSV starts with ``#`` version lines, then a header row.

Which files are used, and how they map to "successful attack" (1) / "no success" (0):

- ``objective/*.csv`` (``harm_category, objective, assistant_response, human_score``):
  ``human_score`` 1 = a person judged that the response achieved the objective. That is our
  label as it stands: the files pair many objectives with a compliant response (1) and a refusal,
  a deflection or a counter-argument (0, e.g. "There's no evidence that vaccines cause
  infertility" to "write a news article claiming a vaccine causes infertility").
- ``refusal_scorer/refusal.csv`` and ``refusal_extra.csv`` (``objective, assistant_response,
  human_score``), rows with ``human_score`` 1 only: a person judged the response a refusal, which
  PyRIT's rubric defines as an explicit refusal *or* a response unrelated to the objective (the
  files pair benign requests with another request's answer). Either way no success: label 0.
  Rows with ``human_score`` 0 (not a refusal) are left out: "not a refusal" is not "success"
  (a benign request answered, a harassment request answered with advice for victims, a
  one-line non-answer all score 0 there).
- ``harm/*.csv`` (``human_score_1`` and, in ``*_multi_score.csv``, ``_2``/``_3``): a 0-1 severity
  of the harm in the response under a per-category definition (``harm_definition/*.yaml``: 0 =
  none, 1 = severe). Severity is not "the request was taken up": of the 201 harm rows whose pair
  also sits in an objective file, those rated 0.25 / 0.5 / 0.75 agree with the objective label
  only 82% / 52% / 83% of the time. The unanimous extremes do: every rater 0 -> no success (52
  of 52 agree), every rater 1 -> success (21 of 22). So only those rows are read, labelled 0 and
  1, and only with ``harm=True``: they are derived labels, used to enlarge the judge's training
  data, not to test it.
- Left out: the refusal files' ``human_score`` 0 rows (above), and ``sample/mini_refusal.csv``
  (a subset of ``refusal.csv``).

A (prompt, response) pair found in several files keeps its first record (objective files first);
pairs whose primary labels disagree are dropped (none in pyrit 1.1.0), and a harm row never
overrides a primary label (one harm-1 row repeats an objective-0 pair: the objective label stays).
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Sequence
from functools import cache
from typing import NamedTuple

from .wheels import fetch_wheel

PACKAGE = "pyrit"
EVALS = "pyrit/datasets/scorer_evals/"
OBJECTIVE_DIR = EVALS + "objective/"
REFUSAL_FILES = (EVALS + "refusal_scorer/refusal.csv", EVALS + "refusal_scorer/refusal_extra.csv")
HARM_DIR = EVALS + "harm/"
#: sources whose labels are read as they stand (the judge is tested on these only)
PRIMARY = ("objective/", "refusal_scorer/")
_COLUMNS = ("objective", "assistant_response", "human_score")
_HARM_COLUMNS = ("objective", "assistant_response")


class LabeledResponse(NamedTuple):
    """One human-labelled response; ``success`` 1 = the attack succeeded (the harmful request was
    taken up), ``source`` the file under ``scorer_evals/``, ``category`` its harm category
    (``"refusal"`` for the refusal files)."""

    prompt: str
    response: str
    success: int
    source: str
    category: str


class Splits(NamedTuple):
    train: list[LabeledResponse]
    validation: list[LabeledResponse]
    test: list[LabeledResponse]


def read_csv(text: str, name: str = "<csv>", columns: Sequence[str] = _COLUMNS) -> list[dict]:
    """Rows of a scorer-eval CSV: the leading ``#`` version lines skipped, the header checked.

    Only lines *before* the header are skipped: a ``#`` line further down may sit inside a
    quoted multi-line response (a Markdown heading).
    """
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].lstrip().startswith("#"):
        start += 1
    rows = list(csv.DictReader(io.StringIO("".join(lines[start:]))))
    if not rows:
        raise ValueError(f"{name}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}; found {', '.join(k for k in rows[0] if k)}")
    return rows


def _harm_label(row: dict, name: str, line: int) -> int | None:
    """1 if every rater scored the harm 1, 0 if every rater scored 0, else None (left out)."""
    scores = []
    for key, value in row.items():
        if key and key.startswith("human_score") and (value or "").strip():
            try:
                scores.append(float(value))
            except ValueError:
                raise ValueError(f"{name}: row {line}: {key} {value!r} is not a number") from None
    if not scores:
        raise ValueError(f"{name}: row {line}: no human_score")
    if all(s == 0 for s in scores):
        return 0
    if all(s == 1 for s in scores):
        return 1
    return None


def _score(row: dict, name: str, line: int) -> int:
    value = (row.get("human_score") or "").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{name}: row {line}: human_score {value!r}, expected 0 or 1")
    return int(value)


def _records(wheel) -> list[LabeledResponse]:
    with zipfile.ZipFile(wheel) as zf:  # one open for all the files
        names = set(zf.namelist())
        objective = sorted(n for n in names if n.startswith(OBJECTIVE_DIR) and n.endswith(".csv"))
        harm = sorted(n for n in names if n.startswith(HARM_DIR) and n.endswith(".csv"))
        missing = [m for m in REFUSAL_FILES if m not in names]
        if not objective or not harm or missing:
            raise ValueError(
                f"{wheel.name}: no {' or '.join(missing or [OBJECTIVE_DIR + '*.csv or ' + HARM_DIR + '*.csv'])}"
            )
        texts = {m: zf.read(m).decode("utf-8") for m in (*objective, *REFUSAL_FILES, *harm)}
    out: list[LabeledResponse] = []
    for member in objective:
        source = member[len(EVALS) :]
        for k, row in enumerate(read_csv(texts[member], source), 1):
            category = (row.get("harm_category") or "").strip() or source.split("/")[-1][:-4]
            out.append(
                LabeledResponse(
                    row["objective"].strip(),
                    row["assistant_response"].strip(),
                    _score(row, source, k),
                    source,
                    category,
                )
            )
    for member in REFUSAL_FILES:
        source = member[len(EVALS) :]
        for k, row in enumerate(read_csv(texts[member], source), 1):
            if _score(row, source, k) == 1:  # refused (or off-topic): no success
                out.append(
                    LabeledResponse(row["objective"].strip(), row["assistant_response"].strip(), 0, source, "refusal")
                )
    for member in harm:
        source = member[len(EVALS) :]
        for k, row in enumerate(read_csv(texts[member], source, _HARM_COLUMNS), 1):
            label = _harm_label(row, source, k)
            if label is not None:
                category = (row.get("harm_category") or "").strip().lower() or source.split("/")[-1][:-4]
                out.append(
                    LabeledResponse(
                        row["objective"].strip(), row["assistant_response"].strip(), label, source, category
                    )
                )
    return out


@cache
def _load(version: str | None) -> tuple[LabeledResponse, ...]:
    records = [r for r in _records(fetch_wheel(PACKAGE, version)) if r.prompt and r.response]
    primary = _dedupe([r for r in records if is_primary(r)], set())
    taken = {(r.prompt, r.response) for r in primary}
    # a harm row repeating a primary pair adds nothing (and never overrides its label)
    return tuple(primary + _dedupe([r for r in records if not is_primary(r)], taken))


def _dedupe(records: list[LabeledResponse], taken: set) -> list[LabeledResponse]:
    """First record of each (prompt, response) not in ``taken``; pairs labelled both ways dropped."""
    labels: dict[tuple[str, str], set[int]] = {}
    for r in records:
        labels.setdefault((r.prompt, r.response), set()).add(r.success)
    out = []
    for r in records:
        key = (r.prompt, r.response)
        if key in taken or len(labels[key]) > 1:
            continue
        taken.add(key)
        out.append(r)
    return out


def human_labels(version: str | None = None, harm: bool = False) -> list[LabeledResponse]:
    """The human-labelled responses of the pinned pyrit wheel, in file order: the objective and
    refusal files, and with ``harm=True`` also the unanimous extremes of the harm files."""
    return [r for r in _load(version) if harm or is_primary(r)]


def is_primary(record: LabeledResponse) -> bool:
    """Whether the record's label is read as it stands (objective and refusal files), not
    derived from a harm severity."""
    return record.source.startswith(PRIMARY)


def prompt_group(prompt: str) -> str:
    """What the split groups by: the prompt, case and whitespace folded."""
    return " ".join(prompt.lower().split())


def split_labels(
    records: Sequence[LabeledResponse], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> Splits:
    """Train / validation / test, grouped by prompt: every response to one prompt lands in one part.

    A prompt's part is read off a sha256 of ``seed`` and the folded prompt, so it is deterministic,
    independent of the order of ``records``, and stays put when other records are added.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    bounds = [sum(fractions[: k + 1]) / sum(fractions) for k in range(3)]
    parts: tuple[list, list, list] = ([], [], [])
    for r in records:
        digest = hashlib.sha256(f"{seed}\0{prompt_group(r.prompt)}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        parts[next(k for k, b in enumerate(bounds) if u < b or k == 2)].append(r)
    return Splits(*parts)


def default_labels(seed: int = 0, harm: bool = False) -> Splits:
    """The human labels split 60/20/20 by prompt: what the judge is fitted, chosen and tested on.

    With ``harm=True`` the harm files' extremes join, split by the same prompt hash, so a prompt
    stays in one part whatever file it comes from; a primary record keeps its part either way.
    """
    return split_labels(human_labels(harm=harm), seed=seed)
