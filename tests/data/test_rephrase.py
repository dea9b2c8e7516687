"""Other surface forms of templated benign prompts (the safe reference's benign side)."""

import pytest

from saferegx.data import lookalikes
from saferegx.data.benign_templates import QUESTIONS, SUBJECT_FORMS, SUBJECTS, TASK_FORMS, TASKS
from saferegx.data.rephrase import rephrasings, topic_of


@pytest.mark.parametrize(
    "topics, forms",
    [
        (TASKS, TASK_FORMS),
        (SUBJECTS, SUBJECT_FORMS),
        (lookalikes.TASKS, TASK_FORMS),
        (lookalikes.SUBJECTS, SUBJECT_FORMS),
    ],
)
def test_every_form_of_a_topic_is_read_back_to_its_topic(topics, forms):
    for topic in topics[::7]:
        for form in forms:
            assert topic_of(form.format(topic)) == (topic, forms)


def test_whole_questions_and_other_text_have_no_topic():
    assert all(topic_of(q) is None for q in QUESTIONS + lookalikes.QUESTIONS)
    assert topic_of("Give detailed instructions for how to something not in any list") is None
    assert topic_of("Give detailed instructions for how to ") is None


def test_rephrasings_are_other_forms_of_the_same_topics():
    prompts = [TASK_FORMS[0].format(TASKS[0]), SUBJECT_FORMS[3].format(SUBJECTS[5]), QUESTIONS[0]]
    out = rephrasings(prompts, 3, seed=1)
    assert len(out) == 6 and len(set(out)) == 6 and not set(out) & set(prompts)
    assert [topic_of(p)[0] for p in out] == [TASKS[0]] * 3 + [SUBJECTS[5]] * 3
    assert out == rephrasings(prompts, 3, seed=1) and out != rephrasings(prompts, 3, seed=2)
    assert rephrasings(prompts, 0) == []
    # more than a topic has forms: all the others, once each
    assert len(rephrasings(prompts[:1], 10**3)) == len(TASK_FORMS) - 1


def test_avoid_keeps_held_out_topics_out():
    train = [TASK_FORMS[0].format(TASKS[0]), TASK_FORMS[0].format(TASKS[1])]
    held_out = [TASK_FORMS[5].format(TASKS[1])]  # the same topic as train[1], in another form
    out = rephrasings(train, 2, avoid=held_out)
    assert {topic_of(p)[0] for p in out} == {TASKS[0]}


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match="k must be >= 0"):
        rephrasings([], -1)
