"""apply() / remove() / enabled(): install GNA into a diffusers transformer, reversibly.

How a sparse layer runs. The stock processors of both families do everything (projections, QK norms,
RoPE, text/image concatenation, output projections) and then make one call,
``dispatch_attention_fn(query, key, value, attn_mask=..., backend=self._attention_backend)`` with the
joint sequence in ``(B, S, H, D)``. Our processor subclasses keep the stock ``__call__`` untouched and
expose ``_attention_backend`` as a :class:`GNARoute`; the family module's ``dispatch_attention_fn`` is
wrapped (once, reference-counted) so calls that carry a route go to GNA and every other call passes
through unchanged. The route splits the joint sequence: image queries run ``gna_attention`` over the
latent grid with all valid text keys in the same softmax; text queries attend densely to all keys
through the stock dispatch. A user's later ``set_attention_backend(...)`` sets the route's dense backend.

A forward pre-hook on the transformer records the latent grid. Denoising steps are counted by wrapping
the pipeline scheduler's ``set_timesteps`` (a new generation: reset) and ``step`` (one step done), so
classifier-free guidance with several transformer calls per step counts once. A bare transformer counts
forward calls instead (``handle.reset_steps()`` starts a new generation).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from types import ModuleType

import torch
from tabulate import tabulate

from .backends import available_backends
from .config import ANY_FAMILY, ConfigError, GNAConfig, LayerPattern, dense_step_count, layer_patterns
from .ops import gna_attention
from .presets import resolve_preset

logger = logging.getLogger("gna_diffusers")

GridProbe = Callable[[torch.nn.Module, tuple, dict], tuple[int, ...]]


class UnsupportedModelError(TypeError):
    """The object given to apply() holds no transformer of a supported family."""


@dataclass(frozen=True)
class ModelPatch:
    """What gna_diffusers needs to know about one model family (defined in ``patches/<family>.py``)."""

    family: str
    transformer_class: type
    processor_class: type  # the GNA subclass of the stock processor
    stock_processor_class: type
    dispatch_module: ModuleType  # the module whose dispatch_attention_fn the stock processor calls
    blocks: dict[str, str]  # block type in presets -> attribute of the transformer holding those blocks
    text_first: bool  # joint sequence order: [text, image] (True) or [image, text]
    grid_probe: GridProbe  # latent token grid from the transformer's forward inputs
    video: bool  # pipeline output is .frames (B, F, H, W, C) rather than .images


class _Runtime:
    """Per-installation state the routes read: the grid of the current forward, and the step."""

    def __init__(self, config: GNAConfig, patterns: dict[tuple[str, int], LayerPattern], count_forward: bool):
        self.config = config
        self.patterns = patterns
        self.count_forward = count_forward
        self.grid: tuple[int, ...] | None = None
        self.step = 0
        self.calls = 0  # forward calls this generation, when counting forward calls
        self.dense_steps = dense_step_count(config, None) if count_forward else 0
        self._resolved: dict[tuple, LayerPattern] = {}
        self._logged_grids: set[tuple[int, ...]] = set()

    def new_generation(self, total_steps: int | None) -> None:
        self.step = self.calls = 0
        self.dense_steps = dense_step_count(self.config, total_steps)

    def resolved(self, layer: tuple[str, int], grid: tuple[int, ...]) -> LayerPattern:
        """The layer's pattern at ``grid`` (cached: the denoising loop resolves each layer once per grid)."""
        key = (layer, grid)
        if key not in self._resolved:
            self._resolved[key] = self.patterns[layer].resolve(self.config.base_grid, grid)
        return self._resolved[key]

    def pattern_now(self, layer: tuple[str, int]) -> LayerPattern | None:
        """The resolved pattern for this layer now, or None when the layer runs dense."""
        if self.patterns[layer].dense or self.step < self.dense_steps:
            return None
        return self.resolved(layer, self.grid)

    def layer_rows(self, grid: tuple[int, ...] | None) -> list[dict]:
        """One dict per attention layer: the preset's values (grid None) or those resolved at ``grid``."""
        rows = []
        for layer, pattern in self.patterns.items():
            row = {"blocks": layer[0], "index": layer[1], "dense": pattern.dense}
            if grid is not None:
                row["grid"] = list(grid)
                pattern = self.resolved(layer, grid)
            if not pattern.dense:
                row.update(window=list(pattern.window), stride=list(pattern.stride), dilation=list(pattern.dilation))
            rows.append(row)
        return rows

    def log_grid_once(self) -> None:
        if self.grid in self._logged_grids:
            return
        self._logged_grids.add(self.grid)
        logger.info("gna: grid %s, per-layer patterns: %s", self.grid, self.layer_rows(self.grid))


