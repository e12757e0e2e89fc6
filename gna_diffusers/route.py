"""How a sparse layer runs: the route that stands in for a processor's attention backend.

The stock processors do everything (projections, QK norms, RoPE, concatenation of text and image tokens,
output projections) and then make one call, ``dispatch_attention_fn(query, key, value, attn_mask=...,
backend=self._attention_backend)`` with the joint sequence in ``(B, S, H, D)``. GNA processor subclasses
keep the stock ``__call__`` untouched and expose ``_attention_backend`` as a :class:`GNARoute`; the
family module's ``dispatch_attention_fn`` is wrapped (once, reference-counted) so calls that carry a route
go to it and every other call passes through unchanged. A stock processor that names no backend (Cosmos,
Qwen-Image 2.1's prefill) gets its ``__call__`` wrapped instead, so that its grid-query call reaches the route;
one that calls ``F.scaled_dot_product_attention`` itself (CogVideoX, Mochi, Allegro, EasyAnimate) finds, in its
module's ``F``, a stand-in for ``torch.nn.functional`` whose SDPA hands the calls made during a GNA processor's call
to the route.

The joint sequence is the generated latent grid (:class:`TokenLayout`) plus context: text tokens, and any
tokens the image stream carries beside the grid (FLUX.1 Kontext's reference image). The route runs
``gna_attention`` for the grid queries, with every valid context key in the same softmax, and dense
attention for the context queries. A layout it cannot place runs dense, with a warning naming the layer
and the layout. Under context parallelism it gathers the whole sequence for its heads first.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from types import ModuleType

import torch

from .config import LayerPattern
from .ops import gna_attention


class LayoutError(ValueError):
    """A transformer call whose token layout a family's probe cannot place on a latent grid."""


@dataclass(frozen=True)
class TokenLayout:
    """Where the generated latent grid sits in the transformer's image/video token stream.

    The stream is the ``hidden_states`` tokens of the call: ``prod(grid)`` grid tokens, row-major,
    starting at ``grid_offset``, and ``stream_tokens - prod(grid)`` context tokens around them (e.g. a
    reference image appended by FLUX.1 Kontext). Text tokens are not part of the stream.
    """

    grid: tuple[int, ...]
    stream_tokens: int
    grid_offset: int = 0
    # Where the text lies beside the stream, for a family where that varies per call (Bria FIBO 2 moves its
    # prompt tokens after the image when a batch pads them); None: the family's ``text_first``.
    text_first: bool | None = None

    def __post_init__(self):
        if self.grid_offset < 0 or self.grid_offset + prod(self.grid) > self.stream_tokens:
            raise LayoutError(f"grid {self.grid} at offset {self.grid_offset} does not fit {self.stream_tokens} tokens")

    def describe(self) -> str:
        context = self.stream_tokens - prod(self.grid)
        return f"grid {self.grid} ({prod(self.grid)} tokens)" + (f" + {context} context tokens" if context else "")


_LAYOUTS: dict[tuple, TokenLayout] = {}


def token_layout(grid: tuple[int, ...], stream_tokens: int, grid_offset: int = 0,
                 text_first: bool | None = None) -> TokenLayout:
    """The one shared :class:`TokenLayout` for these values, so a probe's layout is the pipeline's prepared one
    (``is``) when they agree. While compiling, a new one: torch.compile would guard on the cache's contents,
    and the entry the first call adds would recompile the next call."""
    key = (tuple(grid), stream_tokens, grid_offset, text_first)
    if torch.compiler.is_compiling():
        return TokenLayout(*key)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = TokenLayout(*key)
    return _LAYOUTS[key]


def key_row(attn_mask: torch.Tensor, query_row: int, batch: int) -> torch.Tensor | None:
    """The ``(B, S)`` key row of a mask for the query at ``query_row``: a (B, 1, 1, S) key mask as it is, a
    (B, 1, S, S) "query valid and key valid" mask's row for that query (Chroma, HunyuanVideo 1.5). None for
    another shape. Boolean rows are key validity, float rows an additive bias."""
    if attn_mask.ndim != 4 or attn_mask.shape[1] != 1 or attn_mask.shape[2] not in (1, attn_mask.shape[3]):
        return None
    return attn_mask[:, 0, 0 if attn_mask.shape[2] == 1 else query_row].expand(batch, -1)


