"""Bad input gets a TypeError/ValueError naming the argument, on every backend."""

import pytest
import torch

import saferegx

N, D, V = 6, 4, 11


def good(**over):
    args = dict(
        hidden=torch.randn(N, D),
        weight=torch.randn(V, D),
        labels=torch.randint(0, V, (N,)),
        ref_hidden=torch.randn(N, D),
    )
    args.update(over)
    return args


def call(backend="cpu", **over):
    args = good()
    kwargs = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return saferegx.safety_loss(
        args["hidden"], args["weight"], args["labels"], args["ref_hidden"], backend=backend, **kwargs
    )


BAD = [
    ("hidden 1-D", dict(hidden=torch.randn(N * D)), ValueError, "hidden"),
    ("hidden int", dict(hidden=torch.ones(N, D, dtype=torch.long)), ValueError, "hidden"),
    ("hidden not a tensor", dict(hidden=[[0.0] * D] * N), TypeError, "hidden"),
    ("weight D mismatch", dict(weight=torch.randn(V, D + 1)), ValueError, "weight"),
    ("weight 3-D", dict(weight=torch.randn(V, D, 1)), ValueError, "weight"),
    ("mixed float dtypes", dict(weight=torch.randn(V, D, dtype=torch.float64)), TypeError, "weight dtype"),
    ("labels float", dict(labels=torch.zeros(N)), TypeError, "labels"),
    ("labels bool", dict(labels=torch.zeros(N, dtype=torch.bool)), TypeError, "labels"),
    ("labels wrong length", dict(labels=torch.zeros(N + 1, dtype=torch.long)), ValueError, "labels"),
    ("labels 2-D", dict(labels=torch.zeros(N, 1, dtype=torch.long)), ValueError, "labels"),
    ("label too large", dict(labels=torch.full((N,), V)), ValueError, "labels"),
    ("label negative", dict(labels=torch.full((N,), -3)), ValueError, "labels"),
    ("ref_hidden shape", dict(ref_hidden=torch.randn(N, D + 1)), ValueError, "ref_hidden"),
    ("ref_hidden dtype", dict(ref_hidden=torch.randn(N, D, dtype=torch.float64)), TypeError, "ref_hidden"),
    ("ref_weight shape", dict(ref_weight=torch.randn(V + 1, D)), ValueError, "ref_weight"),
    ("ce_weight shape", dict(ce_weight=torch.ones(N + 1)), ValueError, "ce_weight"),
    ("ce_weight negative", dict(ce_weight=-torch.ones(N)), ValueError, "ce_weight"),
    ("ce_weight nan", dict(ce_weight=torch.full((N,), float("nan"))), ValueError, "ce_weight"),
    ("ce_weight int", dict(ce_weight=torch.ones(N, dtype=torch.long)), TypeError, "ce_weight"),
    ("kl_weight shape", dict(kl_weight=torch.ones(N, 2)), ValueError, "kl_weight"),
    ("kl_weight negative", dict(kl_weight=torch.full((N,), -0.5)), ValueError, "kl_weight"),
    ("kl_weight without ref", dict(ref_hidden=None, kl_weight=torch.ones(N)), ValueError, "kl_weight"),
    ("unknown kl", dict(kl="jsd"), ValueError, "kl"),
    ("unknown reduction", dict(reduction="max"), ValueError, "reduction"),
    ("ignore_index float", dict(ignore_index=-100.0), TypeError, "ignore_index"),
    ("unknown backend", dict(backend="tpu"), ValueError, "backend"),
]


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("case,over,exc,name", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_refused_with_its_name(case, over, exc, name, backend):
    over = dict(over)
    backend = over.pop("backend", backend)
    with pytest.raises(exc, match=name):
        call(backend=backend, **over)


def test_cpu_backend_refuses_non_cpu_tensors():
    meta = {k: v.to("meta") for k, v in good().items()}
    with pytest.raises(ValueError, match="backend='cpu'"):
        saferegx.safety_loss(meta["hidden"], meta["weight"], meta["labels"], meta["ref_hidden"], backend="cpu")


def test_device_mismatch_is_refused():
    with pytest.raises(ValueError, match="labels"):
        call(labels=torch.randint(0, V, (N,), device="meta"))


def test_ignored_label_outside_vocab_is_fine():
    out = call(labels=torch.tensor([-100, 1, 2, -100, 3, 4]))
    assert torch.isfinite(out.loss) and out.ce[0] == 0


def test_kernel_checks_labels_even_when_python_checks_are_off(monkeypatch):
    """SAFEREGX_CHECK_VALUES=0 skips the (syncing) value checks; the C++ kernel still refuses."""
    monkeypatch.setenv("SAFEREGX_CHECK_VALUES", "0")
    with pytest.raises(RuntimeError, match="outside"):
        call(labels=torch.full((N,), V + 5))
