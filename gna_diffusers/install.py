"""apply() / remove() / enabled(): install GNA into a diffusers transformer, reversibly.

Each sparse attention layer gets a GNA processor whose attention call carries a route (:mod:`.route`: how
a sparse layer runs). A user's later ``set_attention_backend(...)`` sets the route's dense backend.

A forward pre-hook on the transformer, before every call: re-attaches routes to processors that diffusers'
loaders rebuilt or replaced (``type(processor)()``, IP-Adapter processors), probes the token layout,
resolves and validates every layer's pattern for a new grid (so a pattern that cannot run is reported at
the first call, not after the dense warm-up), and hands each route the pattern of this call (or None:
dense). Denoising steps are counted by the pipeline schedulers' ``set_timesteps`` (a new generation)
and ``step`` (one step done), so classifier-free guidance with several transformer calls per step counts
once; several pipelines sharing one transformer each count through their own scheduler. A modular pipeline
whose denoising loop steps without a scheduler (Echo's DMD loop walks its own sigmas) is counted by that loop: its
``progress_bar`` total starts a generation and each ``loop_step`` ends a step. A bare transformer counts forward
calls instead (``handle.reset_steps()`` starts a new generation).

Everything the installation holds is plain objects (no closures), so ``copy.deepcopy`` of a patched
pipeline or transformer gives an independently patched copy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from tabulate import tabulate

from .backends import available_backends
from .config import ANY_FAMILY, ConfigError, GNAConfig, LayerPattern, dense_step_count, layer_patterns
from .presets import resolve_preset
from .route import (
    GNARoute,
    LayoutError,
    LayoutProbe,
    RoutedProcessorMixin,
    TokenLayout,
    _route_dispatch,
    _unroute_dispatch,
)
from .spec import GNASpec

logger = logging.getLogger("gna_diffusers")


class UnsupportedModelError(TypeError):
    """The object given to apply() holds no transformer of a supported family."""


@dataclass(frozen=True)
class ModelPatch:
    """What gna_diffusers needs to know about one model family (defined in ``patches/<family>.py``)."""

    family: str
    transformer_class: type
    processor_class: type  # the GNA subclass of the stock processor
    stock_processor_class: type
    # The module whose dispatch_attention_fn the stock processor calls (or, with ``calls_sdpa``, whose ``F``).
    dispatch_module: ModuleType
    blocks: dict[str, str]  # block type in presets -> attribute (dotted path) of the transformer holding those blocks
    text_first: bool  # where text shares the sequence: [text, image stream] (True) or [image stream, text]
    # Token layout from the transformer's forward inputs; raises LayoutError; None for a call of context tokens
    # alone (GLM-Image's condition images filling its KV cache), which runs stock and is no denoising step.
    layout_probe: LayoutProbe
    video: bool  # pipeline output is .frames (B, F, H, W, C) rather than .images
    # Other processors diffusers may put on a sparse layer (e.g. IP-Adapter's) whose self-attention call
    # also goes through dispatch_module with ``backend=self._attention_backend``: GNA stays on for them.
    adoptable_processors: tuple[type, ...] = ()
    # The layout from what the pipeline's ``prepare_latents`` returned (None: not recognised), computed
    # outside the transformer call, so a compiled transformer's probe needs no host sync.
    layout_from_prepared: Callable[[object, torch.nn.Module], TokenLayout | None] | None = None
    attention: str = "attn"  # the attribute (dotted path) of a block holding its self-attention module
    # GNA processor classes for block types whose stock processor differs (FLUX.2's single blocks).
    block_processors: dict[str, type] = field(default_factory=dict)
    # Other stock processors a pipeline may put on the blocks -> the GNA subclass installed in their place
    # (FLUX.2 klein's KV-cache processors, whose extra call arguments the plain subclass would drop).
    processor_variants: dict[type, type] = field(default_factory=dict)
    # Whether self-attention keys may carry context tokens the queries lack, next to the grid (FLUX.2 klein's cached
    # reference keys, GLM-Image's cached condition keys; PRX's and NucleusMoE-Image's image-only queries): see
    # GNARoute.
    cached_context_keys: bool = False
    # Other transformer classes of the family (Wan VACE), and the family's ControlNet classes: a pipeline's
    # ControlNet of one of them (alone or in a multi-ControlNet) is patched beside the transformer when it has
    # at most the transformer's blocks (the preset's layer rules apply by index); a block list a class lacks
    # has no layers there.
    other_transformer_classes: tuple[type, ...] = ()
    # ``blocks`` of those classes that hold the family's blocks under other names (Cosmos 2.5 Transfer's ControlNet:
    # ``control_blocks``); a block type missing from a class's map has no layers there.
    other_class_blocks: dict[type, dict[str, str]] = field(default_factory=dict)
    # Pipeline attributes holding transformers of this family (Wan 2.2 A14B: two experts, one scheduler).
    pipeline_transformers: tuple[str, ...] = ("transformer",)
    # Pipeline methods whose call tells what the prepared latents do not (WanVACEPipeline.prepare_video_latents:
    # the reference images whose latent frames precede the video's): name -> (args, kwargs) -> a function
    # applied to the layout the next ``prepare_latents`` gives.
    pipeline_observers: dict[str, Callable[[tuple, dict], Callable[[TokenLayout], TokenLayout]]] = field(
        default_factory=dict)
    # (transformer, context-parallel degree: ring x Ulysses) -> a context-parallel plan, for a family diffusers
    # ships none for.
    parallel_plan: Callable[[torch.nn.Module, int], dict] | None = None
    # Block types whose self-attention sequence is the grid alone even when the image stream also carries
    # context tokens (FLUX.3's per-mode image blocks, beside the references' own blocks).
    grid_only_blocks: tuple[str, ...] = ()
    # Whether the grid's queries (and those of any stream tokens after it) come in an attention call of their own,
    # against every key of the layer's sequence, which the layout's stream then holds whole (Qwen-Image 2.1, whose
    # block-causal prefill runs each context segment as another call; Cosmos 3, whose prompt has a causal pathway
    # of its own): see GNARoute.
    grid_queries_alone: bool = False
    # Whether the stock processor calls F.scaled_dot_product_attention itself, not diffusers' dispatch (CogVideoX,
    # Mochi, Allegro, EasyAnimate): the module's ``F`` is routed, and the GNA processor class sets
    # ``routes_sdpa_calls_of`` to the same module.
    calls_sdpa: bool = False
    # The pipeline method whose result ``layout_from_prepared`` reads: ``prepare_latents``, or a later one where the
    # latents alone do not give the grid (Krea 2's ``prepare_position_ids``).
    layout_method: str = "prepare_latents"
    # Further attributes of a block holding a self-attention over the same grid, run with the block's pattern and
    # route (SD3.5's ``attn2``, over the image tokens alone, sharing ``attn``'s processor in stock); a block may lack
    # them (None).
    extra_attention: tuple[str, ...] = ()
    # The attributes of an attention module holding its processors: diffusers' ``processor``, or, for a layer with no
    # processor, the parameter-free modules that call attention in their own forward (Sana-WM's softmax layers:
    # ``attn`` and ``cam_attn``, two calls over the same grid): each gets GNA's subclass in its place, one route.
    processor_slots: tuple[str, ...] = ("processor",)
    # Processors of layers with nothing GNA makes sparse (Sana-WM's linear-attention blocks, whose slots hold their
    # delta-rule modules): those layers get no route and no notice.
    dense_processors: tuple[type, ...] = ()
    # Modules, besides ``dispatch_module``, whose dispatch the stock processors of some block types call (Bria FIBO's
    # single blocks: Bria 3's processor, from transformer_bria).
    more_dispatch_modules: tuple[ModuleType, ...] = ()

    @property
    def routed_attribute(self) -> str:
        """The attribute of ``dispatch_module`` an installation replaces with its routed stand-in."""
        return "F" if self.calls_sdpa else "dispatch_attention_fn"

    @property
    def routed_modules(self) -> tuple[ModuleType, ...]:
        """Every module whose ``routed_attribute`` an installation routes: ``dispatch_module`` and the modules of
        ``block_processors`` taken from another family (Bria FIBO's single blocks run Bria 3's processor)."""
        return (self.dispatch_module, *self.more_dispatch_modules)

    def __deepcopy__(self, memo) -> ModelPatch:
        return self  # immutable description of a family (it holds a module, which cannot be copied)

    def handles(self, transformer: torch.nn.Module) -> bool:
        return isinstance(transformer, (self.transformer_class, *self.other_transformer_classes))

    def block_lists(self, transformer: torch.nn.Module) -> dict[str, list]:
        """The transformer's blocks per block type (empty for a block list its class lacks)."""
        paths = next((blocks for cls, blocks in self.other_class_blocks.items() if isinstance(transformer, cls)),
                     self.blocks)

        def resolve(path: str):
            holder = functools.reduce(lambda holder, name: getattr(holder, name, None), path.split("."), transformer)
            return holder if holder is not None else ()

        return {name: list(resolve(paths[name])) if name in paths else [] for name in self.blocks}

    def attention_modules(self, block: torch.nn.Module) -> list[torch.nn.Module]:
        """A block's self-attention module (``attention`` may be a dotted path: Kandinsky 6's fused blocks), then
        those of ``extra_attention`` the block has."""
        def resolve(path: str) -> torch.nn.Module | None:
            return functools.reduce(lambda holder, name: getattr(holder, name, None), path.split("."), block)

        extra = [module for module in map(resolve, self.extra_attention) if module is not None]
        return [resolve(self.attention), *extra]

    def attention_slots(self, block: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
        """(attention module, attribute holding a processor) of each attention call of a block's sparse layer; none
        for a layer of ``dense_processors``."""
        return [(module, slot) for module in self.attention_modules(block) for slot in self.processor_slots
                if not isinstance(getattr(module, slot, None), self.dense_processors)]

    def processor_for(self, block_type: str, current: object) -> type:
        """The GNA processor class for a block type whose attention now has processor ``current``."""
        return self.processor_variants.get(type(current)) or self.block_processors.get(block_type, self.processor_class)


class _Runtime:
    """Per-installation state: the generation in progress, the pipeline's prepared layout, and the
    patterns per grid. ``sparse`` (the one value a compiled forward reads) changes only outside the
    transformer call, when a scheduler step ends, so torch.compile sees it flip once per generation."""

    def __init__(self, config: GNAConfig, patterns: dict[tuple[str, int], LayerPattern], count_forward: bool,
                 transformer: torch.nn.Module, patch: ModelPatch):
        self.config = config
        self.patterns = patterns
        self.count_forward = count_forward
        self.transformer = transformer
        self.patch = patch  # its layout_method, layout_from_prepared and pipeline_observers read the pipeline
        self.layout: TokenLayout | None = None
        self.prepared: TokenLayout | None = None  # from the pipeline's prepare_latents, this generation
        self.prepared_adjustment: Callable[[TokenLayout], TokenLayout] | None = None  # from a pipeline observer
        self.step = 0
        self.calls = 0  # forward calls this generation, when counting forward calls
        self.total_steps: int | None = None  # of the generation in progress, when a scheduler counts
        self.dense_steps = dense_step_count(config, None) if count_forward else 0
        self.sparse = self.dense_steps == 0
        self.generation_over = False  # every counted step done: a later call is from an uncounted pipeline
        self.called_since_step = False  # the transformer ran since the last counted step
        self._resolved: dict[tuple, LayerPattern] = {}
        self._checked_grids: set[tuple[int, ...]] = set()
        self._notified: set[tuple[str, str]] = set()
        # Notices raised inside a compiled forward, where a warning would vanish (or fail a fullgraph compile):
        # given at the next scheduler call or eager transformer call.
        self._deferred: dict[str, tuple[str, bool]] = {}

    def notify_once(self, key: str, message: str, warn: bool) -> None:
        """Warn (or log at info) ``message`` once per installation, ``key`` and message; deferred while compiling,
        the last message per ``key`` (a constant there: a message made inside the graph may not be hashable)."""
        if _compiling():
            self._deferred[key] = (message, warn)  # a side effect torch.compile replays after the graph
            return
        if (key, message) in self._notified:
            return
        self._notified.add((key, message))
        if warn:
            warnings.warn(message, stacklevel=4)
        else:
            logger.info(message)

    def _give_deferred(self) -> None:
        deferred, self._deferred = self._deferred, {}
        for key, (message, warn) in deferred.items():
            self.notify_once(key, message + " (in a torch.compile'd forward)", warn)

    @property
    def grid(self) -> tuple[int, ...] | None:
        return None if self.layout is None else self.layout.grid

    def new_generation(self, total_steps: int | None) -> None:
        self.step = self.calls = 0
        self.total_steps = total_steps
        self.dense_steps = dense_step_count(self.config, total_steps)
        self._set_step(0)

    def _set_step(self, step: int, ends_generation: bool = True) -> None:
        self.step = step
        self.sparse = step >= self.dense_steps
        self.generation_over = ends_generation and self.total_steps is not None and step >= self.total_steps
        if self.generation_over:
            self.prepared = self.prepared_adjustment = None  # belong to the generation that just ended

    def observe(self, name: str, owner, result, follower: bool = False, call: tuple = ((), {})) -> None:
        """Called after a wrapped scheduler or pipeline method returned ``result`` for ``call`` (args, kwargs).
        ``follower``: from a copy of the pipeline's scheduler (see _ObservedMethod)."""
        self._give_deferred()
        if name == "set_timesteps":
            # A follower's schedule starts a generation only once steps were taken (SkyReels-V2's next
            # long-video chunk); LTX-2's audio copy is set right after the video scheduler.
            if not follower or self.step > 0:
                self.new_generation(len(owner.timesteps))
        elif name == "progress_bar":  # a scheduler-free denoising loop starts: its bar's length is the step count
            self.new_generation(_bar_length(*call))
        elif name in ("step", "loop_step"):
            # One denoising step per round of transformer calls, however many schedulers step after it.
            # A follower's count of steps (diffusion forcing's matrix of steps) can outrun the schedule.
            if self.called_since_step:
                self.called_since_step = False
                self._set_step(self.step + 1, ends_generation=not follower)
        elif name == self.patch.layout_method:
            layout = self.patch.layout_from_prepared(result, self.transformer)
            if layout is not None and self.prepared_adjustment is not None:
                layout = self.prepared_adjustment(layout)
            self.prepared_adjustment = None
            if layout is not None:
                self.check_grid(layout.grid)
            self.prepared = layout
        elif name in self.patch.pipeline_observers:
            self.prepared_adjustment = self.patch.pipeline_observers[name](*call)

    def count_call(self) -> None:
        """A bare transformer's forward call: the n-th call of a generation is step n."""
        if self.dense_steps:  # with no warm-up nothing to count (and nothing for torch.compile to specialise on)
            self._set_step(self.calls)
            self.calls += 1

    def resolved(self, layer: tuple[str, int], grid: tuple[int, ...]) -> LayerPattern:
        """The layer's pattern at ``grid`` (cached: the denoising loop resolves each layer once per grid).
        While compiling, computed without the cache: torch.compile would guard on the cache's contents, and the
        first call's entries would recompile the next call."""
        key = (layer, grid)
        if _compiling():
            return self.patterns[layer].resolve(self.config.base_grid, grid)
        if key not in self._resolved:
            self._resolved[key] = self.patterns[layer].resolve(self.config.base_grid, grid)
        return self._resolved[key]

    def check_grid(self, grid: tuple[int, ...]) -> None:
        """Resolve every sparse layer at a new ``grid`` and validate it; raise ConfigError naming the layer."""
        if grid in self._checked_grids:
            return
        for layer, pattern in self.patterns.items():
            if pattern.dense:
                continue
            resolved = self.resolved(layer, grid)
            try:
                GNASpec.create(grid, resolved.window, resolved.stride, resolved.dilation)
            except ValueError as error:
                raise ConfigError(
                    f"gna: layer {layer[0]}.{layer[1]} cannot run on the latent grid {grid}: {error}; pick a preset "
                    f"made for this resolution or adjust its window / stride / dilation"
                ) from None
        if not _compiling():  # as in resolved(): a set changed inside the graph would recompile the next call
            self._checked_grids.add(grid)
            logger.info("gna: grid %s, per-layer patterns: %s", grid, self.layer_rows(grid))

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


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class _ObservedMethod:
    """A scheduler or pipeline method that reports each result to the runtime (``set_timesteps`` starts a
    generation, ``step`` ends a step, ``prepare_latents`` gives the layout). An object rather than a
    closure, so deepcopy copies it along with its owner.

    Copied with the pipeline it belongs to (``anchor``), it reports to the copy's installation. A scheduler
    copied on its own reports to this installation as a *follower*: LTX-2 steps an audio copy of its
    scheduler beside the video one, SkyReels-V2's diffusion forcing one copy per latent frame."""

    def __init__(self, owner, name: str, runtime: _Runtime, anchor=None, follower: bool = False):
        self.owner = owner
        self.name = name
        self.original = getattr(owner, name)
        self.runtime = runtime
        self.anchor = owner if anchor is None else anchor
        self.follower = follower

    @property
    def __signature__(self) -> inspect.Signature:  # diffusers inspects set_timesteps for `sigmas`
        return inspect.signature(self.original)

    def __call__(self, *args, **kwargs):
        result = self.original(*args, **kwargs)
        self.runtime.observe(self.name, self.owner, result, self.follower, (args, kwargs))
        return result

    def __deepcopy__(self, memo) -> _ObservedMethod:
        alone = id(self.anchor) not in memo and id(self.runtime) not in memo
        shared = {"runtime": self.runtime, "anchor": self.anchor} if alone else {}  # not copied: the model's
        copied = object.__new__(_ObservedMethod)
        memo[id(self)] = copied
        for key, value in vars(self).items():
            setattr(copied, key, shared[key] if key in shared else copy.deepcopy(value, memo))
        copied.follower = self.follower or alone
        return copied


def _observe(owner, names: tuple[str, ...], runtime: _Runtime, anchor=None) -> None:
    for name in names:
        setattr(owner, name, _ObservedMethod(owner, name, runtime, anchor))


def _unobserve(owner, names: tuple[str, ...]) -> None:
    for name in names:
        if isinstance(vars(owner).get(name), _ObservedMethod):
            delattr(owner, name)  # the instance attribute shadowed the class method


_SCHEDULER_METHODS = ("set_timesteps", "step")
_LOOP_METHODS = ("progress_bar", "loop_step")  # of a modular denoising loop that has no scheduler


def _counted_methods(counter) -> tuple[str, ...]:
    """The methods of a step counter (a scheduler or a modular denoising loop) that report to the runtime."""
    return _LOOP_METHODS if _is_denoising_loop(counter) else _SCHEDULER_METHODS


def _is_denoising_loop(blocks) -> bool:
    from diffusers.modular_pipelines import LoopSequentialPipelineBlocks

    return isinstance(blocks, LoopSequentialPipelineBlocks)


def _denoising_loops(blocks) -> list:
    """The loop blocks (LoopSequentialPipelineBlocks) among a modular pipeline's blocks, in order; [] for none."""
    if _is_denoising_loop(blocks):
        return [blocks]
    return [loop for sub in getattr(blocks, "sub_blocks", {}).values() for loop in _denoising_loops(sub)]


def _bar_length(args: tuple, kwargs: dict) -> int | None:
    """The length of the bar a loop's ``progress_bar(iterable=None, total=None)`` call makes (None: unknown)."""
    bound = dict(zip(("iterable", "total"), args)) | kwargs
    if bound.get("total") is not None:
        return int(bound["total"])
    iterable = bound.get("iterable")
    return len(iterable) if hasattr(iterable, "__len__") else None


def _context_config(config):
    """The ContextParallelConfig in a diffusers ParallelConfig, ContextParallelConfig, TensorParallelConfig
    or None (None when there is no context parallelism)."""
    return getattr(config, "context_parallel_config", config if hasattr(config, "ring_degree") else None)


def context_parallel_degree(config) -> int:
    """How many ranks share the sequence under ``config`` (ring x Ulysses degree; 1 without context
    parallelism)."""
    context = _context_config(config)
    return 1 if context is None else context.ring_degree * context.ulysses_degree


class _EnableParallelism:
    """Stands in for a patched transformer's ``enable_parallelism``: diffusers checks each processor's
    ``_attention_backend`` against its backends, so the routes step aside during the call (the check then
    sees the dense paths' backend) and come back after it. A family diffusers ships no plan for gets its
    own (``ModelPatch.parallel_plan``)."""

    def __init__(self, handle: GNAHandle, transformer: torch.nn.Module):
        self.handle = handle
        self.transformer = transformer

    def __call__(self, config=None, cp_plan=None, **kwargs):
        plan_for = self.handle.patch.parallel_plan
        degree = context_parallel_degree(config)
        if cp_plan is None and getattr(self.transformer, "_cp_plan", None) is None and plan_for and degree > 1:
            cp_plan = plan_for(self.transformer, degree)  # the family's own plan
        sites = [site for site in self.handle._sites if site.transformer is self.transformer]
        routed = []
        for site in sites:
            processor = site.processor
            if isinstance(processor, RoutedProcessorMixin) and processor.route is site.route:
                processor.route = None
                routed.append((processor, site.route))
        try:
            return type(self.transformer).enable_parallelism(self.transformer, config=config, cp_plan=cp_plan,
                                                             **kwargs)
        finally:
            for processor, route in routed:
                processor.route = route


@dataclass
class _Site:
    """One sparse attention layer: its module, its route, the processor GNA installed and the original."""

    transformer: torch.nn.Module
    attn: torch.nn.Module
    route: GNARoute
    installed: object
    original: object
    # Other models whose forward runs this very module (Z-Image's ControlNet shares the transformer's noise
    # refiner): their calls set its layout too.
    sharers: list = field(default_factory=list)
    slot: str = "processor"  # the attribute of ``attn`` holding the processor (ModelPatch.processor_slots)

    def called_by(self, module: torch.nn.Module) -> bool:
        return self.transformer is module or any(module is sharer for sharer in self.sharers)

    @property
    def processor(self):
        """The processor the layer has now (a loader or the user may have replaced GNA's)."""
        return getattr(self.attn, self.slot, None)

    def set_processor(self, processor) -> None:
        _set_processor(self.attn, processor, self.slot)


class GNAHandle:
    """What :func:`apply` installed; :meth:`describe` lists it, :meth:`remove` undoes it.

    ``copy.deepcopy`` of a patched pipeline or transformer copies the installation with it: the copy is
    patched independently (its own routes, step counter and handle) and ``remove`` works on each.
    """

    def __init__(self, transformers: list[torch.nn.Module], patch: ModelPatch, config: GNAConfig, runtime: _Runtime):
        self.transformers = transformers  # one, or a pipeline's experts (Wan 2.2 A14B)
        self.patch = patch
        self.config = config
        self.runtime = runtime
        self.counters: list = []  # schedulers (or scheduler-free modular denoising loops) whose steps are counted
        self.pipelines: list = []  # pipelines attached (their prepare_latents gives the layout)
        self._sites: list[_Site] = []  # one per sparse attention layer of every transformer
        self._hooks: list = []
        self.active = True

    @property
    def transformer(self) -> torch.nn.Module:
        """The (first) patched transformer."""
        return self.transformers[0]

    def __deepcopy__(self, memo) -> GNAHandle:
        clone = GNAHandle.__new__(GNAHandle)
        memo[id(self)] = clone
        for name, value in vars(self).items():
            setattr(clone, name, copy.deepcopy(value, memo))
        if clone.active:
            # the copy's processors need the routed dispatch (or F) too
            for module in clone.patch.routed_modules:
                _route_dispatch(module, clone.patch.routed_attribute)
        return clone

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

    def set_observer(self, observer: Callable | None) -> None:
        """Call ``observer(route, query, key, attn_mask)`` on every self-attention call of the sparse layers
        (``route.layer`` names the layer; :mod:`gna_diffusers.calibrate` measures recall this way)."""
        for site in self._sites:
            site.route.observer = observer

    def reset_steps(self) -> None:
        """Start a new generation (bare transformers only; a pipeline's scheduler or denoising loop starts its own)."""
        self.runtime.new_generation(None)

    def attach_pipeline(self, pipeline, counters: list) -> None:
        """Count the denoising steps of ``counters`` (the pipeline's scheduler, or its scheduler-free denoising
        loops) and take the layout from ``pipeline.prepare_latents`` (also for another pipeline sharing this
        transformer, e.g. one made with ``from_pipe``); follow its ControlNets that share routed layers."""
        for counter in counters:
            if not any(c is counter for c in self.counters):
                _observe(counter, _counted_methods(counter), self.runtime, anchor=pipeline)
                self.counters.append(counter)
        method = self.patch.layout_method
        if self.patch.layout_from_prepared is not None and callable(getattr(pipeline, method, None)):
            observers = tuple(name for name in self.patch.pipeline_observers if callable(getattr(pipeline, name, None)))
            _observe(pipeline, (method, *observers), self.runtime)
        self.pipelines.append(pipeline)
        self.runtime.count_forward = False
        self._follow_shared_layers(pipeline)

    def _follow_shared_layers(self, pipeline) -> None:
        """Hook the pipeline's ControlNets that run some of the routed attention modules of another model themselves
        (Z-Image's runs the transformer's noise refiner), so each of their calls sets those layers' grid."""
        for _, component in _controlnets(pipeline):
            inside = {id(module) for module in component.modules()}
            # A site called by the component already: its own, or followed when a pipeline sharing it was attached.
            shared = [site for site in self._sites if id(site.attn) in inside and not site.called_by(component)]
            for site in shared:
                site.sharers.append(component)
            if shared and not any(component is t for t in self.transformers):  # a patched one is hooked already
                self._hooks.append(component.register_forward_pre_hook(self._before_forward, with_kwargs=True))

    def _attach_routes(self, transformer: torch.nn.Module) -> None:
        """Give every sparse layer's current processor its route (loaders may have rebuilt or replaced it)."""
        adopted, foreign = [], []
        for site in self._sites:
            if not site.called_by(transformer):
                continue
            processor, route = site.processor, site.route
            if isinstance(processor, RoutedProcessorMixin):
                if processor.route is not route:
                    processor.route = route  # rebuilt with no arguments by a loader, e.g. type(processor)()
            elif isinstance(processor, self.patch.adoptable_processors):
                backend = processor._attention_backend
                if backend is not route:
                    if backend is not None:  # set_attention_backend since: the dense paths' backend
                        route.dense_backend = backend
                    processor._attention_backend = route
                    adopted.append(route.layer)
            elif type(processor) in (gna_class := self.patch.processor_for(route.layer[0], processor)).__mro__:
                # Put on since (SD3's IP-Adapter processors, which call F.scaled_dot_product_attention and hold
                # weights; a stock one set again): GNA's in its place, sharing its weights; remove() puts it back.
                site.installed, site.original = _gna_processor(gna_class, processor, route), processor
                site.set_processor(site.installed)
                adopted.append(route.layer)
            else:
                foreign.append((route.layer, type(processor).__name__))
        if adopted:
            names = ", ".join(f"{b}.{i}" for b, i in adopted)
            self.runtime.notify_once("adopted",
                                     f"gna: GNA runs inside processors it did not install ({names})", False)
        if foreign:
            names = ", ".join(f"{b}.{i} ({cls})" for (b, i), cls in foreign)
            self.runtime.notify_once(
                "foreign",
                f"gna: layers {names} have processors that gna-diffusers cannot route; they run as those "
                f"processors do (dense), and gna_diffusers.remove() leaves them in place.",
                True,
            )

    def _before_forward(self, module, args, kwargs) -> None:
        """The transformer's forward pre-hook: routes, layout and this call's pattern per layer. Under
        torch.compile it reads only per-generation constants (the layout, ``runtime.sparse``)."""
        runtime = self.runtime
        if not _compiling():
            runtime._give_deferred()  # said inside the compiled blocks of the previous call
        runtime.called_since_step = True
        self._attach_routes(module)
        context_only = False  # a call of context tokens alone, no generated grid (GLM-Image's condition pass)
        try:
            layout = self.patch.layout_probe(module, args, kwargs, runtime.prepared)
            context_only = layout is None
        except LayoutError as error:
            layout = None
            # The message, not the exception: torch 2.11's dynamo cannot hash nor rebuild a string formatted from an
            # exception raised inside a compiled graph (a whole-model compile then failed instead of running dense).
            reason = error.args[0]
            self.runtime.notify_once("layout", f"gna: every layer runs its stock attention for this call: {reason}",
                                     True)
        if layout is not None and layout is not runtime.prepared:
            runtime.check_grid(layout.grid)
        runtime.layout = layout
        if runtime.count_forward and not context_only:  # a context-only call is no denoising step
            runtime.count_call()
        elif runtime.generation_over and not context_only:
            self.runtime.notify_once(
                "uncounted",
                f"gna: the transformer was called after the counted generation ended ({runtime.total_steps} "
                f"steps): a pipeline whose scheduler gna-diffusers does not count is using it, so it runs "
                f"without the dense warm-up. Call gna_diffusers.apply(that_pipeline, preset) to count its "
                f"steps too.",
                True,
            )
        sparse = layout is not None and runtime.sparse
        for site in self._sites:
            if site.called_by(module):
                site.route.layout = layout
                site.route.pattern = runtime.resolved(site.route.layer, layout.grid) if sparse else None

    def remove(self) -> None:
        """Restore the original processors, hook and scheduler methods. A processor that diffusers or the
        user put on a layer since is left in place (a stock one adopted by GNA gets its dense backend back)."""
        if not self.active:
            return
        for site in self._sites:
            processor, route = site.processor, site.route
            if processor is site.installed and processor is not site.original:
                if "_parallel_config" in vars(processor):  # parallelism enabled since: the original takes it over
                    site.original._parallel_config = processor._parallel_config
                site.set_processor(site.original)
            elif isinstance(processor, RoutedProcessorMixin) and processor.route is route:
                processor.route = None
                processor._attention_backend = route.dense_backend
            elif processor is not None and vars(processor).get("_attention_backend") is route:
                processor._attention_backend = route.dense_backend
        for hook in self._hooks:
            hook.remove()
        for transformer in self.transformers:
            if isinstance(vars(transformer).get("enable_parallelism"), _EnableParallelism):
                del transformer.enable_parallelism
        for counter in self.counters:
            _unobserve(counter, _counted_methods(counter))
        for pipeline in self.pipelines:
            _unobserve(pipeline, (self.patch.layout_method, *self.patch.pipeline_observers))
        for module in self.patch.routed_modules:
            _unroute_dispatch(module, self.patch.routed_attribute)
        for transformer in self.transformers:
            del transformer._gna_handle
        self.active = False


def _set_processor(attn: torch.nn.Module, processor, slot: str = "processor") -> None:
    """Install ``processor`` on an attention module, in its attribute ``slot``; a module without diffusers'
    ``set_processor`` (Mochi's MochiAttention), or another slot, holds it as a plain attribute (a submodule, when the
    processor is one)."""
    if slot == "processor" and hasattr(attn, "set_processor"):
        attn.set_processor(processor)
    else:
        setattr(attn, slot, processor)


def _unwrap_compiled(module):
    """The module inside a ``torch.compile`` wrapper (OptimizedModule), else the module itself."""
    inner = getattr(module, "_orig_mod", None)
    if isinstance(inner, torch.nn.Module) and type(module).__name__ == "OptimizedModule":
        return inner
    return module


def _other_transformer(pipeline) -> torch.nn.Module | None:
    """A pipeline's transformer loaded under another of its family's names alone (MiniMax-H3's omni-reference
    workflow loads only ``transformer_ref``), else None."""
    from gna_diffusers.patches import PATCHES

    for patch in PATCHES.values():
        for name in patch.pipeline_transformers[1:]:
            model = getattr(pipeline, name, None)
            if isinstance(model, torch.nn.Module) and patch.handles(_unwrap_compiled(model)):
                return model
    return None


def _find_parts(target) -> tuple[torch.nn.Module, list]:
    """(transformer, step counters) of a pipeline: its scheduler or, in a modular pipeline without one, its
    denoising loops; (transformer, []) for a bare transformer."""
    transformer = getattr(target, "transformer", None)
    if transformer is None and not isinstance(target, torch.nn.Module):
        transformer = _other_transformer(target)
    if isinstance(transformer, torch.nn.Module):
        scheduler = getattr(target, "scheduler", None)
        return _unwrap_compiled(transformer), [scheduler] if scheduler is not None else _denoising_loops(
            getattr(target, "_blocks", None))
    if isinstance(target, torch.nn.Module):
        return _unwrap_compiled(target), []
    if hasattr(target, "transformer") and transformer is None:
        raise UnsupportedModelError(
            f"{type(target).__name__} has no transformer loaded yet; load it first (a modular pipeline: "
            f"pipe.load_components(...) or pipe.update_components(transformer=...)), then apply()"
        )
    raise UnsupportedModelError(
        f"apply() takes a diffusers pipeline with a .transformer or the transformer itself, got {type(target).__name__}"
    )


def model_family(target) -> ModelPatch:
    """The family patch of a pipeline or transformer; raises UnsupportedModelError listing the families."""
    from gna_diffusers.patches import PATCHES, UNAVAILABLE

    transformer, _ = _find_parts(target)
    for patch in PATCHES.values():
        if patch.handles(transformer):
            return patch
    supported = ", ".join(f"{p.family} ({p.transformer_class.__name__})" for p in PATCHES.values())
    missing = "".join(f"; {name} is unavailable with this diffusers ({why}): upgrade diffusers"
                      for name, why in UNAVAILABLE.items())
    raise UnsupportedModelError(
        f"{type(transformer).__name__} is not supported; supported families: {supported}{missing}")


def apply(target, preset: str | Path | GNAConfig, *, backend: str | None = None) -> GNAHandle:
    """Swap the self-attention of a pipeline's transformer (or a bare transformer) for GNA.

    Args:
        target: a diffusers pipeline (its ``.transformer`` is patched, with the family's other
            transformers such as Wan 2.2's ``transformer_2``, and its scheduler, or a modular pipeline's
            scheduler-free denoising loop, counts steps) or a
            transformer module. A transformer wrapped by ``torch.compile`` is patched inside its wrapper
            (the compiled graph is rebuilt at the next call). A pipeline whose transformer already runs
            this preset (shared with another pipeline) gets its scheduler counted too.
        preset: a shipped preset name (``gna-diffusers presets list``), a YAML file path, or a GNAConfig.
        backend: overrides the preset's GNA backend (``"auto"``, ``"triton"``, ``"flex"``, ...).

    Returns:
        a :class:`GNAHandle`. Everything is validated before anything is installed: on an error the
        model is left untouched.
    """
    transformer, counters = _find_parts(target)
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
    existing = getattr(transformer, "_gna_handle", None)
    if existing is not None:
        if existing.config != config or not counters or any(p is target for p in existing.pipelines):
            raise RuntimeError(
                "GNA is already applied to this transformer; call gna_diffusers.remove() first (a pipeline "
                "sharing the transformer may apply the same preset, to have its steps counted)"
            )
        existing.attach_pipeline(target, counters)
        return existing
    if transformer is not getattr(target, "transformer", transformer):
        logger.info("gna: patching the module inside torch.compile's wrapper; it recompiles at the next call")
    block_counts = {name: len(blocks) for name, blocks in patch.block_lists(transformer).items()}
    more = _more_transformers(target, patch, block_counts, transformer) if counters else []
    transformers = [transformer, *more]
    patterns = layer_patterns(config, block_counts)
    # Raises for a fractional warm-up with nothing to count steps (a bare transformer).
    runtime = _Runtime(config, patterns, not counters, transformer, patch)

    if counters:  # said before anything is installed (a warnings filter may raise)
        left_dense = _unpatched_attention(target, patch, transformers)
        if left_dense:
            warnings.warn(f"gna: {', '.join(left_dense)} hold {patch.family} attention layers GNA does not route, "
                          f"which stay dense", stacklevel=2)

    handle = GNAHandle(transformers, patch, config, runtime)
    for module in patch.routed_modules:
        _route_dispatch(module, patch.routed_attribute)
    for model in transformers:
        for name, blocks in patch.block_lists(model).items():
            for index, block in enumerate(blocks):
                if patterns[(name, index)].dense:
                    continue  # dense layers keep their stock processor
                attention = patch.attention_slots(block)
                if not attention:
                    continue  # nothing to make sparse (Sana-WM's linear-attention blocks)
                route = GNARoute((name, index), patch.text_first, config.backend,
                                 getattr(getattr(*attention[0]), "_attention_backend", None),
                                 patch.cached_context_keys, grid_only=name in patch.grid_only_blocks,
                                 grid_queries_alone=patch.grid_queries_alone)
                route.notify = runtime.notify_once
                for attn, slot in attention:  # the block's self-attention, then its extra ones: one route
                    original = getattr(attn, slot)
                    gna_class = patch.processor_for(name, original)
                    if type(original) in gna_class.__mro__:  # exactly the stock processor the GNA class extends
                        processor = _gna_processor(gna_class, original, route)
                        _set_processor(attn, processor, slot)
                    else:  # e.g. FLUX's IP-Adapter processor: adopted or left as it is, below
                        processor = original
                    handle._sites.append(_Site(model, attn, route, processor, original, slot=slot))
        handle._attach_routes(model)
        handle._hooks.append(model.register_forward_pre_hook(handle._before_forward, with_kwargs=True))
        model.enable_parallelism = _EnableParallelism(handle, model)
        model._gna_handle = handle
    if counters:
        handle.attach_pipeline(target, counters)
    return handle


def _controlnets(pipeline) -> list[tuple[str, torch.nn.Module]]:
    """(name, model) of a pipeline's ControlNets: its components with ``controlnet`` in the name, a
    multi-ControlNet giving each of its ``nets``."""
    found = []
    for name, component in getattr(pipeline, "components", {}).items():
        if "controlnet" not in name or not isinstance(component, torch.nn.Module):
            continue
        component = _unwrap_compiled(component)
        nets = getattr(component, "nets", None)
        if isinstance(nets, torch.nn.ModuleList):
            found += [(f"{name}.nets[{i}]", _unwrap_compiled(net)) for i, net in enumerate(nets)]
        else:
            found.append((name, component))
    return found


def _unpatched_attention(pipeline, patch: ModelPatch, transformers: list) -> list[str]:
    """The pipeline's ControlNets that GNA does not patch but that hold attention layers of their own (not
    modules shared with a patched transformer) with the family's stock processor or a variant of it: they attend
    over the same image tokens and stay dense."""
    own = {id(module) for transformer in transformers for module in transformer.modules()}
    found = []
    stock = (patch.stock_processor_class, *patch.processor_variants)
    for name, component in _controlnets(pipeline):
        if any(component is t for t in transformers):
            continue
        if any(isinstance(getattr(module, "processor", None), stock) and id(module) not in own
               for module in component.modules()):
            found.append(f"pipeline.{name} ({type(component).__name__})")
    return found


def _gna_processor(gna_class: type, original: object, route: GNARoute) -> RoutedProcessorMixin:
    """GNA's processor in place of ``original`` (of a class ``gna_class`` extends): a new one, or, for one holding
    weights (an ``nn.Module``: SD3's IP-Adapter processors), one sharing its submodules and parameters (nothing
    is copied, and the weights keep their names in the model's state dict)."""
    _register_with_diffusers_hooks(gna_class)
    if isinstance(original, torch.nn.Module):
        processor = gna_class.__new__(gna_class)
        processor.__dict__.update(vars(original))
        processor.route, processor._unrouted_backend = route, None
    else:
        processor = gna_class(route)
    processor._parallel_config = getattr(original, "_parallel_config", None)  # parallelism enabled first
    return processor


@functools.cache  # once per class, not per layer
def _register_with_diffusers_hooks(gna_class: type) -> None:
    """Give a GNA processor class the metadata diffusers' hooks registry holds for the stock processor it
    extends, so layer skipping (Skip Layer / Perturbed Attention Guidance) accepts it like the stock one."""
    try:
        from diffusers.hooks._helpers import AttentionProcessorRegistry
    except ImportError:  # a diffusers without the hooks registry
        return
    for base in gna_class.__mro__[1:]:
        with contextlib.suppress(ValueError):  # not registered: try the next base
            AttentionProcessorRegistry.register(gna_class, AttentionProcessorRegistry.get(base))
            return


def _more_transformers(pipeline, patch: ModelPatch, counts: dict[str, int], first: torch.nn.Module
                       ) -> list[torch.nn.Module]:
    """A pipeline's transformers of the family besides ``first`` (e.g. Wan 2.2's low-noise expert), checked to
    have the first one's block ``counts``, since one preset's layer selection serves them all; and its ControlNets
    of the family with at most those counts (the others stay dense: see apply)."""
    more = []
    for name in patch.pipeline_transformers[1:]:
        model = getattr(pipeline, name, None)
        if model is None or _unwrap_compiled(model) is first:
            continue
        model = _unwrap_compiled(model)
        other = {block: len(blocks) for block, blocks in patch.block_lists(model).items()}
        if not patch.handles(model) or other != counts:
            raise UnsupportedModelError(
                f"pipeline.{name} ({type(model).__name__}, blocks {other}) differs from pipeline.transformer "
                f"(blocks {counts}); gna-diffusers applies one preset to a family's transformers of one shape"
            )
        if getattr(model, "_gna_handle", None) is not None:
            raise RuntimeError(f"GNA is already applied to pipeline.{name}; call gna_diffusers.remove() first")
        more.append(model)
    for name, model in _controlnets(pipeline):
        other = {block: len(blocks) for block, blocks in patch.block_lists(model).items()}
        if (patch.handles(model) and getattr(model, "_gna_handle", None) is None
                and all(count <= counts.get(block, 0) for block, count in other.items())):
            more.append(model)
        else:
            logger.info("gna: pipeline.%s (%s, blocks %s) is not patched", name, type(model).__name__, other)
    return more


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
