import pytest

from saferegx.data.tasks import FAMILIES, exact_match, utility_task


def test_deterministic_and_prefix_stable():
    assert utility_task("train", 30, seed=3) == utility_task("train", 30, seed=3)
    assert utility_task("train", 30, seed=3)[:10] == utility_task("train", 10, seed=3)
    assert utility_task("train", 30, seed=3) != utility_task("train", 30, seed=4)


def test_splits_disjoint_across_seeds():
    train = {ex["prompt"] for seed in range(3) for ex in utility_task("train", 600, seed)}
    test = {ex["prompt"] for seed in range(3) for ex in utility_task("test", 200, seed)}
    assert train and test and not train & test


def test_commuted_sum_stays_in_its_split():
    """ "a + b" and "b + a" are one problem: they must not straddle the split."""

    def pairs(split):
        return {
            frozenset(ex["prompt"].split("is ")[1].split("?")[0].split(" + "))
            for ex in utility_task(split, 900, 0)
            if ex["family"] == "add"
        }

    assert not pairs("train") & pairs("test")


def test_examples_distinct_balanced_and_correct():
    examples = utility_task("test", 60, seed=0)
    assert len({ex["prompt"] for ex in examples}) == 60
    assert [ex["family"] for ex in examples[:3]] == list(FAMILIES)
    for ex in examples:
        assert set(ex) == {"prompt", "response", "family"}
        if ex["family"] == "add":
            a, b = ex["prompt"].removeprefix("What is ").split("?")[0].split(" + ")
            assert ex["response"] == str(int(a) + int(b))
        elif ex["family"] == "sort":
            numbers = ex["prompt"].split(": ")[1].split(".")[0].split(", ")
            assert ex["response"] == ", ".join(sorted(numbers, key=int))
        else:
            phrase = ex["prompt"].split("'")[1]
            assert ex["response"] == phrase.upper() and phrase.islower()


@pytest.mark.parametrize(
    "prediction, answer, expected",
    [
        ("81", "81", True),
        ("  81.\n", "81", True),
        ("81\nBecause 23 + 58 = 81.", "81", True),
        ("'GARDEN RIVER'", "GARDEN RIVER", True),
        ("`GARDEN  RIVER`", "GARDEN RIVER", True),
        ("4,50 ,56,  63", "4, 50, 56, 63", True),
        ("Garden River", "GARDEN RIVER", False),  # case is the task in `upper`
        ("The answer is 81", "81", False),
        ("811", "81", False),
        ("", "81", False),
        ("4, 56, 50, 63", "4, 50, 56, 63", False),
    ],
)
def test_exact_match(prediction, answer, expected):
    assert exact_match(prediction, answer) is expected


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        utility_task("validation", 5)
    with pytest.raises(ValueError, match="n must be"):
        utility_task("train", -1)
    assert utility_task("test", 0) == []
