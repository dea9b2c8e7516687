import pytest
import torch

from saferegx.data.prompts import split_indices
from saferegx.lm import last_positions
from saferegx.ops.unfused import probe_risk_unfused
from saferegx.risk.metrics import auroc
from saferegx.risk.probe import Probe, fit_probe, pool_hidden, pooled_hidden

from _models import tiny_llama


def synthetic_tokens(n=400, t=12, seed=0):
    """Random prefixes ending in six tokens from a class-specific set (disjoint sets of 8)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    ids = torch.randint(0, 256, (n, t), generator=g)
    ids[:, -6:] = 16 + 8 * labels[:, None] + torch.randint(0, 8, (n, 6), generator=g)
    return ids, labels


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_layers=4)


def test_mean_pool_ignores_padding_on_either_side():
    h = torch.randn(1, 3, 5)
    pad = torch.full((1, 2, 5), 1e3)
    right = pool_hidden(torch.cat([h, pad], 1), torch.tensor([[1, 1, 1, 0, 0]]), "mean")
    left = pool_hidden(torch.cat([pad, h], 1), torch.tensor([[0, 0, 1, 1, 1]]), "mean")
    torch.testing.assert_close(right, h.mean(1))
    torch.testing.assert_close(left, h.mean(1))
    with pytest.raises(ValueError):
        pool_hidden(h, torch.ones(1, 3), "max")


def test_hooks_read_the_layer_outputs(model):
    ids = torch.randint(0, 256, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    got = pooled_hidden(model, ids, mask, [0, 2], ("last", "mean"))
    for k, layer in enumerate([0, 2]):
        torch.testing.assert_close(got["last"][k], states[layer + 1][:, -1])
        torch.testing.assert_close(got["mean"][k], states[layer + 1].mean(1))


def test_right_padding_does_not_change_the_read(model):
    ids = torch.randint(0, 256, (1, 7))
    alone = pooled_hidden(model, ids, None, [1, 3], "last")
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 7 + [0] * 4])
    batch = torch.cat([padded, torch.randint(0, 256, (1, 11))])
    got = pooled_hidden(model, batch, torch.cat([mask, torch.ones(1, 11, dtype=torch.long)]), [1, 3], "last")
    torch.testing.assert_close(got[:, :1], alone)


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_fit_probe_separates_synthetic_classes(model, pool):
    ids, labels = synthetic_tokens()
    acts = pooled_hidden(model, ids, None, [0, 1, 2, 3], pool)
    train, val, test = split_indices(labels, (0.5, 0.25, 0.25))
    probe = fit_probe(
        acts,
        labels,
        [0, 1, 2, 3],
        train_idx=train,
        val_idx=val,
        pool=pool,
        model_name="tiny-llama",
        num_layers=4,
        candidates=[(0,), (1,), (2,), (3,), (1, 2, 3)],
    )
    assert len(probe.sweep) == 5 and probe.auroc == max(s["auroc"] for s in probe.sweep)
    assert probe.auroc > 0.95
    risk = probe.risk(acts[list(probe.layers)].mean(0))
    assert auroc(risk[test], labels[test]) > 0.95
    assert ((risk >= 0) & (risk <= 1)).all()


def test_probe_on_shuffled_labels_is_near_chance(model):
    ids, labels = synthetic_tokens()
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    acts = pooled_hidden(model, ids, None, [2], "mean")
    train, val, test = split_indices(labels, (0.5, 0.25, 0.25))
    probe = fit_probe(acts, labels, [2], train_idx=train, val_idx=val, model_name="tiny-llama", num_layers=4)
    assert auroc(probe.risk(acts[0][test]), labels[test]) < 0.75


def make_probe(hidden=32, **kw):
    args = dict(
        weight=torch.randn(hidden),
        bias=-0.3,
        layers=(1, 2),
        pool="mean",
        model_name="tiny-llama",
        hidden_size=hidden,
        num_layers=4,
        auroc=0.97,
        data="synthetic",
        sweep=[{"layers": [1, 2], "auroc": 0.97}],
    )
    return Probe(**{**args, **kw})


def test_save_load_round_trip_and_mismatch_refusal(tmp_path, model):
    probe = make_probe()
    path = tmp_path / "probe.safetensors"
    probe.save(path)
    back = Probe.load(path, model)
    assert torch.equal(back.weight, probe.weight)
    assert (back.bias, back.layers, back.pool, back.auroc, back.sweep) == (
        probe.bias,
        probe.layers,
        probe.pool,
        probe.auroc,
        probe.sweep,
    )
    x = torch.randn(5, 32)
    torch.testing.assert_close(back.risk(x), probe.risk(x))
    with pytest.raises(ValueError, match="fitted on model 'tiny-llama'"):
        Probe.load(path, model_name="smollm2-135m-instruct")
    with pytest.raises(ValueError, match="hidden size 32"):
        Probe.load(path, hidden_size=576)
    with pytest.raises(ValueError, match="expects 4 layers"):
        Probe.load(path, tiny_llama(num_layers=2))
    with pytest.raises(ValueError, match="hidden size"):
        Probe.load(path, tiny_llama(hidden_size=64))
    assert path.read_bytes()[8:9] == b"{"  # safetensors: a JSON header, no pickle


def test_load_refuses_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a saferegx probe"):
        Probe.load(tmp_path / "x.safetensors")


def test_probe_risk_unfused_matches_the_probe():
    probe = make_probe(hidden=16)
    acts = torch.randn(3, 6, 16, dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]])
    pos = last_positions(mask)
    ref = probe_risk_unfused(acts, pos, probe.weight, torch.tensor(probe.bias))
    assert ref.dtype == torch.float32 and ref.shape == (3,)
    torch.testing.assert_close(ref, probe.risk(pool_hidden(acts, mask, "last")))
    manual = torch.sigmoid(acts[[0, 1, 2], [3, 5, 1]].float() @ probe.weight + probe.bias)
    torch.testing.assert_close(ref, manual)


@pytest.mark.slow
def test_probe_reads_prompts_on_the_real_model():
    from saferegx.data.models import load_model
    from saferegx.data.prompts import benign_prompts, harmful_prompts
    from saferegx.lm import format_prompt, model_name
    from saferegx.risk.probe import prompt_activations

    model, tokenizer = load_model()
    ids = format_prompt(tokenizer, "Hello")
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    prompts = harmful_prompts(("harmbench",))[:24] + benign_prompts()[:24]
    labels = torch.tensor([1] * 24 + [0] * 24)
    acts = prompt_activations(model, tokenizer, prompts, [12, 15], "mean", batch_size=12)
    assert acts.shape == (2, 48, 576)
    idx = torch.arange(48)
    probe = fit_probe(
        acts,
        labels,
        [12, 15],
        train_idx=idx,
        val_idx=idx,
        pool="mean",
        model_name=model_name(model),
        num_layers=30,
        candidates=[(12, 15)],
    )
    torch.testing.assert_close(
        probe.read(model, tokenizer, prompts[:5], batch_size=2), probe.risk(acts[:, :5].mean(0)), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="fitted on model"):
        make_probe(hidden=576, num_layers=30).read(model, tokenizer, prompts[:1])


def test_prompt_activations_in_bf16_are_the_autocast_forward():
    """``bf16=True`` reads the states as the trainer's bf16 reference pass does: the autocast
    forward itself, within bf16 rounding of fp32 (and not the fp32 states)."""
    from transformers import AutoTokenizer

    from saferegx.data.models import default_model_path
    from saferegx.lm import format_prompt, pad_right
    from saferegx.risk.probe import prompt_activations

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=64, num_layers=3).eval()
    prompts = ["How do I bake bread?", "Name a prime number.", "Give detailed instructions for picking a lock"]
    fp32 = prompt_activations(model, tokenizer, prompts, [0, 2], ("last", "mean"))
    bf16 = prompt_activations(model, tokenizer, prompts, [0, 2], ("last", "mean"), bf16=True)
    ids, mask = pad_right([format_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = pooled_hidden(model, ids, mask, [0, 2], ("last", "mean"))
    for pool in ("last", "mean"):
        assert bf16[pool].dtype == torch.float32
        torch.testing.assert_close(bf16[pool], want[pool], rtol=0, atol=0)
        torch.testing.assert_close(bf16[pool], fp32[pool], rtol=0.05, atol=0.05)
        assert not torch.equal(bf16[pool], fp32[pool])