class GNARoute:
    """Stands in for a processor's attention backend; the wrapped dispatch hands its calls to this."""

    def __init__(self, runtime: _Runtime, layer: tuple[str, int], text_first: bool, dense_backend=None):
        self.runtime = runtime
        self.layer = layer
        self.text_first = text_first
        self.dense_backend = dense_backend

    def __call__(self, dispatch, query, key, value, attn_mask, kwargs) -> torch.Tensor:
        pattern = self.runtime.pattern_now(self.layer)
        if pattern is None:
            return dispatch(query, key, value, attn_mask=attn_mask, backend=self.dense_backend, **kwargs)
        grid = self.runtime.grid
        total, n = query.shape[1], prod(grid)
        m = total - n
        if m < 0:
            raise RuntimeError(f"gna: the layer got {total} tokens but the latent grid {grid} has {n}")
        image = slice(m, total) if self.text_first else slice(0, n)
        text = slice(0, m) if self.text_first else slice(n, total)
        text_valid = None
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool or attn_mask.ndim != 4 or attn_mask.shape[1:3] != (1, 1):
                raise NotImplementedError(
                    f"gna: only boolean key-padding masks (B, 1, 1, S) are supported, got "
                    f"{attn_mask.dtype} {tuple(attn_mask.shape)}"
                )
            text_valid = attn_mask[:, 0, 0, text]
        out_image = gna_attention(
            query[:, image], key[:, image], value[:, image], grid, pattern.window, pattern.stride, pattern.dilation,
            extra_k=key[:, text] if m else None, extra_v=value[:, text] if m else None,
            extra_kv_mask=text_valid if m else None, backend=self.runtime.config.backend,
        )
        if m == 0:
            return out_image
        out_text = dispatch(query[:, text], key, value, attn_mask=attn_mask, backend=self.dense_backend, **kwargs)
        return torch.cat([out_text, out_image] if self.text_first else [out_image, out_text], dim=1)


class RoutedProcessorMixin:
    """Mixed into a stock processor: its dispatch call carries a :class:`GNARoute` as the backend."""

    def __init__(self, route: GNARoute):
        super().__init__()
        self.route = route

    @property
    def _attention_backend(self):
        return self.route

    @_attention_backend.setter
    def _attention_backend(self, backend) -> None:  # diffusers' set_attention_backend: the dense path's backend
        self.route.dense_backend = backend


# dispatch_attention_fn wrappers installed per family module: module -> (original, installations).
_ROUTED: dict[ModuleType, tuple[Callable, int]] = {}


def _route_dispatch(module: ModuleType) -> None:
    if module in _ROUTED:
        original, count = _ROUTED[module]
        _ROUTED[module] = (original, count + 1)
        return
    original = module.dispatch_attention_fn

    def dispatch_attention_fn(query, key, value, attn_mask=None, *args, backend=None, **kwargs):
        if isinstance(backend, GNARoute):
            return backend(original, query, key, value, attn_mask, kwargs)
        return original(query, key, value, attn_mask, *args, backend=backend, **kwargs)

    module.dispatch_attention_fn = dispatch_attention_fn
    _ROUTED[module] = (original, 1)


