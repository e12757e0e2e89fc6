"""The GNA neighborhood definition: per-dimension arguments, their validation, and key ranges.

This module is the single source of truth for which keys a query attends to. Every backend, the
block-sparsity simulator and the Triton kernel read the per-axis ranges computed here.

Tokens of a d-dimensional grid (d = 1, 2, 3) are flattened row-major. Each axis has a window ``w``,
stride ``s``, dilation ``r`` and causal flag. A key is a neighbor of a query iff it is a neighbor along
every axis. Along one axis of length ``L``, for a query at coordinate ``i``:

* dilation splits the axis into ``r`` interleaved groups (``i % r``); inside its group the query has
  coordinate ``c = i // r`` and the group has ``L // r + (1 if i % r < L % r else 0)`` positions; the rules
  below run on group coordinates and keys must belong to the query's group;
* non-causal: ``leader = min((c // s) * s + s // 2, Lg - 1)``,
  ``start = clamp(leader - w // 2, 0, Lg - w)``, keys ``[start, start + w)`` (border windows are shifted
  inward, never truncated: every query sees exactly ``w`` keys per axis);
* causal: ``leader = min((c // s) * s + s - 1, Lg - 1)``, ``start = max(leader - (w - 1), 0)``,
  keys ``[start, c + 1)``.

A window of 1 along an axis keeps only keys at the query's own coordinate on that axis (e.g. window 1
over time in a video: attention within each frame). It is also what an axis of extent 1 gets, since its
only key is the query's own position.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from numbers import Integral

import torch

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def per_axis(name: str, value, ndim: int, kind: type) -> tuple:
    """Broadcast a scalar to every axis, or check a per-axis sequence's length and element types."""
    is_scalar = isinstance(value, bool) if kind is bool else _is_int(value)
    if is_scalar:
        values = (value,) * ndim
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(
                f"{name} has {len(values)} entries but the grid has {ndim} dimensions; "
                f"pass one value for every dimension or a single value for all"
            )
    else:
        raise ValueError(f"{name} must be {kind.__name__} or a tuple of {kind.__name__}, got {value!r}")
    for axis, v in enumerate(values):
        if not (isinstance(v, bool) if kind is bool else _is_int(v)):
            raise ValueError(f"{name}[{axis}] must be {kind.__name__}, got {v!r}")
    return tuple(kind(v) for v in values)


@dataclass(frozen=True)
class GNASpec:
    """A validated GNA pattern over a token grid; every field holds one entry per grid dimension.

    Build it with :meth:`create`, which accepts scalars (applied to every dimension) or tuples.
    """

    grid: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]

    @classmethod
    def create(
        cls,
        grid: Sequence[int],
        window: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        causal: BoolOrTuple = False,
    ) -> GNASpec:
        """Normalize per-dimension arguments and raise one ``ValueError`` naming any invalid one."""
        if isinstance(grid, int) or not isinstance(grid, Sequence):
            raise ValueError(f"grid must be a tuple of 1, 2 or 3 extents, got {grid!r}")
        grid = tuple(grid)
        if not 1 <= len(grid) <= 3:
            raise ValueError(f"grid must have 1, 2 or 3 dimensions, got {len(grid)}: {grid}")
        for axis, extent in enumerate(grid):
            if not _is_int(extent) or extent < 1:
                raise ValueError(f"grid[{axis}] must be a positive int, got {extent!r}")
        grid = tuple(int(extent) for extent in grid)
        ndim = len(grid)
        window = per_axis("window", window, ndim, int)
        stride = per_axis("stride", stride, ndim, int)
        dilation = per_axis("dilation", dilation, ndim, int)
        causal = per_axis("causal", causal, ndim, bool)
        for axis in range(ndim):
            w, s, r, extent = window[axis], stride[axis], dilation[axis], grid[axis]
            if r < 1:
                raise ValueError(f"dilation[{axis}]={r} must be >= 1")
            if w < 1:
                raise ValueError(f"window[{axis}]={w} must be >= 1")
            if w * r > extent:
                raise ValueError(
                    f"window[{axis}]={w} with dilation {r} spans {w * r} positions but grid"
                    f"[{axis}] is {extent}; need window * dilation <= extent"
                )
            if not 1 <= s <= w:
                raise ValueError(f"stride[{axis}]={s} must be between 1 and window[{axis}]={w}")
        return cls(grid, window, stride, dilation, causal)

    @property
    def ndim(self) -> int:
        return len(self.grid)

    @property
    def num_tokens(self) -> int:
        return prod(self.grid)

    def axis(self, dim: int) -> tuple[int, int, int, int, bool]:
        """``(extent, window, stride, dilation, causal)`` of one dimension."""
        return self.grid[dim], self.window[dim], self.stride[dim], self.dilation[dim], self.causal[dim]

    def is_dense(self) -> bool:
        """True when every query attends to every grid token (window = extent, no dilation/causal)."""
        return all(
            w == extent and r == 1 and not c
            for extent, w, r, c in zip(self.grid, self.window, self.dilation, self.causal)
        )


