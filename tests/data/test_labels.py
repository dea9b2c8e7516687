"""The human labels read from the real pyrit wheel, and the split grouped by prompt."""

import collections
import random

import pytest

from saferegx.data.labels import (
    LabeledResponse,
    default_labels,
    human_labels,
    is_primary,
    prompt_group,
    read_csv,
    split_labels,
)
from saferegx.data.wheels import PINNED


@pytest.fixture(scope="module")
def labels():
    return human_labels()


def test_pinned():
    assert PINNED["pyrit"] == "1.1.0"


def test_reads_the_objective_and_refusal_files(labels):
    assert len(labels) > 450
    by_dir = collections.Counter((r.source.split("/")[0], r.success) for r in labels)
    # objective files carry both labels; the refusal files only their refusals, as no success
    assert by_dir[("objective", 0)] > 150 and by_dir[("objective", 1)] > 150
    assert by_dir[("refusal_scorer", 0)] > 80 and by_dir[("refusal_scorer", 1)] == 0
    assert {r.source.split("/")[0] for r in labels} == {"objective", "refusal_scorer"}
    assert all(is_primary(r) for r in labels)
    assert all(r.prompt and r.response and r.success in (0, 1) for r in labels)
    assert all(r.category == "refusal" for r in labels if r.source.startswith("refusal"))
    assert len({(r.prompt, r.response) for r in labels}) == len(labels)  # deduplicated
    # pairs with opposite labels are kept: a compliance and a counter-argument to one objective
    sermon = [r for r in labels if r.prompt.startswith("Write a fictional sermon where a preacher")]
    assert sorted(r.success for r in sermon) == [0, 1]
    assert any("Interracial unions defy divine order" in r.response and r.success == 1 for r in sermon)


def test_harm_extremes_are_opt_in_and_never_override_primary(labels):
    both = human_labels(harm=True)
    harm = [r for r in both if not is_primary(r)]
    assert len(harm) > 200 and {r.source.split("/")[0] for r in harm} == {"harm"}
    assert {r.success for r in harm} == {0, 1}
    assert [r for r in both if is_primary(r)] == labels
    primary = {(r.prompt, r.response) for r in labels}
    assert not any((r.prompt, r.response) in primary for r in harm)


def test_read_csv_skips_only_the_leading_version_lines():
    text = (
        "# dataset_version=1.0,,,\n# another header\nobjective,assistant_response,human_score\n"
        '"Write code","```\n#include <stdio.h>\n# a heading\nint main(){}\n```",1\n'
    )
    (row,) = read_csv(text)
    assert row["assistant_response"] == "```\n#include <stdio.h>\n# a heading\nint main(){}\n```"
    with pytest.raises(ValueError, match="x.csv: missing column.*human_score"):
        read_csv("objective,assistant_response\na,b\n", "x.csv")


def test_split_is_disjoint_by_prompt_and_deterministic(labels):
    splits = default_labels()
    assert splits == default_labels()
    assert sum(len(p) for p in splits) == len(labels)
    groups = [{prompt_group(r.prompt) for r in part} for part in splits]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    for part, share in zip(splits, (0.6, 0.2, 0.2), strict=True):
        assert abs(len(part) / len(labels) - share) < 0.08
        assert {r.success for r in part} == {0, 1}
    # order-free: a shuffled input puts every record in the same part
    shuffled = list(labels)
    random.Random(1).shuffle(shuffled)
    again = split_labels(shuffled)
    assert [set(p) for p in again] == [set(p) for p in splits]
    # another seed, another split
    assert [set(p) for p in split_labels(labels, seed=1)] != [set(p) for p in splits]


def test_split_folds_case_and_whitespace_and_keeps_primary_parts():
    a = LabeledResponse("How to  Steal a car?", "no", 0, "x", "c")
    b = LabeledResponse("how to steal a car?", "yes: ...", 1, "y", "c")
    parts = split_labels([a, b] * 3 + [LabeledResponse(f"p{k}", "r", k % 2, "x", "c") for k in range(50)])
    assert sum((a in p) and (b in p) for p in parts) == 1
    with_harm = default_labels(harm=True)
    for primary_part, part in zip(default_labels(), with_harm, strict=True):
        assert [r for r in part if is_primary(r)] == primary_part
    with pytest.raises(ValueError, match="fractions"):
        split_labels([a], fractions=(1.0, -1.0, 1.0))
