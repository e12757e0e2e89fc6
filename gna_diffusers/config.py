"""GNA presets: a validated config (pydantic, loaded from YAML) and its per-layer resolution.

A preset is data. Example (``configs/flux-4k.yaml``)::

    family: flux                 # model family (see gna_diffusers.patches)
    base_grid: [256, 256]        # latent token grid the windows were designed for
    window: [80, 80]             # -1 = the whole extent of that dimension
    stride: [16, 16]
    dilation: 1
    dense_steps: 9               # first 9 denoising steps dense; or a fraction such as 0.3
    dense_layers: [{blocks: double, layers: "0-1"}]
    overrides: [{blocks: single, layers: "30-37", window: [96, 96]}]
    backend: auto

Resolution adaptation: when the runtime grid differs from ``base_grid``, windows and strides are
rescaled per dimension by ``runtime / base``, rounded (halves up) to the nearest multiple of the preset's alignment unit
(the largest power of two <= 8 dividing both base window and base stride, so block-sparse presets stay
tile aligned), then clamped: 2 <= window <= extent and 1 <= stride <= window. A window of -1 is the
whole extent at any resolution. An axis of extent 1 (a one-frame video) gets window 1: its only key is
the query's own position.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PerDim = int | list[int]


ANY_FAMILY = "any"  # a preset that fits every family (no base grid, no layer rules), e.g. dense-check


class ConfigError(ValueError):
    """A preset that cannot be used; the message names the file, the key path and what is allowed."""


def _layer_indices(spec: str | int | list[int]) -> list[int]:
    """``"0-9"``, ``"3"``, ``"0-3,7"``, ``5`` or ``[1, 2]`` -> sorted indices."""
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list):
        return sorted(set(spec))
    out: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"layer range {spec!r} is not of the form '0-9', '3' or '0-3,7'")
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise ValueError(f"layer range {part.strip()!r} ends before it starts")
        out.update(range(lo, hi + 1))
    return sorted(out)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerSelector(_Strict):
    """Layers of one block type: ``blocks`` is a block type of the family (e.g. ``double``, ``single``)."""

    blocks: str
    layers: str | int | list[int] = Field(default="all")

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value):
        if value != "all":
            _layer_indices(value)
        return value

    def indices(self, count: int) -> list[int]:
        return list(range(count)) if self.layers == "all" else [i for i in _layer_indices(self.layers)]


class LayerOverride(LayerSelector):
    """Window / stride / dilation for the selected layers (unset fields keep the preset defaults)."""

    window: PerDim | None = None
    stride: PerDim | None = None
    dilation: PerDim | None = None


class GNAConfig(_Strict):
    """A validated GNA preset. Build with :func:`load_config` or directly in Python."""

    family: str  # a family of gna_diffusers.patches, or "any"
    # The latent grid the values were designed for; None: use them as given at every resolution (then
    # window / stride / dilation must be single values, the same for every dimension).
    base_grid: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1, max_length=3)
    window: PerDim
    stride: PerDim = 1
    dilation: PerDim = 1
    dense_steps: int | float = 0  # a count of leading steps, or a fraction of them in [0, 1)
    dense_layers: list[LayerSelector] = Field(default_factory=list)
    overrides: list[LayerOverride] = Field(default_factory=list)
    backend: str = "auto"
    description: str = ""

    @field_validator("family")
    @classmethod
    def _check_family(cls, value: str) -> str:
        from gna_diffusers.patches import PATCHES, UNAVAILABLE

        if value != ANY_FAMILY and value not in PATCHES:
            missing = (f" (not importable with this diffusers: {', '.join(UNAVAILABLE)}; upgrade it)" if UNAVAILABLE
                       else "")
            raise ValueError(f"unknown family {value!r}; allowed: {', '.join([*PATCHES, ANY_FAMILY])}{missing}")
        return value

    @field_validator("dense_steps", mode="before")
    @classmethod
    def _check_dense_steps(cls, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"must be a step count >= 0 or a fraction in [0, 1), got {value!r}")
        if isinstance(value, float) and value >= 1:
            raise ValueError(f"a fraction of the steps must be < 1, got {value}; give a count as an integer")
        return value

    @model_validator(mode="after")
    def _check_block_types(self):
        from gna_diffusers.patches import PATCHES

        if self.family == ANY_FAMILY:
            if self.dense_layers or self.overrides:
                raise ValueError("dense_layers and overrides name block types: they need a model family, not 'any'")
            return self
        allowed = PATCHES[self.family].blocks
        for name, selectors in (("dense_layers", self.dense_layers), ("overrides", self.overrides)):
            for i, selector in enumerate(selectors):
                if selector.blocks not in allowed:
                    raise ValueError(
                        f"{name}[{i}].blocks: unknown block type {selector.blocks!r} for family {self.family!r}; "
                        f"allowed: {', '.join(allowed)}"
                    )
        return self

    @model_validator(mode="after")
    def _check_per_dim(self):
        if self.base_grid is None:
            for name in ("window", "stride", "dilation"):
                if isinstance(getattr(self, name), list):
                    raise ValueError(f"{name}: per-dimension values need base_grid; give one value or add base_grid")
            if self.window != -1 and self.window < 2:
                raise ValueError(f"window={self.window}: must be >= 2, or -1 for the whole extent")
            if self.window != -1 and self.stride > self.window:
                raise ValueError(f"stride={self.stride} is larger than window={self.window}")
            if self.stride < 1 or self.dilation < 1:
                raise ValueError("stride and dilation must be >= 1")
            return self
        ndim = len(self.base_grid)
        for where, item in [("", self), *((f"overrides[{i}].", o) for i, o in enumerate(self.overrides))]:
            for name in ("window", "stride", "dilation"):
                value = getattr(item, name)
                if value is None:
                    continue
                values = value if isinstance(value, list) else [value] * ndim
                if len(values) != ndim:
                    raise ValueError(f"{where}{name} has {len(values)} entries but base_grid has {ndim}")
                for d, v in enumerate(values):
                    if name == "window" and v != -1 and v < 2:
                        raise ValueError(f"{where}window[{d}]={v}: must be >= 2, or -1 for the whole extent")
                    if name != "window" and v < 1:
                        raise ValueError(f"{where}{name}[{d}]={v}: must be >= 1")
            window = expand_per_dim(self.window if item.window is None else item.window, ndim)
            stride = expand_per_dim(self.stride if item.stride is None else item.stride, ndim)
            dilation = expand_per_dim(self.dilation if item.dilation is None else item.dilation, ndim)
            for d in range(ndim):
                w = self.base_grid[d] if window[d] == -1 else window[d]
                if stride[d] > w:
                    raise ValueError(f"{where}stride[{d}]={stride[d]} is larger than window[{d}]={w}")
                if w * dilation[d] > self.base_grid[d]:
                    raise ValueError(
                        f"{where}window[{d}]={w} with dilation {dilation[d]} exceeds base_grid[{d}]="
                        f"{self.base_grid[d]}"
                    )
        return self


def _round_half_up(value: float, unit: int) -> int:
    """The nearest multiple of ``unit`` (halves go up, unlike Python's round)."""
    return int(value / unit + 0.5) * unit


def expand_per_dim(value: PerDim, ndim: int) -> list[int]:
    """A per-dimension value as a list of ``ndim`` entries (one value applies to every dimension)."""
    return list(value) if isinstance(value, list) else [value] * ndim


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {path}: {message}" if path else f"{source}: {message}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> GNAConfig:
    """Validate a mapping (e.g. parsed YAML); raise :class:`ConfigError` naming ``source`` and key paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (family, base_grid, window, ...), "
                          f"got {type(data).__name__}")
    try:
        return GNAConfig.model_validate(data)
    except ValidationError as error:
        allowed = ", ".join(GNAConfig.model_fields)
        raise ConfigError(f"{_format_validation_error(error, source)}\n(allowed top-level keys: {allowed})") from None


def load_config(path: str | Path) -> GNAConfig:
    """Read and validate a YAML preset file."""
    path = Path(path)
    try:
        with path.open() as stream:  # a named stream: YAML errors point at the file, line and column
            data = yaml.safe_load(stream)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read preset file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    return parse_config(data, str(path))


@dataclass(frozen=True)
class LayerPattern:
    """What one attention layer runs: dense, or GNA with these per-dimension values (base-grid terms)."""

    dense: bool
    window: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    def resolve(self, base_grid: Sequence[int] | None, grid: Sequence[int]) -> LayerPattern:
        """Rescale to the runtime ``grid`` (see the module docstring for the rule). Without a base grid the
        single values apply to every dimension unscaled (clamped to the grid)."""
        if self.dense:
            return self
        if base_grid is None:
            ndim = len(grid)
            unscaled = LayerPattern(False, self.window * ndim, self.stride * ndim, self.dilation * ndim)
            return unscaled.resolve(grid, grid)
        if len(grid) != len(base_grid):
            raise ConfigError(
                f"the preset is for a {len(base_grid)}-D grid {tuple(base_grid)} but the model produced a "
                f"{len(grid)}-D grid {tuple(grid)}"
            )
        window, stride, dilation = [], [], []
        for base, extent, w, s, r in zip(base_grid, grid, self.window, self.stride, self.dilation):
            r = r if extent // r >= 2 else 1  # an axis too short for the dilation runs undilated
            dilation.append(r)
            if w == -1:
                window.append(extent // r)
                stride.append(1)
                continue
            unit = min(8, gcd(w, s) & -gcd(w, s))  # largest power of two dividing both, at most 8
            scale = extent / base
            new_w = max(unit, _round_half_up(w * scale, unit)) if extent != base else w
            new_s = max(1, _round_half_up(s * scale, unit)) if extent != base else s
            new_w = max(min(2, extent // r), min(new_w, extent // r))  # an axis of extent 1 gets window 1
            window.append(new_w)
            stride.append(max(1, min(new_s, new_w)))
        return LayerPattern(False, tuple(window), tuple(stride), tuple(dilation))


def layer_patterns(config: GNAConfig, block_counts: dict[str, int]) -> dict[tuple[str, int], LayerPattern]:
    """The pattern of every attention layer, keyed by (block type, index); raises ConfigError on bad selectors."""
    ndim = len(config.base_grid) if config.base_grid is not None else 1  # 1: broadcast when resolved
    default = LayerPattern(
        False, tuple(expand_per_dim(config.window, ndim)), tuple(expand_per_dim(config.stride, ndim)),
        tuple(expand_per_dim(config.dilation, ndim)),
    )
    patterns = {(blocks, i): default for blocks, count in block_counts.items() for i in range(count)}

    def selected(selector: LayerSelector, where: str) -> list[tuple[str, int]]:
        if selector.blocks not in block_counts:
            raise ConfigError(
                f"{where}.blocks: unknown block type {selector.blocks!r} for family {config.family!r}; "
                f"allowed: {', '.join(block_counts)}"
            )
        count = block_counts[selector.blocks]
        indices = selector.indices(count)
        if indices and indices[-1] >= count:
            have = f"{count} layers (0-{count - 1})" if count else "no layers in this model"
            raise ConfigError(f"{where}.layers: index {indices[-1]} out of range; {selector.blocks} has {have}")
        return [(selector.blocks, i) for i in indices]

    for n, override in enumerate(config.overrides):
        for key in selected(override, f"overrides[{n}]"):
            base = patterns[key]
            patterns[key] = LayerPattern(
                False,
                tuple(expand_per_dim(override.window, ndim)) if override.window is not None else base.window,
                tuple(expand_per_dim(override.stride, ndim)) if override.stride is not None else base.stride,
                tuple(expand_per_dim(override.dilation, ndim)) if override.dilation is not None else base.dilation,
            )
    for n, selector in enumerate(config.dense_layers):
        for key in selected(selector, f"dense_layers[{n}]"):
            patterns[key] = LayerPattern(True)
    return patterns


def dense_step_count(config: GNAConfig, total_steps: int | None) -> int:
    """Number of leading denoising steps that run dense (a fraction needs the total step count)."""
    if isinstance(config.dense_steps, int):
        return config.dense_steps
    if total_steps is None:
        raise ConfigError(
            f"dense_steps={config.dense_steps} is a fraction of the steps, but the step count is unknown: "
            f"apply the preset to a pipeline (not a bare transformer) or give dense_steps as a count"
        )
    return round(config.dense_steps * total_steps)
