"""Ulysses context parallelism for GNA: exchange a rank's sequence shard of all heads for the whole
sequence of its share of the heads, and back.

Under Ulysses each of ``world`` ranks holds ``S / world`` consecutive tokens of every modality; after
:func:`gather_sequence` a rank holds all ``S`` tokens for ``H / world`` heads, in rank-major order (rank 0's
shard, then rank 1's, ...). GNA then runs unchanged on the whole grid; :func:`scatter_sequence` undoes the
exchange. Shapes are ``(B, S, H, D)`` as everywhere in gna_diffusers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_sequence(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """``(B, S_local, H, D)`` on every rank -> ``(B, world * S_local, H / world, D)``, rank-major."""
    batch, local, heads, dim = x.shape
    send = x.reshape(batch, local, world, heads // world, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)  # chunk r goes to rank r; chunk r comes from rank r
    return received.permute(1, 0, 2, 3, 4).reshape(batch, world * local, heads // world, dim)


def scatter_sequence(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """The inverse of :func:`gather_sequence`: ``(B, world * S_local, H / world, D)`` -> ``(B, S_local, H, D)``."""
    batch, total, heads, dim = x.shape
    local = total // world
    send = x.reshape(batch, world, local, heads, dim).permute(1, 0, 2, 3, 4).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received.permute(1, 2, 0, 3, 4).reshape(batch, local, world * heads, dim)


def gather_keys(mask: torch.Tensor, group, world: int) -> torch.Tensor:
    """A per-key mask over the local shard ``(..., S_local)`` -> ``(..., world * S_local)``, rank-major (the
    keys of :func:`gather_sequence`)."""
    parts = [torch.empty_like(mask) for _ in range(world)]
    dist.all_gather(parts, mask, group=group)
    return torch.cat(parts, dim=-1)


def global_order(world: int, local_first: int, local_second: int) -> torch.Tensor:
    """Indices that turn a rank-major sequence of ``world`` shards ``[first_r, second_r]`` (e.g. [text, image])
    into ``[first_0 .. first_{w-1}, second_0 .. second_{w-1}]``, the order of the unsharded sequence."""
    local = local_first + local_second
    ranks = torch.arange(world)[:, None] * local
    first = (ranks + torch.arange(local_first)).flatten()
    second = (ranks + local_first + torch.arange(local_second)).flatten()
    return torch.cat([first, second])