def _unroute_dispatch(module: ModuleType) -> None:
    original, count = _ROUTED[module]
    if count == 1:
        module.dispatch_attention_fn = original
        del _ROUTED[module]
    else:
        _ROUTED[module] = (original, count - 1)


class GNAHandle:
    """What :func:`apply` installed; :meth:`describe` lists it, :meth:`remove` undoes it."""

    def __init__(self, transformer, scheduler, patch: ModelPatch, config: GNAConfig, runtime: _Runtime):
        self.transformer = transformer
        self.scheduler = scheduler
        self.patch = patch
        self.config = config
        self.runtime = runtime
        self._originals: dict[torch.nn.Module, object] = {}
        self._hooks: list = []
        self._scheduler_methods: list[str] = []
        self.active = True

    def layers(self) -> list[dict]:
        """One entry per attention layer: block type, index, and dense or the preset's (base-grid) values."""
        return self.runtime.layer_rows(None)

    def resolved_layers(self) -> list[dict]:
        """Like :meth:`layers`, with the values resolved for the latent grid of the last forward call."""
        return self.runtime.layer_rows(self.runtime.grid)

    def describe(self) -> str:
        """A table of the installed layers (values at the preset's base grid) and the dense warm-up."""
        body = [
            [f"{r['blocks']}.{r['index']}", "dense" if r["dense"] else "gna",
             *(("-", "-", "-") if r["dense"] else ("x".join(map(str, r[k])) for k in ("window", "stride", "dilation")))]
            for r in self.layers()
        ]
        warmup = self.config.dense_steps
        base = "x".join(map(str, self.config.base_grid)) if self.config.base_grid else "none (values as given)"
        head = (
            f"gna-diffusers on {type(self.transformer).__name__} (family {self.patch.family}), base grid "
            f"{base}, dense warm-up: {warmup}"
            f"{' steps' if isinstance(warmup, int) else ' of the steps'}, backend {self.config.backend}\n"
        )
        return head + tabulate(body, headers=["layer", "mode", "window", "stride", "dilation"], tablefmt="github")

    def reset_steps(self) -> None:
        """Start a new generation (bare transformers only; pipelines reset at set_timesteps)."""
        self.runtime.new_generation(None)

    def remove(self) -> None:
        """Restore the original processors, hooks and scheduler methods."""
        if not self.active:
            return
        for attn, processor in self._originals.items():
            attn.set_processor(processor)
        for hook in self._hooks:
            hook.remove()
        for name in self._scheduler_methods:
            delattr(self.scheduler, name)  # the instance attribute shadowed the class method
        _unroute_dispatch(self.patch.dispatch_module)
        del self.transformer._gna_handle
        self.active = False


def _find_parts(target) -> tuple[torch.nn.Module, object | None]:
    transformer = getattr(target, "transformer", None)
    if isinstance(transformer, torch.nn.Module):
        return transformer, getattr(target, "scheduler", None)
    if isinstance(target, torch.nn.Module):
        return target, None
    raise UnsupportedModelError(
        f"apply() takes a diffusers pipeline with a .transformer or the transformer itself, got {type(target).__name__}"
    )


def model_family(target) -> ModelPatch:
    """The family patch of a pipeline or transformer; raises UnsupportedModelError listing the families."""
    from gna_diffusers.patches import PATCHES

    transformer, _ = _find_parts(target)
    for patch in PATCHES.values():
        if isinstance(transformer, patch.transformer_class):
            return patch
    supported = ", ".join(f"{p.family} ({p.transformer_class.__name__})" for p in PATCHES.values())
    raise UnsupportedModelError(f"{type(transformer).__name__} is not supported; supported families: {supported}")