def eager_cache(maxsize: int):
    """``functools.lru_cache`` for eager calls; under torch.compile the call runs uncached and is traced into the
    graph (dynamo traces through a cache anyway, and warns that it did)."""
    def decorate(function):
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def call(*args):
            return function(*args) if torch.compiler.is_compiling() else cached(*args)

        return call

    return decorate


@eager_cache(maxsize=256)
def _axis_bounds_cpu(extent: int, window: int, stride: int, dilation: int, causal: bool):
    i = torch.arange(extent)
    group = i % dilation
    c = i // dilation
    group_len = extent // dilation + (group < extent % dilation).long()
    if causal:
        leader = torch.minimum((c // stride) * stride + stride - 1, group_len - 1)
        start = (leader - (window - 1)).clamp(min=0)
        end = c + 1
    else:
        leader = torch.minimum((c // stride) * stride + stride // 2, group_len - 1)
        start = torch.minimum((leader - window // 2).clamp(min=0), group_len - window)
        end = start + window
    # Back to absolute coordinates: keys are start*r+g, (start+1)*r+g, ..., (end-1)*r+g.
    return start * dilation + group, (end - 1) * dilation + group + 1


def axis_bounds(
    extent: int, window: int, stride: int, dilation: int, causal: bool, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key range of every query along one axis, in absolute coordinates.

    Returns ``(start, end)``, int64 tensors of shape ``(extent,)``: key ``k`` is a neighbor of query ``i``
    along this axis iff ``start[i] <= k < end[i]`` and ``k % dilation == i % dilation``.
    """
    start, end = _axis_bounds_cpu(extent, window, stride, dilation, causal)
    return start.to(device), end.to(device)


def axis_mask(
    extent: int, window: int, stride: int, dilation: int, causal: bool, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean ``(extent, extent)`` neighbor matrix of one axis, ``[query, key]``."""
    start, end = axis_bounds(extent, window, stride, dilation, causal, device)
    k = torch.arange(extent, device=device)
    i = k[:, None]
    return (k >= start[:, None]) & (k < end[:, None]) & ((k - i) % dilation == 0)


def grid_mask(spec: GNASpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``(N, N)`` neighbor matrix over the flattened grid (row-major), ``[query, key]``.

    The box mask is the AND of the per-axis masks, i.e. their Kronecker product. Memory is N^2 bytes:
    meant for references and small grids only.
    """
    mask = torch.ones(1, 1, dtype=torch.bool, device=device)
    for dim in range(spec.ndim):
        m = axis_mask(*spec.axis(dim), device=device)
        n, L = mask.shape[0], m.shape[0]
        mask = (mask[:, None, :, None] & m[None, :, None, :]).reshape(n * L, n * L)
    return mask
