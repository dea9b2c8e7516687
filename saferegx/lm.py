"""What saferegx needs to know about a causal LM: its blocks, its head, its name, its prompts.

Every layer above the op (risk signals, trainers, evaluation) reads a transformers model the same
way through these helpers, so a new architecture is taught here once.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

_LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
    "layers",
)


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lm_head(model: nn.Module) -> nn.Module:
    """The output projection (its ``weight`` is the fused loss's ``[V, D]`` head)."""
    return unwrap(model).get_output_embeddings()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (Llama/Qwen2/Mistral, GPT-2, GPT-NeoX, PEFT-wrapped)."""
    model = unwrap(model)
    for path in _LAYER_PATHS:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: none of {', '.join(_LAYER_PATHS)} is a ModuleList"
    )


def model_name(model) -> str:
    """A stable name for a model, recorded with probes so they are not applied to another."""
    name = getattr(model.config, "name_or_path", "") or getattr(model, "name_or_path", "")
    return Path(str(name)).name or model.config.model_type


def native_bf16(device: torch.device) -> bool:
    """Whether matmuls run natively in bf16 here: a GPU with bf16, or a CPU with AVX512-BF16 or
    AMX. Elsewhere bf16 is emulated and slower than fp32, so saferegx then stays in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def format_prompt(tokenizer, prompt: str, chat_template: bool = True) -> list[int]:
    """Token ids of a prompt as the model sees it before answering (chat template if it has one)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``, both ``[B, T]`` int64."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, s in enumerate(seqs):
        ids[k, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[k, : len(s)] = 1
    return ids, mask


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index ``[B]`` of the last attended token of each row, for left or right padding."""
    t = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * t).argmax(-1)


class _Stop(Exception):
    """Raised by the deepest tapped block when the layers above it need not run."""


@contextlib.contextmanager
def tap_layers(model: nn.Module, layers: Sequence[int]):
    """Collects ``{layer: output [B, T, D]}`` of decoder blocks while inside (forward hooks)."""
    taps: dict[int, torch.Tensor] = {}
    blocks = decoder_layers(model)

    def hook(i):
        def fn(_module, _args, output):
            taps[i] = output[0] if isinstance(output, tuple) else output

        return fn

    handles = [blocks[i].register_forward_hook(hook(i)) for i in sorted(set(layers))]
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def layer_outputs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int], cache=None
) -> dict[int, torch.Tensor]:
    """``{layer: output [B, T, D]}`` of the given decoder blocks from a forward that stops after
    the deepest of them: the blocks above it, the final norm and the head never run. With
    ``cache`` (a KV cache of a prefix, see :func:`prefix_cache`) the input continues that prefix:
    ``attention_mask`` then covers prefix and input, and the outputs are the input's."""
    deepest = decoder_layers(model)[max(layers)]
    extra = {"use_cache": False} if cache is None else {_cache_kwarg(model): cache, "use_cache": True}
    with tap_layers(model, layers) as taps:

        def stop(_module, _args, _output):
            raise _Stop

        handle = deepest.register_forward_hook(stop)  # after tap_layers' hook: the tap is kept
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        except _Stop:
            pass
        finally:
            handle.remove()
    return taps


@torch.no_grad()
def prefix_cache(model: nn.Module, prefix: Sequence[int], layers: Sequence[int], start=None):
    """``(cache, taps)``: the KV cache of ``prefix`` (one sequence) up to the deepest of ``layers``,
    and those layers' outputs ``[1, P, D]``; :func:`layer_outputs` continues it for a batch
    (``batch_cache``), so prompts that begin alike (a chat template's system prompt) run that
    beginning once. ``start``: the ``(cache, taps)`` of a shorter beginning of ``prefix``, which
    is continued (left as it was) rather than run again."""
    from transformers import DynamicCache

    if start is None:
        try:
            cache = DynamicCache(config=unwrap(model).config)
        except TypeError:  # older transformers: no config argument
            cache = DynamicCache()
        done, head = 0, {}
    else:
        cache, head = batch_cache(start[0], 1), start[1]
        done = next(iter(head.values())).shape[1]
    device = next(model.parameters()).device
    ids = torch.tensor([list(prefix[done:])], dtype=torch.long, device=device)
    mask = torch.ones(1, len(prefix), dtype=torch.long, device=device)
    taps = layer_outputs(model, ids, mask, layers, cache=cache)
    return cache, {i: torch.cat([head[i], t], 1) for i, t in taps.items()} if head else taps


def batch_cache(cache, batch_size: int):
    """A fresh copy of a one-sequence cache for ``batch_size`` sequences (a forward extends it)."""
    import copy

    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(batch_size)
    return out


def _cache_kwarg(model: nn.Module) -> str:
    """The forward's name for a KV cache: ``cache`` in recent transformers, ``past_key_values``
    before (the old name still works there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"
