"""`saferegx train --config FILE.yaml [--resume]` on a tiny model saved as a HF folder."""

import pytest
import yaml

from saferegx.cli import main


@pytest.fixture
def model_dir(tmp_path, make_model, tokenizer):
    path = tmp_path / "tiny"
    make_model().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_train_command_runs_resumes_and_saves_the_adapter(tmp_path, model_dir, data_file, capsys):
    cfg = {
        "model": model_dir,
        "data": data_file(),
        "output_dir": str(tmp_path / "run"),
        "risk": "fixed",
        "max_steps": 2,
        "batch_size": 4,
        "max_length": 48,
        "lora_r": 2,
        "lora_target_modules": ["q_proj"],
        "checkpoint_every": 1,
        "progress": False,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path)]) == 0
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    # a finished run resumed does nothing more
    assert main(["train", "--config", str(path), "--resume"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out


def test_train_command_reports_config_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: x.jsonl\nbatch_size: -3\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'batch_size'" in err and len(err.strip().splitlines()) == 1
