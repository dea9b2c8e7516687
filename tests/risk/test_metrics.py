import pytest
import torch

from saferegx.risk.metrics import accuracy, auroc, tpr_at_fpr


def test_auroc_matches_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60,), generator=g).float()  # many ties
    labels = torch.randint(0, 2, (60,), generator=g)
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    assert auroc(scores, labels) == pytest.approx(expected)


def test_perfect_and_inverted():
    labels = torch.tensor([0, 0, 1, 1])
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    with pytest.raises(ValueError):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_accuracy_and_tpr_at_fpr():
    labels = torch.tensor([0] * 20 + [1] * 4)
    scores = torch.cat([torch.linspace(0.0, 0.6, 20), torch.tensor([0.55, 0.7, 0.8, 0.9])])
    # 5% of 20 negatives = 1 may exceed the threshold: threshold = 2nd highest negative
    thr = torch.linspace(0.0, 0.6, 20)[-2].item()
    assert tpr_at_fpr(scores, labels, 0.05) == pytest.approx(float((scores[20:] > thr).float().mean()))
    assert accuracy(scores, labels, 0.5) == pytest.approx(float(((scores >= 0.5) == labels.bool()).float().mean()))
