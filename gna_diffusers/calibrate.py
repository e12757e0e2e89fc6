"""Per-layer GNA windows measured from the model itself (``gna-diffusers calibrate``).

During dense generations a probe on every self-attention layer takes a sample of grid queries and computes
their exact attention distribution over all keys (grid and context), one head at a time, so its memory is
``queries x keys`` floats, never ``N x N``. For every candidate (window, stride) it measures the *recall*:
the softmax mass the candidate would keep, i.e. the mass on the query's GNA window plus on every context
key (GNA always keeps those). Window boxes are summed with a prefix-sum over the grid, so a candidate costs
O(1) per query after one O(N) pass.

Candidates come from the simulator: for each window size (a fraction of every axis), the stride that gives the
kernel's best tile bound. Per layer the cheapest candidate (highest simulated tile bound, then fewest attended
pairs) whose mean recall reaches the target is chosen; a layer that no candidate satisfies stays dense. The dense
warm-up is the number of leading denoising steps in which the patterns chosen on the later steps miss the target on
average.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from math import prod

import torch

from .route import key_row
from .sim import simulate
from .spec import GNASpec, axis_bounds

# Window sizes tried, as fractions of every (spatial) axis of the grid (the whole extent is "dense").
WINDOW_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
# A video grid's time axis (the first of three) gets its own fractions: attention is often wide in time.
TIME_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
STRIDES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Candidate:
    """A (window, stride) pattern on the calibration grid and its simulated cost."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    density: float  # fraction of grid query-key pairs attended
    tile_bound: float  # simulated speedup bound with the kernel's tiles (what "cheapest" ranks by)


def candidates(grid: tuple[int, ...], fractions=WINDOW_FRACTIONS, time_fractions=TIME_FRACTIONS) -> list[Candidate]:
    """Candidate windows: ``fraction x extent`` on every axis (at least 2); on a 3-D (video) grid every time
    fraction combined with every spatial one. Each gets the stride (per axis, from :data:`STRIDES`, at most
    the window) that maximises the kernel's tile bound."""
    from .backends.triton_gna import tile_candidates

    # The kernel's 128-token tiles; a grid too small to hold one gets the largest tile it holds.
    block = min(128, prod(1 << (extent - 1).bit_length() for extent in grid))

    def sized(fraction: float, extent: int) -> int:
        return min(extent, max(2, round(fraction * extent)))

    if len(grid) == 3:
        windows = {(sized(t, grid[0]), sized(f, grid[1]), sized(f, grid[2])) for t in time_fractions for f in fractions}
    else:
        windows = {tuple(sized(f, extent) for extent in grid) for f in fractions}
    found = {}
    for window in sorted(windows):
        if window == tuple(grid):
            continue
        best = None
        for s in STRIDES:
            stride = tuple(min(s, w) for w in window)
            config = tile_candidates(GNASpec.create(grid, window, stride), (block,), limit=1)[0]
            ndim = len(grid)
            result = simulate(grid, window, stride, q_tile=config.q_tile[-ndim:], kv_tile=config.kv_tile[-ndim:])
            if best is None or result.tile_bound > best.tile_bound:
                best = Candidate(window, stride, result.density, result.tile_bound)
        found[window] = best
    # Cheapest first: the highest simulated speedup, then (on grids too small for tiles to differ) the fewest
    # attended pairs.
    return sorted(found.values(), key=lambda c: (-c.tile_bound, c.density))


def _box_sums(prefix: torch.Tensor, lo: list[torch.Tensor], hi: list[torch.Tensor]) -> torch.Tensor:
    """Sum of a (Q, *grid) array over per-query boxes [lo, hi) from its inclusive-exclusive prefix sums
    (Q, *(extent + 1)): inclusion-exclusion over the 2^d corners."""
    q = torch.arange(prefix.shape[0], device=prefix.device)
    total = torch.zeros(prefix.shape[0], dtype=prefix.dtype, device=prefix.device)
    ndim = len(lo)
    for corner in range(1 << ndim):
        index = [q]
        sign = 1
        for d in range(ndim):
            if corner >> d & 1:
                index.append(lo[d])
                sign = -sign
            else:
                index.append(hi[d])
        total += sign * prefix[tuple(index)]
    return total


