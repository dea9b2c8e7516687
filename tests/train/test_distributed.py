"""Two processes on this machine (gloo) train like one: ``torchrun`` (DDP, FSDP) and ``accelerate launch``.

The runs are ``saferegx train`` on a tiny Llama with a probe, batch-mode risk with an EMA and
``grad_accum: 2``; ``batch_size: 3`` over 7 examples makes the shares uneven (2 + 1) and the epoch's
last micro-batch one example, so one process has an empty share. Each step's loss, CE, KL, risk,
beta and gradient norm (the gradient of the global batch, after DDP/FSDP's reduction) must match a
single-process run of the same config to float rounding, and so must the saved adapter.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import EXAMPLES

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("loss", "ce", "kl", "risk", "beta", "grad_norm")
STEPS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """A tiny model folder, data, probe, and the single-process run every test compares with."""
    from saferegx.cli import main
    from saferegx.risk.probe import Probe

    from _models import tiny_llama

    root = tmp_path_factory.mktemp("distributed")
    model_dir = root / "tiny-llama"  # the probe checks the model's name
    tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=3, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (root / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    g = torch.Generator().manual_seed(3)
    Probe(
        weight=torch.randn(32, generator=g),
        bias=-0.3,
        layers=(1,),
        pool="last",
        model_name="tiny-llama",
        hidden_size=32,
        num_layers=3,
        auroc=0.5,
    ).save(root / "probe.safetensors")

    def config(name: str, **overrides) -> Path:
        values = dict(
            model=str(model_dir),
            data=str(root / "data.jsonl"),
            output_dir=str(root / name),
            risk="probe",
            probe=str(root / "probe.safetensors"),
            schedule_mode="batch",
            momentum=0.5,
            max_steps=STEPS,
            batch_size=3,
            grad_accum=2,
            lr=1e-2,
            max_length=48,
            lora_r=4,
            lora_alpha=8.0,
            lora_target_modules=["q_proj", "v_proj", "down_proj"],
            checkpoint_every=1,
            progress=False,
            tensorboard=False,
            reference_precision="fp32",
        )
        values.update(overrides)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    assert main(["train", "--config", str(config("single"))]) == 0
    return root, config


def _launch(command: list[str], tmp: Path) -> str:
    """Runs a launcher with one intra-op thread per process; its output, or the failure with it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf"),  # no user accelerate config
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        out, _ = proc.communicate()
        pytest.fail(f"{command[:4]} timed out:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def _torchrun(config: Path, tmp: Path) -> str:
    return _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "saferegx.cli",
            "train",
            "--config",
            str(config),
        ],
        tmp,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_training(single: Path, multi: Path) -> None:
    """Same logged steps, checkpoints and final adapter as the single-process run."""
    a, b = _metrics(single), _metrics(multi)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))  # one writer: rank 0
    worst = dict.fromkeys(FIELDS, 0.0)
    for ra, rb in zip(a, b):
        assert (ra["tokens"], ra["epoch"], ra["lr"]) == (rb["tokens"], rb["epoch"], rb["lr"])
        for key in FIELDS:
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)
            if ra[key]:
                worst[key] = max(worst[key], abs(rb[key] - ra[key]) / abs(ra[key]))
    assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    from safetensors.torch import load_file

    wa = load_file(single / "final" / "adapter_model.safetensors")
    wb = load_file(multi / "final" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and len(wa) > 0
    for name in wa:  # three Adam steps amplify the rounding of near-zero gradient entries
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-3, atol=1e-4 * float(wa[name].abs().max()))
    print(f"{multi.name}: max relative difference", {k: f"{v:.1e}" for k, v in worst.items()})


def test_torchrun_ddp_matches_one_process(setup, tmp_path):
    root, config = setup
    out = _torchrun(config("ddp", distributed="ddp"), tmp_path)
    assert out.count(f"trained {STEPS} steps") == 1, out[-2000:]  # rank 0 reports
    _assert_same_training(root / "single", root / "ddp")


def test_torchrun_fsdp_matches_one_process_and_resumes(setup, tmp_path):
    root, config = setup
    path = config("fsdp", distributed="fsdp")
    out = _torchrun(path, tmp_path)
    assert out.count(f"trained {STEPS} steps") == 1, out[-2000:]
    _assert_same_training(root / "single", root / "fsdp")
    # A checkpoint holds full tensors: resumed from step 2 in one process, the last step agrees.
    from saferegx.cli import main

    shutil.rmtree(root / "fsdp" / "checkpoints" / "step-000003")
    shutil.rmtree(root / "fsdp" / "final")
    assert main(["train", "--config", str(config("fsdp", distributed="none", resume=True))]) == 0
    _assert_same_training(root / "single", root / "fsdp")


def test_accelerate_launch_matches_one_process(setup, tmp_path):
    pytest.importorskip("accelerate")
    root, config = setup
    out = _launch(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "saferegx.cli",
            "train",
            "--config",
            str(config("accelerate")),
        ],
        tmp_path,
    )
    assert out.count(f"trained {STEPS} steps") == 1, out[-2000:]
    _assert_same_training(root / "single", root / "accelerate")


def test_torchrun_fsdp_with_a_kl_gate_matches_one_process(setup, tmp_path):
    """Processes whose share of a micro-batch is all gated out still join FSDP's collective
    reference pass (on a stand-in sequence), and the step stays the single-process one."""
    from saferegx.cli import main

    root, config = setup
    risks = sorted(json.loads(line)["probe"] for line in (root / "single" / "risk_table.jsonl").open())
    gate = 0.1 + 0.8 * risks[len(risks) // 2]  # about half the sequences gated out
    common = dict(schedule_mode="sequence", kl_gate=gate)
    assert main(["train", "--config", str(config("single-gate", **common))]) == 0
    gated = [r["gated_out"] for r in _metrics(root / "single-gate")]
    assert any(0 < g < 1 for g in gated), gated
    out = _torchrun(config("fsdp-gate", distributed="fsdp", **common), tmp_path)
    assert out.count(f"trained {STEPS} steps") == 1, out[-2000:]
    _assert_same_training(root / "single-gate", root / "fsdp-gate")
    assert [r["gated_out"] for r in _metrics(root / "fsdp-gate")] == pytest.approx(gated)
