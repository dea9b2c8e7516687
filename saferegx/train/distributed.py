"""Training in several processes: the process group that ``torchrun`` or ``accelerate launch`` set up.

Both launchers start one process per device and tell each its place in the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Every process builds the
same global batches (the data order is seeded) and trains on its share of each (:func:`shard`); the
loop all-reduces the step's token count, so the loss, and with it the gradient, is that of the
whole global batch, as in one process.

``distributed`` (config): ``ddp`` wraps the policy in ``DistributedDataParallel`` (a full replica per
process); ``fsdp`` shards it with FSDP2 ``fully_shard`` (each decoder layer, then the rest), for
models whose weights do not fit one device; ``auto`` is ``ddp`` when launched with more than one
process, else ``none``. Outside a launcher every helper here is the single-process identity.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.distributed as dist
from torch import nn

from ..lm import decoder_layers
from .config import TrainConfig
from .model import PolicyForward


def launched() -> bool:
    """Started by ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` set), one process or more."""
    return "WORLD_SIZE" in os.environ


def mode(cfg: TrainConfig) -> str:
    """``none``, ``ddp`` or ``fsdp``: ``cfg.distributed`` checked against how the process was started."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.distributed == "auto":
        return "ddp" if size > 1 else "none"
    if cfg.distributed == "none" and size > 1:
        raise ValueError(
            f"config key 'distributed' is 'none' but {size} processes were launched: each "
            "would train alone on all data; use auto, ddp or fsdp"
        )
    if cfg.distributed != "none" and not launched():
        raise ValueError(
            f"config key 'distributed' is {cfg.distributed!r} but this process was not "
            "started by torchrun or accelerate launch (WORLD_SIZE is not set)"
        )
    return cfg.distributed


def local_device(device: torch.device) -> torch.device:
    """A launched process uses the GPU of its ``LOCAL_RANK``."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(cfg: TrainConfig, device: torch.device) -> str:
    """Join the launcher's process group (gloo on CPU, nccl on CUDA); returns :func:`mode`."""
    how = mode(cfg)
    if how != "none" and device.type == "cuda":
        torch.cuda.set_device(device)  # also where all_reduce_sum stages tensors for nccl
    if how != "none" and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return how


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """The process that writes logs, checkpoints and the progress bar (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(indices: list[int]) -> list[int]:
    """This process's share of a global micro-batch: every ``world_size``-th example from its rank.
    Shares differ by at most one example; one is empty when the batch has fewer examples than
    processes (the loop then runs an example that counts for nothing, see loop.py)."""
    return indices[rank() :: world_size()]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over processes (a new tensor on ``tensor``'s device; nccl reduces on the GPU)."""
    if not dist.is_initialized():
        return tensor
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    total = tensor.detach().to(on, copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over all processes' elements (0-dim, ``values``'s dtype): the global
    batch's mean risk; summed in float64 so it matches one process's ``values.mean()`` to rounding."""
    if not dist.is_initialized():
        return values.mean()
    total, count = all_reduce_sum(
        torch.stack([values.double().sum(), values.new_tensor(values.numel(), dtype=torch.float64)])
    )
    return (total / count).to(values.dtype)


def wrap(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The policy pass (:class:`PolicyForward`) under DDP, FSDP2, or as is (:func:`mode`)."""
    policy = PolicyForward(model)
    how = mode(cfg)
    if how == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # The buffers (rotary tables) are constants: no re-broadcast before every forward.
        return DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )
    if how == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world_size(),))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        # The root (embeddings, final norm, LM head) stays gathered from its forward to the backward:
        # the fused loss reads the head after the call returns.
        fully_shard(policy, mesh=mesh, reshard_after_forward=False)
    return policy


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Scale the gradients to norm ``max_norm`` where larger (0: never); returns their norm. The
    gradients are the global batch's (after DDP's all-reduce; FSDP's shards: the norm gathers)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def sharded(model: nn.Module) -> bool:
    """Whether FSDP holds ``model``'s parameters as shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def gradient_sync(policy: nn.Module, enabled: bool):
    """Reduce gradients over processes in this backward (the last micro-batch of a step) or not
    (the earlier ones: they accumulate locally, the last reduction carries their sum)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(policy, DistributedDataParallel) and not enabled:
        with policy.no_sync():
            yield
        return
    if isinstance(policy, FSDPModule):
        policy.set_requires_gradient_sync(enabled)
    yield


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters in full (the LoRA adapters, or everything) for the main process to
    save. Under FSDP every process must call it: it gathers the shards (see :func:`_full`)."""
    return {name: _full(p.detach().contiguous()) for name, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with FSDP's shards gathered (every process must call it): the same
    format whatever the mode or the number of processes, so a checkpoint resumes under any."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: _full(v) for k, v in state["state"][i].items()} for i in sorted(state["state"])}
    return state


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, state: dict) -> None:
    """Inverse of :func:`full_weights` and :func:`full_optimizer_state`: every process reads the full
    tensors and keeps its shards of those that FSDP shards, one tensor on the device at a time."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in weights.items():
            params[name].copy_(_like(params[name], w))
    flat = [p for group in optimizer.param_groups for p in group["params"]]  # the state's numbering
    optimizer.load_state_dict(
        {
            **state,
            "state": {
                i: {
                    k: _like(flat[i], v) if k != "step" and torch.is_tensor(v) and v.shape == flat[i].shape else v
                    for k, v in values.items()
                }
                for i, values in state["state"].items()
            },
        }
    )


def _full(t):
    """A DTensor gathered and moved to the CPU, one at a time (a sharded model's full state may not
    fit one device); only the main process keeps it, the others get None. Other tensors as they are."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t
    full = t.full_tensor()
    return full.cpu() if is_main() else None


def _like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` on ``param``'s device, as ``param``'s shard when ``param`` is a DTensor (sliced
    locally: every process holds the same full tensor, no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        return full.to(param.device)
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