def measure_recall(query: torch.Tensor, key: torch.Tensor, grid: tuple[int, ...], grid_start: int,
                   query_index: torch.Tensor, patterns: list[Candidate], key_valid: torch.Tensor | None = None,
                   scale: float | None = None, key_grid_start: int | None = None) -> torch.Tensor:
    """Mean recall of each pattern over the sampled grid queries.

    Args:
        query, key: ``(B, S, H, D)`` and ``(B, S_k, H_kv, D)`` (H_kv dividing H: grouped-query), the joint
            sequence; the grid's queries are ``S[grid_start : grid_start + prod(grid)]`` (row-major), its keys the
            same span of the keys, or from ``key_grid_start`` when the keys hold context the queries lack (a KV
            cache); every other key is context.
        query_index: ``(Q,)`` grid-token indices of the sampled queries.
        key_valid: ``(B, S_k)`` bool, False for padded context keys.

    Returns:
        ``(len(patterns),)`` float32: each pattern's kept softmax mass, averaged over batch, heads and queries.
    """
    batch, total, heads, dim = query.shape
    n = prod(grid)
    scale = dim**-0.5 if scale is None else scale
    coords = torch.stack(torch.unravel_index(query_index, grid), dim=1)  # (Q, d)
    bounds = []  # per pattern, per axis: the sampled queries' [start, end) on that axis
    for pattern in patterns:
        per_axis = []
        for d, extent in enumerate(grid):
            start, end = axis_bounds(extent, pattern.window[d], pattern.stride[d], 1, False, query.device)
            per_axis.append((start[coords[:, d]], end[coords[:, d]]))
        bounds.append(per_axis)
    sums = torch.zeros(len(patterns), dtype=torch.float64)
    key_grid_start = grid_start if key_grid_start is None else key_grid_start
    grid_keys = slice(key_grid_start, key_grid_start + n)
    for b in range(batch):
        q = query[b, grid_start + query_index].float()  # (Q, H, D)
        for h in range(heads):  # one head at a time: Q x S scores, never S x S
            scores = (q[:, h] @ key[b, :, h * key.shape[2] // heads].float().T) * scale  # (Q, S)
            if key_valid is not None:
                scores = scores.masked_fill(~key_valid[b][None, :], float("-inf"))
            probs = scores.softmax(dim=-1)
            context = probs.sum(dim=-1) - probs[:, grid_keys].sum(dim=-1)
            prefix = probs[:, grid_keys].reshape(-1, *grid).double()
            for d in range(len(grid)):
                prefix = torch.nn.functional.pad(prefix.cumsum(dim=d + 1), [0, 0] * (len(grid) - d - 1) + [1, 0])
            for i, per_axis in enumerate(bounds):
                kept = _box_sums(prefix, [lo for lo, _ in per_axis], [hi for _, hi in per_axis]) + context.double()
                sums[i] += kept.mean()
    return (sums / (batch * heads)).float()


@dataclass
class LayerChoice:
    """What calibration chose for one layer: a pattern, or dense (None), with the recall it measured."""

    layer: tuple[str, int]
    pattern: Candidate | None
    recall: float  # mean recall of the chosen pattern (1.0 for dense)
    recall_by_candidate: dict[tuple[int, ...], float] = field(default_factory=dict)  # window -> mean recall


@dataclass
class RecallLog:
    """Recall samples per (layer, step, candidate window), as the probe records them."""

    patterns: list[Candidate]
    samples: dict[tuple[str, int], dict[int, list[torch.Tensor]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    def add(self, layer: tuple[str, int], step: int, recall: torch.Tensor) -> None:
        self.samples[layer][step].append(recall)

    def mean(self, layer: tuple[str, int], steps=None) -> torch.Tensor:
        values = [r for step, rs in self.samples[layer].items() if steps is None or step in steps for r in rs]
        return torch.stack(values).mean(dim=0)

    def steps(self) -> list[int]:
        return sorted({step for per_step in self.samples.values() for step in per_step})


def choose(log: RecallLog, target: float, steps: list[int] | None = None) -> list[LayerChoice]:
    """Per layer, the cheapest pattern whose mean recall over ``steps`` (default: every sampled step) reaches
    ``target``; a layer no pattern satisfies stays dense. Patterns are tried cheapest first."""
    choices = []
    for layer in sorted(log.samples):
        recall = log.mean(layer, steps)
        by_window = {p.window: float(r) for p, r in zip(log.patterns, recall)}
        chosen = next(((p, float(r)) for p, r in zip(log.patterns, recall) if r >= target), None)
        choices.append(LayerChoice(layer, chosen[0] if chosen else None, chosen[1] if chosen else 1.0, by_window))
    return choices


def overall_speedup(choices: list[LayerChoice]) -> float:
    """The attention speedup of all layers together: each layer costs ``1 / tile bound`` of its dense cost
    (1 when dense)."""
    return len(choices) / sum(1.0 if c.pattern is None else 1.0 / c.pattern.tile_bound for c in choices)


def meet_budget(log: RecallLog, choices: list[LayerChoice], budget: float) -> list[LayerChoice]:
    """Trade recall for speed until the layers together reach ``budget`` (an attention speedup): step by
    step, the layer whose next cheaper candidate keeps the most recall takes it (a dense layer's next is
    the most expensive candidate). Stops when nothing cheaper is left."""
    choices = list(choices)
    while overall_speedup(choices) < budget:
        options = []
        for i, choice in enumerate(choices):
            index = len(log.patterns) if choice.pattern is None else log.patterns.index(choice.pattern)
            if index > 0:
                cheaper = log.patterns[index - 1]
                options.append((choice.recall_by_candidate[cheaper.window], i, cheaper))
        if not options:
            break
        recall, i, cheaper = max(options, key=lambda option: option[0])
        choices[i] = LayerChoice(choices[i].layer, cheaper, recall, choices[i].recall_by_candidate)
    return choices


def warmup_steps(log: RecallLog, choices: list[LayerChoice], target: float) -> int:
    """The number of leading sampled steps in which the chosen patterns' mean recall is below ``target``
    (the denoising steps to keep dense): recall usually rises as the image settles."""
    sparse = [c for c in choices if c.pattern is not None]
    count = 0
    for step in log.steps():
        recalls = [float(log.mean(c.layer, [step])[log.patterns.index(c.pattern)]) for c in sparse]
        if recalls and sum(recalls) / len(recalls) < target:
            count = step + 1
        else:
            break
    return count


def _key_valid(attn_mask: torch.Tensor | None, row: int, batch: int) -> torch.Tensor | None:
    """Key validity of a grid query from an attention mask: boolean masks as they are, additive ones where
    finite (a bias such as Chroma's is ignored: the probe measures the unbiased distribution)."""
    keys = None if attn_mask is None else key_row(attn_mask, row, batch)
    if keys is None:
        return None
    return keys if keys.dtype == torch.bool else torch.isfinite(keys)


class Probe:
    """The observer calibration installs on every routed layer: on the sampled steps, the recall of every
    candidate for a fixed sample of grid queries."""

    def __init__(self, runtime, total_steps: int, step_fractions, queries: int, seed: int = 0):
        self.runtime = runtime
        self.sample_steps = sorted({min(total_steps - 1, int(f * total_steps)) for f in step_fractions})
        self.queries = queries
        self.seed = seed
        self.grid: tuple[int, ...] | None = None
        self.log: RecallLog | None = None
        self.query_index: torch.Tensor | None = None

    def _start(self, grid: tuple[int, ...], device) -> None:
        patterns = candidates(grid)
        if not patterns:
            raise ValueError(f"the latent grid {grid} is too small for any window smaller than it: calibrate at a "
                             f"larger --height / --width")
        self.grid = grid
        self.log = RecallLog(patterns)
        n = prod(grid)
        generator = torch.Generator().manual_seed(self.seed)
        self.query_index = torch.randperm(n, generator=generator)[: min(self.queries, n)].sort().values.to(device)

    def __call__(self, route, query, key, attn_mask) -> None:
        if self.runtime.step not in self.sample_steps:
            return
        spans = route.grid_spans(query.shape[1], key.shape[1])
        if spans is None:
            return
        grid_span, key_span = spans
        grid = route.layout.grid
        if self.grid is None:
            self._start(grid, query.device)
        elif grid != self.grid:
            raise ValueError(f"calibration runs at one resolution: latent grid {grid} after {self.grid}")
        with torch.no_grad():
            recall = measure_recall(query, key, grid, grid_span.start, self.query_index, self.log.patterns,
                                    _key_valid(attn_mask, grid_span.start, query.shape[0]),
                                    key_grid_start=key_span.start)
        self.log.add(route.layer, self.runtime.step, recall)


@dataclass
class Calibration:
    """The outcome of :func:`calibrate`: per-layer choices on ``grid`` and the dense warm-up."""

    family: str
    grid: tuple[int, ...]
    target: float
    total_steps: int
    warmup_steps: int
    choices: list[LayerChoice]
    log: RecallLog

    def config_dict(self, description: str) -> dict:
        """A preset (as YAML data): the most common chosen pattern as the default, the others as
        overrides, layers that need more than any candidate dense."""
        sparse = [c for c in self.choices if c.pattern is not None]
        patterns = [c.pattern for c in sparse]
        default = max(set(patterns), key=patterns.count) if patterns else None
        groups: dict[tuple, list[int]] = defaultdict(list)
        for choice in self.choices:
            if choice.pattern != default:
                groups[(choice.layer[0], choice.pattern)].append(choice.layer[1])
        data = {"family": self.family, "description": description, "base_grid": list(self.grid)}
        data["window"] = list(default.window) if default else -1
        data["stride"] = list(default.stride) if default else 1
        data["dense_steps"] = round(self.warmup_steps / self.total_steps, 2) if self.warmup_steps else 0
        dense = [{"blocks": b, "layers": _ranges(ix)} for (b, p), ix in sorted(groups.items(), key=_order) if p is None]
        overrides = [
            {"blocks": b, "layers": _ranges(ix), "window": list(p.window), "stride": list(p.stride)}
            for (b, p), ix in sorted(groups.items(), key=_order) if p is not None
        ]
        if dense:
            data["dense_layers"] = dense
        if overrides:
            data["overrides"] = overrides
        return data


def _order(item) -> tuple:
    (blocks, pattern), indices = item
    return blocks, indices[0]


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the preset's layer syntax)."""
    runs, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            runs.append(f"{start}" if start == index else f"{start}-{index}")
            start = None
    return ",".join(runs)


def calibrate(pipe, generate, total_steps: int, *, target_recall: float = 0.95, budget: float | None = None,
              queries: int = 256, step_fractions=(0.05, 0.15, 0.3, 0.5, 0.7, 0.9), seed: int = 0) -> Calibration:
    """Measure per-layer recall during dense generations and choose windows.

    Args:
        pipe: a pipeline of a supported family.
        generate: runs the calibration generations with ``pipe`` (a few prompts, ``total_steps`` steps each,
            one resolution).
        total_steps: the denoising steps of each generation (the probe samples ``step_fractions`` of them).
        target_recall: the softmax mass a layer's window must keep, averaged over queries, heads and steps.
        budget: an attention speedup (simulated, all layers together) to reach even below the target
            recall (:func:`meet_budget`); None: recall decides alone.
        queries: grid queries sampled per layer and call.
    """
    from .config import GNAConfig
    from .install import apply, model_family

    family = model_family(pipe).family
    # Every layer routed, every step dense (the stock attention runs): the probe only watches.
    handle = apply(pipe, GNAConfig(family=family, window=-1, dense_steps=1 << 30))
    probe = Probe(handle.runtime, total_steps, step_fractions, queries, seed)
    handle.set_observer(probe)
    try:
        generate()
    finally:
        handle.remove()
    if probe.log is None or not probe.log.samples:
        raise ValueError("calibration saw no self-attention call on a sampled step: check the step count and model")
    # Attention settles as the image does: choose on the later half of the sampled steps, keep dense the leading
    # steps where those choices miss the target, then choose again on every step after the warm-up.
    steps = probe.log.steps()
    settled = choose(probe.log, target_recall, steps[len(steps) // 2:])
    warmup = warmup_steps(probe.log, settled, target_recall)
    choices = choose(probe.log, target_recall, [step for step in steps if step >= warmup])
    if budget is not None:
        choices = meet_budget(probe.log, choices, budget)
    return Calibration(family, probe.grid, target_recall, total_steps, warmup, choices, probe.log)
