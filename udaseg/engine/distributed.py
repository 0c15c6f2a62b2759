"""Data-parallel training under torchrun: one process per device, rank 0 writes.

Gradients are all-reduced here, after the method's step, instead of through
`DistributedDataParallel`: UDA methods run several forward/backward passes per step and forward
frozen discriminators for the generator's loss, which DDP's reducer (one forward, one backward
per module and step) does not support without `find_unused_parameters` and its per-step cost.
One averaged all-reduce of each module's flattened gradients is exact for any such pattern.
BatchNorm running statistics, which the papers keep updating in train mode, are averaged at the
same time so that every rank holds the same model.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# About 25 MB of fp32 per all-reduce call: few calls, bounded extra memory.
_BUCKET_ELEMENTS = 6_000_000


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that torchrun describes in the environment, if any.

    Args:
        device: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=chosen
    )


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_modules(modules: dict[str, nn.Module], context: DistributedContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (start from identical weights)."""
    if not context.enabled:
        return
    for module in modules.values():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(modules: dict[str, nn.Module], context: DistributedContext) -> None:
    """Average the gradients of every trainable parameter over the ranks.

    A parameter that received a gradient on some rank but not on another gets a zero gradient
    on the latter (a flag all-reduce decides which), so every rank steps the same parameters.
    """
    if not context.enabled:
        return
    parameters = [p for module in modules.values() for p in module.parameters() if p.requires_grad]
    if not parameters:
        return
    has_gradient = torch.tensor(
        [p.grad is not None for p in parameters], dtype=torch.uint8, device=parameters[0].device
    )
    dist.all_reduce(has_gradient, op=dist.ReduceOp.MAX)
    active = []
    for parameter, flag in zip(parameters, has_gradient.tolist(), strict=True):
        if flag:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            active.append(parameter.grad)
    for bucket in _buckets(active):
        flat = torch.cat([gradient.reshape(-1) for gradient in bucket])
        dist.all_reduce(flat)
        flat /= context.world_size
        offset = 0
        for gradient in bucket:
            count = gradient.numel()
            gradient.copy_(flat[offset : offset + count].view_as(gradient))
            offset += count


def average_buffers(modules: dict[str, nn.Module], context: DistributedContext) -> None:
    """Average floating-point buffers (BN running stats) over the ranks; others from rank 0."""
    if not context.enabled:
        return
    buffers = [b for module in modules.values() for b in module.buffers()]
    floating = [b for b in buffers if b.is_floating_point()]
    for bucket in _buckets(floating):
        flat = torch.cat([buffer.reshape(-1) for buffer in bucket])
        dist.all_reduce(flat)
        flat /= context.world_size
        offset = 0
        for buffer in bucket:
            buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()
    for buffer in buffers:
        if not buffer.is_floating_point():
            dist.broadcast(buffer, src=0)


def all_reduce_scalars(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """Mean of logged scalars over the ranks (for logs that describe the whole batch)."""
    if not context.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor(
        [float(values[key]) for key in keys], dtype=torch.float64, device=context.device
    )
    dist.all_reduce(tensor)
    tensor /= context.world_size
    return dict(zip(keys, tensor.tolist(), strict=True))


def all_reduce_tensor(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum of `tensor` over the ranks (in place; the tensor itself without torchrun)."""
    if context.enabled:
        dist.all_reduce(tensor)
    return tensor


def all_gather_tensor(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The ranks' tensors of the same shape [...] stacked in rank order: [world_size, ...]."""
    if not context.enabled:
        return tensor.unsqueeze(0)
    gathered = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.stack(gathered)


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Group tensors of one dtype into runs of at most _BUCKET_ELEMENTS elements."""
    buckets: list[list[torch.Tensor]] = []
    current: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if current and (
            size + tensor.numel() > _BUCKET_ELEMENTS or tensor.dtype != current[0].dtype
        ):
            buckets.append(current)
            current, size = [], 0
        current.append(tensor)
        size += tensor.numel()
    if current:
        buckets.append(current)
    return buckets