# (transformer, forward args, forward kwargs, layout the pipeline prepared or None) -> layout of this call, or None
# for a call of context tokens alone (no generated grid: it runs stock, and is no denoising step)
LayoutProbe = Callable[[torch.nn.Module, tuple, dict, "TokenLayout | None"], "TokenLayout | None"]


def _attention_scores_skipped() -> bool:
    """Whether diffusers' layer-skip hook is replacing attention by its values right now (``skip_attention_
    scores``: Perturbed Attention / Skip Layer Guidance). It intercepts F.scaled_dot_product_attention on
    the whole joint sequence, which only the stock dense call makes. (Eager only: a compiled graph has the
    mode traced in or not.)"""
    if torch.compiler.is_compiling():
        return False
    return any(type(mode).__name__ == "AttentionScoreSkipFunctionMode"
               for mode in torch.overrides._get_current_function_mode_stack())


def _mask_problem(attn_mask: torch.Tensor, row: torch.Tensor, grid: slice, key_grid: slice) -> str | None:
    """Why the route cannot carry ``attn_mask`` on the grid queries (at ``grid``, sharing the key row ``row``,
    whose grid keys are at ``key_grid``), or None. A per-query mask (B, 1, S, S) must give every grid query the
    same row (compared: the first, middle and last grid rows), which a causal or block-causal one does not; an
    additive one must be uniform over the grid keys (they are never padded), so that only its context part
    matters."""
    if attn_mask.shape[2] != 1:
        probes = attn_mask[:, 0, [grid.start, (grid.start + grid.stop) // 2, grid.stop - 1]]
        if not bool((probes == probes[:, :1]).all()):
            return "its attention mask differs between grid queries (causal?), which a window cannot carry"
    if attn_mask.dtype != torch.bool and not bool((row[:, key_grid] == row[:, key_grid.start, None]).all()):
        return "its additive attention mask is not uniform over the grid keys"
    return None


class GNARoute:
    """Stands in for a processor's attention backend; the wrapped dispatch hands its calls to this.

    The transformer's pre-hook sets ``layout`` and ``pattern`` before every call; the route reads nothing
    else, so a compiled block sees per-call constants (the pattern's values), not the step or the layer.
    """

    named_backend = None  # in flight (route_unnamed_calls), a route takes the calls naming this backend: none named

    def __init__(self, layer: tuple[str, int], text_first: bool, backend: str, dense_backend=None,
                 cached_context_keys: bool = False, grid_only: bool = False, grid_queries_alone: bool = False):
        self.layer = layer
        self.family_text_first = text_first
        self.grid_only = grid_only  # the sequence is the grid alone (FLUX.3's per-mode image blocks)
        # Keys may carry context tokens the queries lack, next to the grid: [text, (context), grid] (FLUX.2 klein's KV
        # cache: reference-image keys without their queries; PRX: image queries, [text, image] keys), or
        # [grid, (context), text] when the text comes after the image (NucleusMoE-Image).
        self.cached_context_keys = cached_context_keys
        # The grid's queries come in a call of their own (with the stream's tokens after the grid, if any), against
        # every key of the layout's stream, which then holds the whole joint sequence; the layer's other calls are
        # context queries against part of the keys, run as they come (Qwen-Image 2.1's block-causal prefill
        # segments, Cosmos 3's causal prompt pathway).
        self.grid_queries_alone = grid_queries_alone
        self.backend = backend  # GNA backend of gna_attention
        self.dense_backend = dense_backend  # diffusers backend of the dense paths
        self.layout: TokenLayout | None = None
        self.pattern: LayerPattern | None = None  # None: this call runs dense
        # Called with (route, query, key, attn_mask) on every call _routable takes (calibration's probe).
        self.observer: Callable | None = None
        # The installation's notify_once(key, message, warn): it keeps what a compiled graph says for later.
        self.notify: Callable[[str, str, bool], None] | None = None
        self._warned: set[str] = set()
        self._mask_checked: set[TokenLayout] = set()  # layouts whose attention mask passed _mask_problem

    def __repr__(self) -> str:
        return f"GNARoute({self.layer[0]}.{self.layer[1]})"

    def warn_once(self, message: str) -> None:
        """Warn ``gna: layer <type>.<index> <message>``, once per layer and message. Inside a compiled graph, where
        ``warnings.warn`` cannot run (a fullgraph compile fails on it), the installation's ``notify`` keeps the
        message for its next eager moment; a route with none (used alone) says nothing there."""
        text = f"gna: layer {self.layer[0]}.{self.layer[1]} {message}"
        if self.notify is not None:
            self.notify(f"layer {self.layer[0]}.{self.layer[1]}", text, True)
        elif not torch.compiler.is_compiling() and message not in self._warned:
            self._warned.add(message)
            warnings.warn(text, stacklevel=3)

    def _dense(self, dispatch, query, key, value, attn_mask, kwargs, why: str | None = None) -> torch.Tensor:
        if why is not None:
            self.warn_once(f"runs dense: {why}")
        return dispatch(query, key, value, attn_mask=attn_mask, backend=self.dense_backend, **kwargs)

    @property
    def text_first(self) -> bool:
        """Whether the text comes before the image stream in this call: the layout's word, else the family's."""
        layout = self.layout
        return self.family_text_first if layout is None or layout.text_first is None else layout.text_first

    def grid_span(self, total: int) -> slice | None:
        """Where the latent grid lies in a joint sequence of ``total`` tokens (None: it does not fit)."""
        layout = self.layout
        if self.grid_only and layout is not None:
            return slice(0, total) if total == prod(layout.grid) else None
        if layout is None or total < layout.stream_tokens:
            return None
        start = (total - layout.stream_tokens if self.text_first else 0) + layout.grid_offset
        return slice(start, start + prod(layout.grid))

    def _routable(self, queries: int, keys: int) -> bool:
        """Whether a call of ``queries`` x ``keys`` tokens is this layer's self-attention over the grid."""
        if self.grid_queries_alone:
            layout = self.layout
            return (layout is not None and keys == layout.stream_tokens
                    and queries == layout.stream_tokens - layout.grid_offset)
        if not self.cached_context_keys:
            return queries == keys
        context_only = self.layout is not None and queries == self.layout.stream_tokens - prod(self.layout.grid)
        return keys > queries or (queries == keys and not context_only)

    def grid_spans(self, queries: int, keys: int) -> tuple[slice, slice] | None:
        """Where the grid lies among the queries and among the keys (None: it does not fit). Keys longer than
        the queries (``cached_context_keys``) carry extra context next to the grid, which ends both (text first)
        or starts both (text after the image)."""
        if queries == keys:
            grid = self.grid_span(queries)
            return None if grid is None else (grid, grid)
        layout = self.layout
        if layout is None:
            return None
        n = prod(layout.grid)
        if self.grid_queries_alone:  # the queries are the keys' tokens from the grid on
            return slice(0, n), slice(layout.grid_offset, layout.grid_offset + n)
        at_edge = layout.grid_offset + n == layout.stream_tokens if self.text_first else layout.grid_offset == 0
        if not at_edge or queries < n or keys < queries:
            return None
        if self.text_first:
            return slice(queries - n, queries), slice(keys - n, keys)
        return slice(0, n), slice(0, n)

    def __call__(self, dispatch, query, key, value, attn_mask, kwargs) -> torch.Tensor:
        pattern = self.pattern
        if self.observer is not None and self._routable(query.shape[1], key.shape[1]):
            self.observer(self, query, key, attn_mask)
        # Dense step or layer, or not self-attention (e.g. IP-Adapter's image-prompt keys), or the stream's
        # context tokens attending among themselves (FLUX.2 klein's reference tokens while its cache fills),
        # or attention replaced by its values for a guidance pass (the stock call is what gets replaced).
        if pattern is None or not self._routable(query.shape[1], key.shape[1]) or _attention_scores_skipped():
            return dispatch(query, key, value, attn_mask=attn_mask, backend=self.dense_backend, **kwargs)
        # enable_gqa is carried: gna_attention reads K/V with fewer heads as SDPA does.
        unsupported = [name for name in ("is_causal", "dropout_p") if kwargs.get(name)]
        if unsupported:  # a window cannot carry them: stock attention, said once
            why = f"the call asks for {', '.join(f'{name}={kwargs[name]}' for name in unsupported)}"
            return self._dense(dispatch, query, key, value, attn_mask, kwargs, why)
        parallel = kwargs.get("parallel_config")
        context_parallel = getattr(parallel, "context_parallel_config", None)
        if context_parallel is not None:
            return self._context_parallel(dispatch, query, key, value, attn_mask, kwargs, context_parallel)
        return self._sparse(dispatch, query, key, value, attn_mask, kwargs)

    def _context_parallel(self, dispatch, query, key, value, attn_mask, kwargs, config) -> torch.Tensor:
        """Under context parallelism (Ulysses, ring, or both): gather the whole sequence for this rank's
        share of the heads over all the context-parallel ranks, put it in the unsharded order, run GNA, and
        hand every rank its shard back. Ring attention's K/V rotation is not needed: a head-parallel
        exchange over the same ranks computes the same attention, holding no more per rank than Ulysses
        does. Where the layout does not split evenly, the stock parallel attention runs (dense)."""
        world = config.ring_degree * config.ulysses_degree  # diffusers shards the sequence over all of them
        heads, local = query.shape[2], query.shape[1]
        stream, layout = self.layout.stream_tokens, self.layout
        local_stream = stream // world
        key_mask = attn_mask is None or (attn_mask.ndim == 4 and attn_mask.shape[1:3] == (1, 1))
        if heads % world or key.shape[2] % world or stream % world or local < local_stream or not key_mask:
            why = (f"its context-parallel layout (ring {config.ring_degree} x ulysses {config.ulysses_degree}, "
                   f"{heads} heads ({key.shape[2]} for keys), {local} local tokens, {layout.describe()}, mask "
                   f"{None if attn_mask is None else tuple(attn_mask.shape)}) is not supported")
            return self._dense(dispatch, query, key, value, attn_mask, kwargs, why)
        from .parallel import gather_keys, gather_sequence, scatter_sequence

        group = config._flattened_mesh.get_group()  # rank r of this group holds shard r
        first = local - local_stream if self.text_first else local_stream  # a shard is [text, image] or [image, text]
        q, k, v = (gather_sequence(t, group, world, first) for t in (query, key, value))
        mask = None if attn_mask is None else gather_keys(attn_mask, group, world, first)
        unsharded = {name: value for name, value in kwargs.items() if name != "parallel_config"}
        return scatter_sequence(self._sparse(dispatch, q, k, v, mask, unsharded), group, world, first)

    def _sparse(self, dispatch, query, key, value, attn_mask, kwargs) -> torch.Tensor:
        """GNA for the grid queries (window + every valid context key), dense attention for the context."""
        pattern, layout = self.pattern, self.layout
        total, keys = query.shape[1], key.shape[1]
        spans = self.grid_spans(total, keys)
        if spans is None:
            why = (f"it got {total} queries and {keys} keys, which the {layout.describe()} of the transformer's "
                   f"input does not fit")
            return self._dense(dispatch, query, key, value, attn_mask, kwargs, why)
        grid, key_grid = spans

        def outside(span: slice, length: int) -> list[slice]:
            return [part for part in (slice(0, span.start), slice(span.stop, length)) if part.stop > part.start]

        query_context, key_context = outside(grid, total), outside(key_grid, keys)

        def gather(t: torch.Tensor, parts: list[slice], dim: int = 1) -> torch.Tensor:  # in sequence order
            pieces = [t.narrow(dim, part.start, part.stop - part.start) for part in parts]
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)

        # A mask is (B, 1, 1, S) per key (or (B, S), which diffusers' dispatch reads the same: NucleusMoE-Image), or
        # (B, 1, S, S) "query valid and key valid" (Chroma, HunyuanVideo 1.5), either also expanded over the heads
        # (a view: stride 0; a mask stored per head runs dense): the grid queries then share a grid
        # query's row. Boolean: key validity. Float: an additive bias, uniform over the grid keys (they are never
        # padded), so only its context part matters.
        key_valid = key_bias = None
        context_mask = attn_mask
        if attn_mask is not None and attn_mask.ndim == 2 and attn_mask.shape == (query.shape[0], keys):
            attn_mask = attn_mask[:, None, None, :]
        if attn_mask is not None and attn_mask.ndim == 4 and attn_mask.shape[1] > 1 and attn_mask.stride(1) == 0:
            attn_mask = attn_mask[:, :1]  # expanded over the heads (Lumina-Next's processor): one mask for all
        if attn_mask is not None:
            row = key_row(attn_mask, grid.start, query.shape[0])
            if row is None or row.shape[-1] != keys:
                shape = f"(B, 1, 1 or S, S) for S={total}" if keys == total else f"(B, 1, 1, {keys})"
                why = f"attention mask of shape {tuple(attn_mask.shape)} is not {shape}"
                return self._dense(dispatch, query, key, value, attn_mask, kwargs, why)
            # Checked on a layer's first call per layout (host syncs), not on every denoising step.
            if layout not in self._mask_checked and not torch.compiler.is_compiling():
                why = _mask_problem(attn_mask, row, grid, key_grid)
                if why is not None:
                    return self._dense(dispatch, query, key, value, attn_mask, kwargs, why)
                self._mask_checked.add(layout)
            if attn_mask.dtype == torch.bool:
                key_valid = row
            else:
                row = row.float()
                key_bias = row - row[:, key_grid.start, None]
            if attn_mask.shape[2] != 1 and query_context:
                context_mask = gather(attn_mask, query_context, dim=2)

        def context_keys(t: torch.Tensor | None) -> torch.Tensor | None:
            return gather(t, key_context) if key_context and t is not None else None

        # Inference: the grid rows are written straight into the joint output, which holds the context rows already
        # (no grid-sized concatenation copy, so the peak stays that of dense attention); autograd needs the
        # out-of-place ops.
        training = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        out_context = joint = None
        if query_context:
            out_context = dispatch(gather(query, query_context), key, value, attn_mask=context_mask,
                                   backend=self.dense_backend, **kwargs)
        if query_context and not training:
            # Compiled, as an opaque op: Inductor then lets the kernel write into that buffer. Around a buffer it
            # allocated itself it gives the kernel one of its own and copies it in after (seen in its FLUX code).
            around = _joint_around_op if torch.compiler.is_compiling() else _joint_around
            joint = around(out_context, grid.start, grid.stop - grid.start)
        out_grid = gna_attention(
            query[:, grid], key[:, key_grid], value[:, key_grid], layout.grid, pattern.window, pattern.stride,
            pattern.dilation, extra_k=context_keys(key), extra_v=context_keys(value),
            extra_kv_mask=context_keys(key_valid), extra_kv_bias=context_keys(key_bias), scale=kwargs.get("scale"),
            backend=self.backend,
            out=None if joint is None else joint[:, grid],
        )
        if joint is not None:
            return joint
        if out_context is None:
            return out_grid
        return torch.cat([out_context[:, :grid.start], out_grid, out_context[:, grid.start:]], dim=1)


def _joint_shape(out_context: torch.Tensor, grid_tokens: int) -> tuple[int, ...]:
    batch, context, *rest = out_context.shape
    return (batch, context + grid_tokens, *rest)


def _joint_around(out_context: torch.Tensor, before: int, grid_tokens: int) -> torch.Tensor:
    """A joint output ``(B, S, H, D)`` holding the context rows ``out_context`` ``(B, S - grid_tokens, H, D)``
    around ``grid_tokens`` rows left to write (uninitialised), which start at row ``before``."""
    joint = out_context.new_empty(_joint_shape(out_context, grid_tokens))
    joint[:, :before] = out_context[:, :before]
    joint[:, before + grid_tokens:] = out_context[:, before:]
    return joint


# The same as an opaque op, for compiled graphs (schema from the annotations: (Tensor, SymInt, SymInt) -> Tensor).
_joint_around_op = torch.library.custom_op("gna_diffusers::joint_around", _joint_around, mutates_args=())


@_joint_around_op.register_fake
def _(out_context, before, grid_tokens):
    return out_context.new_empty(_joint_shape(out_context, grid_tokens))


class RoutedProcessorMixin:
    """Mixed into a stock processor: its dispatch call carries a :class:`GNARoute` as the backend.

    Constructible with no arguments like the stock processors (diffusers' loaders rebuild processors with
    ``type(processor)()``): without a route it behaves exactly like the stock processor, and the
    installation's pre-hook attaches the layer's route before the next call.

    A stock processor that calls attention without naming a backend (Cosmos; Qwen-Image 2.1's prefill) gets a
    subclass setting ``routes_unnamed_calls_of`` to the module whose dispatch it calls: its ``__call__`` then
    hands those calls to the route (:func:`route_unnamed_calls`), keeping the stock signature, which diffusers'
    attention modules read to filter their keyword arguments.
    """

    routes_unnamed_calls_of: ModuleType | None = None
    # A stock processor that calls F.scaled_dot_product_attention itself, no dispatch (CogVideoX): the module whose
    # ``F`` it calls; its ``__call__`` then hands those calls to the route (:func:`route_sdpa_calls`), keeping the
    # stock signature too.
    routes_sdpa_calls_of: ModuleType | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unnamed, sdpa = cls.__dict__.get("routes_unnamed_calls_of"), cls.__dict__.get("routes_sdpa_calls_of")
        if unnamed is None and sdpa is None:
            return
        # The class's own __call__ when it defines one (Lumina 2's, which reorders tokens around the stock call),
        # else the stock processor's: the attention calls made inside it are handed to the route.
        stock_call = cls.__dict__.get("__call__") or super(cls, cls).__call__
        routed_call = route_unnamed_calls if sdpa is None else route_sdpa_calls

        @functools.wraps(stock_call)
        def __call__(self, *args, **call_kwargs):
            return routed_call(sdpa or unnamed, self.route, stock_call, self, *args, **call_kwargs)

        cls.__call__ = __call__

    def __init__(self, route: GNARoute | None = None):
        self.route = route
        self._unrouted_backend = None
        super().__init__()

    @property
    def _attention_backend(self):
        return self.route if self.route is not None else self._unrouted_backend

    @_attention_backend.setter
    def _attention_backend(self, backend) -> None:  # diffusers' set_attention_backend: the dense path's backend
        if isinstance(backend, GNARoute):
            self.route = backend
        elif self.route is not None:
            self.route.dense_backend = backend
        else:
            self._unrouted_backend = backend


class _RouteInFlight:
    """A module-level stand-in's ``unnamed_route``: the route of the GNA processor whose call is in flight on this
    thread, or None (per thread, so pipelines generating on two threads keep their own)."""

    def __init__(self):
        self._local = threading.local()

    @property
    def unnamed_route(self) -> GNARoute | None:
        return getattr(self._local, "route", None)

    @unnamed_route.setter
    def unnamed_route(self, route: GNARoute | None) -> None:
        self._local.route = route


class _RoutedDispatch(_RouteInFlight):
    """Replaces a family module's ``dispatch_attention_fn``: calls carrying a route go to it, and so do the
    grid-query calls naming no backend while ``unnamed_route`` is set (see :func:`route_unnamed_calls`), or naming
    the backend that route's ``named_backend`` gives (Wan Animate 2's packed flex call: patches/wan_animate2.py)."""

    def __init__(self, original: Callable):
        super().__init__()
        self.original = original
        self.__signature__ = inspect.signature(original)

    def __call__(self, query, key, value, attn_mask=None, *args, backend=None, **kwargs):
        if isinstance(backend, GNARoute):
            return backend(self.original, query, key, value, attn_mask, kwargs)
        route = self.unnamed_route
        if route is not None and backend == route.named_backend and route._routable(query.shape[1], key.shape[1]):
            dispatch = self._default_backend if backend is None else functools.partial(self.original, backend=backend)
            return route(dispatch, query, key, value, attn_mask, kwargs)
        return self.original(query, key, value, attn_mask, *args, backend=backend, **kwargs)

    def _default_backend(self, *args, backend=None, **kwargs):
        """The original dispatch on diffusers' default backend, which a call naming none gets (the route's
        dense paths then keep the stock call's backend, not the processor's)."""
        return self.original(*args, **kwargs)


class _RoutedFunctional(_RouteInFlight):
    """Stands in for ``torch.nn.functional`` as the ``F`` of a module whose processors call
    ``F.scaled_dot_product_attention`` themselves (CogVideoX, Mochi, Allegro, EasyAnimate): every function is
    torch's, and SDPA hands the calls made while ``unnamed_route`` is set (during a GNA processor's call, see
    :func:`route_sdpa_calls`) to that route, its (B, H, S, D) tensors as (B, S, H, D) views (no copies) and its
    other arguments as the route's keyword arguments."""

    def __init__(self, original: ModuleType):
        super().__init__()
        self.original = original

    def __getattr__(self, name: str):  # every other function: torch.nn.functional's own
        if name in ("original", "_local"):  # not set yet (an instance made without __init__, e.g. by copy)
            raise AttributeError(name)
        return getattr(self.original, name)

    def scaled_dot_product_attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                     scale=None, enable_gqa=False) -> torch.Tensor:
        kwargs = dict(dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        route = self.unnamed_route
        if route is None:
            return self.original.scaled_dot_product_attention(query, key, value, attn_mask, **kwargs)
        out = route(_sdpa_dense, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask, kwargs)
        return out.transpose(1, 2)


def _sdpa_dense(query, key, value, attn_mask=None, backend=None, **kwargs) -> torch.Tensor:
    """The stock processor's own call, ``F.scaled_dot_product_attention`` on (B, H, S, D), given the route's
    (B, S, H, D) views of the same tensors (so dense paths are bit-identical to stock). ``backend`` is ignored:
    these processors never read one."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask, **kwargs)
    return out.transpose(1, 2)


def _with_unnamed_route(holder, route: GNARoute | None, call: Callable, *args, **kwargs):
    """``call(*args, **kwargs)`` with ``holder.unnamed_route`` (a routed dispatch or F) set to ``route`` on this
    thread: pipelines generating on two threads at once, whose processors share a module, keep their own routes."""
    if route is None or not isinstance(holder, _RouteInFlight):
        return call(*args, **kwargs)
    holder.unnamed_route = route
    try:
        return call(*args, **kwargs)
    finally:
        holder.unnamed_route = None


def route_unnamed_calls(module: ModuleType, route: GNARoute | None, call: Callable, *args, **kwargs):
    """``call(*args, **kwargs)`` with the attention calls through ``module``'s dispatch that name no backend and
    are its layer's grid queries (:meth:`GNARoute._routable`) handed to ``route``, on diffusers' default backend
    where it runs them dense; every other call passes unchanged. For a stock processor that passes
    ``backend=None`` on some calls instead of ``self._attention_backend`` (Qwen-Image 2.1's prefill)."""
    return _with_unnamed_route(module.dispatch_attention_fn, route, call, *args, **kwargs)


def route_sdpa_calls(module: ModuleType, route: GNARoute | None, call: Callable, *args, **kwargs):
    """``call(*args, **kwargs)`` with the ``F.scaled_dot_product_attention`` calls it makes through ``module``'s
    ``F`` handed to ``route`` (:class:`_RoutedFunctional`)."""
    return _with_unnamed_route(module.F, route, call, *args, **kwargs)


# Routed attributes of family modules: (module, "dispatch_attention_fn" or "F") -> installations using them.
_ROUTED: dict[tuple[ModuleType, str], int] = {}
_STAND_INS = {"dispatch_attention_fn": _RoutedDispatch, "F": _RoutedFunctional}


def _route_dispatch(module: ModuleType, attribute: str = "dispatch_attention_fn") -> None:
    """Put the routed stand-in in place of ``module.<attribute>`` (once, reference-counted)."""
    key = (module, attribute)
    if key not in _ROUTED:
        setattr(module, attribute, _STAND_INS[attribute](getattr(module, attribute)))
    _ROUTED[key] = _ROUTED.get(key, 0) + 1


def _unroute_dispatch(module: ModuleType, attribute: str = "dispatch_attention_fn") -> None:
    key = (module, attribute)
    _ROUTED[key] -= 1
    if _ROUTED[key] == 0:
        setattr(module, attribute, getattr(module, attribute).original)
        del _ROUTED[key]
