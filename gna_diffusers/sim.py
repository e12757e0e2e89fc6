"""Block-sparsity simulator: what a tiled attention kernel can skip for a given GNA pattern.

A kernel walks (Q tile, KV tile) pairs, each tile a box of tokens on the grid. A pair is *empty* (skip),
*full* (every valid query-key pair attends: no mask needed) or *partial* (compute and mask). Boxes at the
end of an axis that is not a tile multiple hold fewer valid tokens; a pair is classified on its valid
tokens only (the kernel masks the out-of-range ones anyway).

The GNA mask is the AND of per-axis masks, so a box pair's block of the mask is the tensor product of its
per-axis blocks: it is empty iff some axis block is empty and full iff every axis block is full. All counts
therefore come from per-axis counts (never an N x N mask):

    full pairs     = prod_d full_d
    visited pairs  = prod_d nonempty_d          (full + partial)
    density        = prod_d attended_d / L_d^2  (fraction of query-key pairs attended)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import ceil, prod

import torch

from .spec import BoolOrTuple, GNASpec, IntOrTuple, per_axis, axis_bounds

# Queries per chunk when counting keys per (query, KV tile): bounds memory on long 1-D axes.
_COUNT_CHUNK = 1 << 20


@dataclass(frozen=True)
class AxisCounts:
    """Per-axis tile statistics; ``full`` and ``nonempty`` count (Q tile, KV tile) pairs of the axis."""

    attended: int
    q_tiles: int
    kv_tiles: int
    full: int
    nonempty: int


@lru_cache(maxsize=4096)
def axis_counts(
    extent: int, window: int, stride: int, dilation: int, causal: bool, q_tile: int, kv_tile: int
) -> AxisCounts:
    """Count attended pairs and full / non-empty tile pairs along one axis."""
    start, end = axis_bounds(extent, window, stride, dilation, causal)
    q_tiles, kv_tiles = ceil(extent / q_tile), ceil(extent / kv_tile)
    kv_lo = torch.arange(kv_tiles) * kv_tile
    kv_hi = (kv_lo + kv_tile).clamp(max=extent)
    block_sums = torch.zeros(q_tiles, kv_tiles, dtype=torch.long)
    rows = max(q_tile, (_COUNT_CHUNK // kv_tiles) // q_tile * q_tile)  # whole Q tiles per chunk
    for first in range(0, extent, rows):
        i = torch.arange(first, min(first + rows, extent))
        group = (i % dilation)[:, None]
        lo = torch.maximum(kv_lo[None, :], start[i, None])
        hi = torch.minimum(kv_hi[None, :], end[i, None])
        # Keys of the query's dilation group in [lo, hi): lo >= start >= group, so lo - group >= 0.
        counts = ((hi - group + dilation - 1) // dilation - (lo - group + dilation - 1) // dilation).clamp(min=0)
        block_sums.index_add_(0, i // q_tile, counts)
    q_valid = (torch.arange(q_tiles) * q_tile).neg().add(extent).clamp(max=q_tile)
    kv_valid = kv_hi - kv_lo
    full = block_sums == q_valid[:, None] * kv_valid[None, :]
    return AxisCounts(
        attended=int(block_sums.sum()),
        q_tiles=q_tiles,
        kv_tiles=kv_tiles,
        full=int(full.sum()),
        nonempty=int((block_sums > 0).sum()),
    )


@dataclass(frozen=True)
class SimResult:
    """Sparsity and tile statistics of one GNA pattern with one (Q tile, KV tile) shape."""

    spec: GNASpec
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    density: float
    tile_pairs: int
    full_pairs: int
    partial_pairs: int
    empty_pairs: int

    @property
    def flop_bound(self) -> float:
        """Speedup over dense if only attended pairs cost FLOPs: ``1 / density``."""
        return 1.0 / self.density

    @property
    def visited_pairs(self) -> int:
        return self.full_pairs + self.partial_pairs

    @property
    def tile_bound(self) -> float:
        """Speedup over a dense tiled kernel if every visited pair costs a dense tile pair."""
        return self.tile_pairs / self.visited_pairs

    @property
    def perfectly_block_sparse(self) -> bool:
        return self.partial_pairs == 0

    def as_dict(self) -> dict:
        return {
            "grid": list(self.spec.grid),
            "window": list(self.spec.window),
            "stride": list(self.spec.stride),
            "dilation": list(self.spec.dilation),
            "causal": list(self.spec.causal),
            "q_tile": list(self.q_tile),
            "kv_tile": list(self.kv_tile),
            "density": self.density,
            "flop_bound": self.flop_bound,
            "tile_pairs": self.tile_pairs,
            "full_pairs": self.full_pairs,
            "partial_pairs": self.partial_pairs,
            "empty_pairs": self.empty_pairs,
            "tile_bound": self.tile_bound,
            "perfectly_block_sparse": self.perfectly_block_sparse,
        }


def simulate(
    grid: Sequence[int],
    window: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    causal: BoolOrTuple = False,
    q_tile: IntOrTuple = 1,
    kv_tile: IntOrTuple = 1,
) -> SimResult:
    """Simulate a tiled kernel on a GNA pattern.

    ``q_tile`` / ``kv_tile`` are the tile boxes (one extent per grid dimension, or one for all). With the
    default 1-token tiles the tile counts are token-pair counts.
    """
    spec = GNASpec.create(grid, window, stride, dilation, causal)
    q_tile = per_axis("q_tile", q_tile, spec.ndim, int)
    kv_tile = per_axis("kv_tile", kv_tile, spec.ndim, int)
    for name, tile in (("q_tile", q_tile), ("kv_tile", kv_tile)):
        for axis, extent in enumerate(tile):
            if extent < 1:
                raise ValueError(f"{name}[{axis}]={extent} must be >= 1")
    axes = [axis_counts(*spec.axis(d), q_tile[d], kv_tile[d]) for d in range(spec.ndim)]
    tile_pairs = prod(a.q_tiles * a.kv_tiles for a in axes)
    full = prod(a.full for a in axes)
    nonempty = prod(a.nonempty for a in axes)
    density = prod(a.attended / extent**2 for a, extent in zip(axes, spec.grid))
    return SimResult(
        spec=spec,
        q_tile=q_tile,
        kv_tile=kv_tile,
        density=density,
        tile_pairs=tile_pairs,
        full_pairs=full,
        partial_pairs=nonempty - full,
        empty_pairs=tile_pairs - nonempty,
    )


@dataclass(frozen=True)
class PaperConfig:
    """A published GNA configuration with the tiles of the published block-sparsity check."""

    name: str
    grid: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]

    def simulate(self) -> SimResult:
        return simulate(self.grid, self.window, self.stride, q_tile=self.q_tile, kv_tile=self.kv_tile)


# The checks published in NATTEN's docs for the GNA paper's settings (DESIGN.md section 4).
PAPER_CONFIGS = (
    PaperConfig("flux-4k", (256, 256), (80, 80), (16, 16), (16, 8), (16, 8)),
    PaperConfig("flux-4k stride 1", (256, 256), (80, 80), (1, 1), (16, 8), (16, 8)),
    PaperConfig("hunyuan-video-720p", (30, 48, 80), (18, 24, 24), (16, 8, 8), (2, 8, 8), (2, 8, 8)),
    PaperConfig("hunyuan-video-720p stride 1", (30, 48, 80), (18, 24, 24), (1, 1, 1), (2, 8, 8), (2, 8, 8)),
)
