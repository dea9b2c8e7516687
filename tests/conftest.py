"""Shared test helpers: fresh random problems and the float64 oracle."""

import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Triton binds its interpreter or its compiler when a kernel is decorated, i.e. when
# saferegx.ops.triton is first imported, by whichever test does it first: on this CPU-only suite
# without a GPU it must always be the interpreter (auto never picks it: registry.auto_candidates).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test, printed on failure so a bad draw can be replayed (SAFEREGX_SEED)."""
    value = int(os.environ.get("SAFEREGX_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    return value
