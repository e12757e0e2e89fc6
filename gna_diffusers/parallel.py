"""Context parallelism for GNA (Ulysses, ring, or both: the exchange runs over all the ranks that share the
sequence, ring x Ulysses): exchange a rank's sequence shard of all heads for the whole
sequence of its share of the heads, and back.

Under Ulysses each of ``world`` ranks holds ``S / world`` consecutive tokens of every modality, so a
rank's shard of a joint sequence is ``[first part, second part]`` (e.g. [its text, its image tokens]).
After :func:`gather_sequence` a rank holds all ``S`` tokens for ``H / world`` heads, back in the unsharded
order (all first parts, then all second parts). GNA then runs unchanged on the whole grid;
:func:`scatter_sequence` undoes the exchange. Shapes are ``(B, S, H, D)`` as everywhere in gna_diffusers.
"""

from __future__ import annotations

from functools import lru_cache
from math import prod

import torch
import torch.distributed as dist


def gather_sequence(x: torch.Tensor, group, world: int, first: int) -> torch.Tensor:
    """``(B, S_local, H, D)`` on every rank, each shard ``[first part (first tokens), second part]`` ->
    ``(B, world * S_local, H / world, D)`` in the unsharded order ``[first_0 .. first_{w-1}, second_0 ..]``
    (e.g. [all text, all image]), written once into the output."""
    batch, local, heads, dim = x.shape
    send = x.reshape(batch, local, world, heads // world, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)  # (world, B, S_local, H / world, D): chunk r came from rank r
    dist.all_to_all_single(received, send, group=group)
    out = x.new_empty(batch, world * local, heads // world, dim)
    out[:, : world * first].view(batch, world, first, heads // world, dim).copy_(
        received[:, :, :first].permute(1, 0, 2, 3, 4))
    out[:, world * first :].view(batch, world, local - first, heads // world, dim).copy_(
        received[:, :, first:].permute(1, 0, 2, 3, 4))
    return out


def scatter_sequence(x: torch.Tensor, group, world: int, first: int) -> torch.Tensor:
    """The inverse of :func:`gather_sequence`: ``(B, world * S_local, H / world, D)`` in the unsharded order
    -> this rank's ``(B, S_local, H, D)``."""
    batch, total, heads, dim = x.shape
    local = total // world
    firsts = x[:, : world * first].reshape(batch, world, first, heads, dim)
    seconds = x[:, world * first :].reshape(batch, world, local - first, heads, dim)
    send = torch.cat([firsts.permute(1, 0, 2, 3, 4), seconds.permute(1, 0, 2, 3, 4)], dim=2)  # rank r's shard
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received.permute(1, 2, 0, 3, 4).reshape(batch, local, world * heads, dim)


def gather_keys(mask: torch.Tensor, group, world: int, first: int) -> torch.Tensor:
    """A per-key mask over the local shard ``(..., S_local)`` -> ``(..., world * S_local)`` in the unsharded
    order of :func:`gather_sequence`."""
    parts = [torch.empty_like(mask) for _ in range(world)]
    dist.all_gather(parts, mask.contiguous(), group=group)
    return torch.cat([part[..., :first] for part in parts] + [part[..., first:] for part in parts], dim=-1)


@lru_cache(maxsize=64)
def sharded_order(world: int, first: int, second: int, device: torch.device) -> torch.Tensor:
    """Indices that take an unsharded sequence ``[first (world x first tokens), second (world x second)]`` to
    the order diffusers' even split shards it in: ``[first_0, second_0, first_1, second_1, ...]`` (cached:
    hooks call it per block)."""
    shard = torch.arange(world)[:, None]
    firsts = shard * first + torch.arange(first)
    seconds = world * first + shard * second + torch.arange(second)
    return torch.cat([firsts, seconds], dim=1).flatten().to(device)


def per_rank_estimates(grid: tuple[int, ...], window, stride, text: int, heads: int = 24, head_dim: int = 128,
                       worlds=(1, 2, 4, 8), bytes_per_element: int = 2) -> list[dict]:
    """Per-rank attention FLOPs and all-to-all bytes of one layer under Ulysses degree ``world`` (batch 1).

    FLOPs count the two matrix products (4 x head_dim per attended pair): grid queries attend their window
    (the simulator's density) plus every text key, text queries attend everything. Each rank computes
    ``heads / world`` heads. The all-to-alls move q, k, v in and the output back: each rank sends
    ``(world - 1) / world`` of its ``S / world`` tokens x ``heads`` x ``head_dim`` elements, four times.
    """
    from .sim import simulate

    n = prod(grid)
    density = simulate(grid, window, stride).density
    pairs = density * n * n + n * text + text * (n + text)
    dense_pairs = (n + text) ** 2
    rows = []
    for world in worlds:
        rows.append({
            "world": world,
            "gna_tflop": 4 * head_dim * heads * pairs / world / 1e12,
            "dense_tflop": 4 * head_dim * heads * dense_pairs / world / 1e12,
            "all_to_all_mb": 4 * (n + text) / world * heads * head_dim * bytes_per_element * (world - 1) / world / 1e6,
        })
    return rows


def estimates_markdown() -> str:
    """The README's table: the GNA paper configurations (24 heads x 128, bf16) on 1, 2, 4 and 8 GPUs."""
    from tabulate import tabulate

    cases = [("FLUX-4K 256x256 + 512 text", (256, 256), (80, 80), (16, 16), 512),
             ("HunyuanVideo 30x48x80 + 256 text", (30, 48, 80), (18, 24, 24), (16, 8, 8), 256)]
    body = []
    for name, grid, window, stride, text in cases:
        for row in per_rank_estimates(grid, window, stride, text):
            body.append([name, row["world"], f"{row['dense_tflop']:.2f}", f"{row['gna_tflop']:.2f}",
                         f"{row['all_to_all_mb']:.0f}"])
    return tabulate(body, headers=["shape", "GPUs", "dense TFLOP / rank", "GNA TFLOP / rank", "all-to-all MB / rank"],
                    tablefmt="github")
