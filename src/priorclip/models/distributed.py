"""Gathering features across ranks so every loss sees the global batch.

Like open_clip's `gather_with_grad`: `torch.distributed.nn.all_gather` returns the other ranks'
features and lets gradients flow back to the local slice, so the loss of the global batch gives the
same gradient as a single process holding the whole batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0 (rank order), keeping local gradients."""
    if not is_distributed():
        return tensor
    import torch.distributed.nn as dist_nn

    return torch.cat(dist_nn.all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate labels/ids from every rank (no gradient); same order as gather_with_grad."""
    if not is_distributed():
        return tensor
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out, dim=0)