def apply(target, preset: str | Path | GNAConfig, *, backend: str | None = None) -> GNAHandle:
    """Swap the self-attention of a pipeline's transformer (or a bare transformer) for GNA.

    Args:
        target: a diffusers pipeline (its ``.transformer`` is patched and its scheduler counts steps) or
            a transformer module.
        preset: a shipped preset name (``gna-diffusers presets list``), a YAML file path, or a GNAConfig.
        backend: overrides the preset's GNA backend (``"auto"``, ``"triton"``, ``"flex"``, ...).

    Returns:
        a :class:`GNAHandle`. Everything is validated before anything is installed: on an error the
        model is left untouched.
    """
    transformer, scheduler = _find_parts(target)
    patch = model_family(transformer)
    config = resolve_preset(preset)
    if backend is not None:
        config = config.model_copy(update={"backend": backend})
    if config.family not in (patch.family, ANY_FAMILY):
        raise ConfigError(
            f"preset family {config.family!r} does not match the model: {type(transformer).__name__} is family "
            f"{patch.family!r}; pick a {patch.family} preset (gna-diffusers presets list)"
        )
    if config.backend not in available_backends():
        raise ConfigError(f"backend {config.backend!r} is unknown; available: {', '.join(available_backends())}")
    if getattr(transformer, "_gna_handle", None) is not None:
        raise RuntimeError("GNA is already applied to this transformer; call gna_diffusers.remove() first")
    block_lists = {name: getattr(transformer, attr) for name, attr in patch.blocks.items()}
    patterns = layer_patterns(config, {name: len(blocks) for name, blocks in block_lists.items()})
    count_forward = scheduler is None
    runtime = _Runtime(config, patterns, count_forward)  # raises for a fractional warm-up without a scheduler

    handle = GNAHandle(transformer, scheduler, patch, config, runtime)
    _route_dispatch(patch.dispatch_module)
    for name, blocks in block_lists.items():
        for index, block in enumerate(blocks):
            if patterns[(name, index)].dense:
                continue  # dense layers keep their stock processor
            attn = block.attn
            original = attn.processor
            route = GNARoute(runtime, (name, index), patch.text_first, getattr(original, "_attention_backend", None))
            handle._originals[attn] = original
            attn.set_processor(patch.processor_class(route))

    def record_grid(module, args, kwargs):
        runtime.grid = patch.grid_probe(module, args, kwargs)
        runtime.log_grid_once()
        if runtime.count_forward:  # the n-th forward call of a generation is step n
            runtime.step = runtime.calls
            runtime.calls += 1

    handle._hooks.append(transformer.register_forward_pre_hook(record_grid, with_kwargs=True))
    if not count_forward:
        original_set_timesteps, original_step = scheduler.set_timesteps, scheduler.step

        # functools.wraps keeps the signatures visible: diffusers inspects set_timesteps for `sigmas`.
        @functools.wraps(original_set_timesteps)
        def set_timesteps(*args, **kwargs):
            result = original_set_timesteps(*args, **kwargs)
            runtime.new_generation(len(scheduler.timesteps))
            return result

        @functools.wraps(original_step)
        def step(*args, **kwargs):
            result = original_step(*args, **kwargs)
            runtime.step += 1
            return result

        scheduler.set_timesteps, scheduler.step = set_timesteps, step
        handle._scheduler_methods = ["set_timesteps", "step"]
    transformer._gna_handle = handle
    return handle


def remove(target) -> None:
    """Undo :func:`apply` on a pipeline, a transformer or a handle; a no-op when nothing is installed."""
    if isinstance(target, GNAHandle):
        target.remove()
        return
    transformer, _ = _find_parts(target)
    handle = getattr(transformer, "_gna_handle", None)
    if handle is not None:
        handle.remove()


@contextlib.contextmanager
def enabled(target, preset: str | Path | GNAConfig, *, backend: str | None = None) -> Iterator[GNAHandle]:
    """``with enabled(pipe, "flux-4k"): ...``: GNA inside the block, the stock model after it."""
    handle = apply(target, preset, backend=backend)
    try:
        yield handle
    finally:
        handle.remove()
