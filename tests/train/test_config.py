"""Config files: defaults, YAML loading, and errors that name the offending key."""

import pytest

from saferegx.train import TrainConfig


def test_yaml_round_trip_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data: a.jsonl\nrisk: probe\nprobe: p.safetensors\nlr: 1\nmax_steps: 5\nlora_target_modules: [q_proj]\n"
    )
    cfg = TrainConfig.from_yaml(path)
    assert cfg.data == ["a.jsonl"] and cfg.risk == "probe" and cfg.max_steps == 5
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert (cfg.beta_min, cfg.beta_max, cfg.kl, cfg.schedule_mode) == (0.1, 0.9, "forward", "batch")
    assert cfg.bf16 is False and cfg.model is None and cfg.finetune == "lora"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "values, key",
    [
        ({"lerning_rate": 1e-4}, "lerning_rate"),  # unknown key
        ({"lr": "fast"}, "lr"),  # wrong type
        ({"batch_size": 2.5}, "batch_size"),
        ({"bf16": "yes"}, "bf16"),
        ({"max_steps": True}, "max_steps"),
        ({"lora_target_modules": "q_proj"}, "lora_target_modules"),
        ({"lr": -1.0}, "lr"),  # out of range
        ({"beta_max": 1.5}, "beta_max"),
        ({"beta_min": 0.8, "beta_max": 0.5}, "beta_max"),
        ({"momentum": 1.0}, "momentum"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"risk": "judge"}, "risk"),
        ({"kl": "js"}, "kl"),
        ({"reference_precision": "half"}, "reference_precision"),
        ({"risk": "probe"}, "probe"),  # probe source without a probe file
        ({"lora_target_modules": ["q_proj", "lm_head"]}, "lora_target_modules"),
    ],
)
def test_errors_name_the_key(values, key):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"data": "a.jsonl", **values})
    assert repr(key) in str(err.value)


def test_missing_data_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="'data'"):
        TrainConfig.from_dict({"lr": 1e-3})
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_yaml(path)
    path.write_text("data: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.from_yaml(path)
