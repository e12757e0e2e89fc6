"""gna-diffusers calibrate: the recall measurement against a brute-force definition, the search on planted
attention whose locality is known, and the command end to end on a tiny pipeline."""

import math

import pytest
import torch
import yaml
from brute_force import neighbor_mask

from gna_diffusers import load_config
from gna_diffusers.calibrate import Candidate, Probe, RecallLog, choose, measure_recall, warmup_steps
from gna_diffusers.cli import main

GRID = (16, 16)
TEXT = 4


def test_recall_matches_the_brute_force_definition():
    """Kept mass = softmax mass on the query's GNA window plus on every (valid) context key."""
    gen = torch.Generator().manual_seed(0)
    grid, n = (5, 6), 30
    query, key = (torch.randn(2, TEXT + n, 3, 8, generator=gen) for _ in range(2))
    valid = torch.ones(2, TEXT + n, dtype=torch.bool)
    valid[0, 2:TEXT] = False
    patterns = [Candidate((2, 3), (1, 2), 0.0, 1.0), Candidate((4, 4), (2, 1), 0.0, 1.0)]
    index = torch.tensor([0, 7, 13, 29])
    recall = measure_recall(query, key, grid, TEXT, index, patterns, valid)
    for i, p in enumerate(patterns):
        mask = neighbor_mask(grid, p.window, p.stride, (1, 1), (False, False))
        expected = []
        for b in range(2):
            for h in range(3):
                scores = query[b, TEXT + index, h] @ key[b, :, h].T / math.sqrt(8)
                probs = scores.masked_fill(~valid[b], float("-inf")).softmax(-1)
                kept = probs[:, :TEXT].sum(-1) + (probs[:, TEXT:] * mask[index]).sum(-1)
                expected.append(kept.mean())
        assert recall[i].item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-5)


def test_recall_of_grid_queries_against_keys_with_more_context_is_the_same_measure():
    """A call whose queries are the grid alone against [context, grid] keys (a KV-cached step: FLUX.2 klein,
    Qwen-Image 2.1) measures what the joint call [context, grid] x [context, grid] measures for its grid rows."""
    gen = torch.Generator().manual_seed(1)
    grid, n = (5, 6), 30
    query, key = (torch.randn(1, TEXT + n, 2, 8, generator=gen) for _ in range(2))
    patterns = [Candidate((2, 3), (1, 2), 0.0, 1.0), Candidate((4, 4), (2, 1), 0.0, 1.0)]
    index = torch.tensor([0, 7, 13, 29])
    joint = measure_recall(query, key, grid, TEXT, index, patterns)
    grid_alone = measure_recall(query[:, TEXT:], key, grid, 0, index, patterns, key_grid_start=TEXT)
    torch.testing.assert_close(grid_alone, joint)
    assert not torch.allclose(measure_recall(query[:, TEXT:], key, grid, 0, index, patterns), joint)


def planted(sigma: float | None, heads: int = 2, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (1, TEXT + N, H, D) whose attention over the 16x16 grid is a Gaussian of width ``sigma`` around
    the query (score -|p_i - p_j|^2 / (2 sigma^2) up to a per-query constant), or uniform (sigma None)."""
    rows, cols = torch.meshgrid(torch.arange(GRID[0]), torch.arange(GRID[1]), indexing="ij")
    p = torch.stack([rows.flatten(), cols.flatten()], dim=1).float()  # (N, 2)
    q = torch.zeros(TEXT + p.shape[0], dim)
    k = torch.zeros(TEXT + p.shape[0], dim)
    if sigma is not None:
        q[TEXT:, :2] = p / sigma**2 * math.sqrt(dim)  # cancels the 1 / sqrt(D) softmax scale
        q[TEXT:, 2] = math.sqrt(dim)
        k[TEXT:, :2] = p
        k[TEXT:, 2] = -(p**2).sum(1) / (2 * sigma**2)
        k[:TEXT, 2] = -1e4  # context keys get (almost) no mass
    return (t[None, :, None].expand(1, -1, heads, dim).contiguous() for t in (q, k))


class _Runtime:
    step = 0


class _Route:
    def __init__(self, layer):
        self.layer = layer
        self.layout = type("Layout", (), {"grid": GRID})()

    def grid_spans(self, queries, keys):
        return slice(TEXT, queries), slice(TEXT, keys)


LAYERS = {("blocks", 0): 0.7, ("blocks", 1): 2.0, ("blocks", 2): None}  # sigma per layer; None: global


def planted_log(steps=(0, 1, 2)) -> RecallLog:
    runtime = _Runtime()
    probe = Probe(runtime, total_steps=len(steps), step_fractions=[s / len(steps) for s in steps], queries=64)
    for step in steps:
        runtime.step = step
        for layer, sigma in LAYERS.items():
            q, k = planted(sigma)
            probe(_Route(layer), q, k, None)
    return probe.log


def test_search_recovers_planted_windows_and_keeps_global_attention_dense():
    log = planted_log()
    choices = {c.layer: c for c in choose(log, target=0.95)}
    narrow, wide, global_ = (choices[layer] for layer in LAYERS)
    assert global_.pattern is None  # uniform attention: no window keeps 95%
    assert narrow.pattern is not None and wide.pattern is not None
    for choice, sigma in ((narrow, 0.7), (wide, 2.0)):
        # The window covers the planted radius (95% of a 2-D Gaussian lies within ~2.45 sigma of its centre)...
        assert all(w >= 2 * 2.0 * sigma for w in choice.pattern.window)
        assert choice.recall >= 0.95
        # ...and it is the cheapest that does: every cheaper candidate (earlier in the list) misses the target.
        cheaper = log.patterns[: log.patterns.index(choice.pattern)]
        assert cheaper and all(choice.recall_by_candidate[p.window] < 0.95 for p in cheaper)
    assert log.patterns.index(narrow.pattern) < log.patterns.index(wide.pattern)


def test_warmup_covers_the_steps_where_attention_is_still_global():
    runtime = _Runtime()
    probe = Probe(runtime, total_steps=4, step_fractions=(0, 0.25, 0.5, 0.75), queries=64)
    for step, sigma in enumerate((None, None, 0.7, 0.7)):  # global early, local later
        runtime.step = step
        probe(_Route(("blocks", 0)), *planted(sigma), None)
    assert choose(probe.log, 0.95)[0].pattern is None  # over every step the layer looks global...
    settled = choose(probe.log, 0.95, [2, 3])  # ...but after the warm-up it is local
    assert settled[0].pattern is not None and settled[0].pattern.window[0] < GRID[0]
    assert warmup_steps(probe.log, settled, 0.95) == 2


@pytest.mark.slow
def test_calibrate_command_writes_a_preset_that_loads_and_runs(tmp_path, monkeypatch):
    """End to end on the tiny FLUX pipeline, with planted attention fed to the probe (the tiny model's random
    weights attend uniformly): the preset loads, states what it measured, and compare runs it."""
    import gna_diffusers.calibrate as calibrate_module

    real_call = calibrate_module.Probe.__call__
    sigmas = {("double", 0): 0.7, ("double", 1): 2.0, ("single", 0): 0.7, ("single", 1): None}

    def planted_call(self, route, query, key, attn_mask):
        q, k = planted(sigmas[route.layer])
        text = query.shape[1] - q.shape[1] + TEXT  # the pipeline's text length
        pad = torch.zeros(1, text - TEXT, 2, 16)
        pad_k = pad.clone()
        pad_k[..., 2] = -1e4
        real_call(self, route, torch.cat([pad, q], 1), torch.cat([pad_k, k], 1), None)

    monkeypatch.setattr(calibrate_module.Probe, "__call__", planted_call)
    preset = tmp_path / "tiny.yaml"
    assert main(["calibrate", "--model", "tiny-flux", "--height", "64", "--width", "64", "--steps", "4",
                 "--output", str(preset)]) == 0
    config = load_config(preset)
    text = preset.read_text()
    assert "target recall 0.95" in text and "single.1: dense" in text
    data = yaml.safe_load(text)
    assert data["base_grid"] == [16, 16] and data["dense_layers"] == [{"blocks": "single", "layers": "1"}]
    assert config.family == "flux" and (tmp_path / "tiny.md").exists() and (tmp_path / "tiny-recall.png").exists()
    assert main(["compare", "--model", "tiny-flux", "--preset", str(preset), "--height", "64", "--width", "64",
                 "--steps", "2", "--prompt", "a cat", "--no-warmup", "--output", str(tmp_path / "cmp")]) == 0


class PeakTensorMemory(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of live tensor storage allocated by the ops run under it (CPU or GPU). Views of the
    ``existing`` tensors (the inputs) are not allocations."""

    def __init__(self, *existing: torch.Tensor):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = {t.untyped_storage().data_ptr() for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size and key not in self.seen:
                self.seen.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.seen.discard(key)


@pytest.mark.parametrize("grid, text, heads", [((32, 32), 48, 2), ((64, 64), 512, 4)])
def test_probe_memory_is_a_few_times_its_two_matrices(grid, text, heads):
    """Per call the probe holds a queries x tokens float32 score matrix and a queries x grid float64 prefix
    sum, one head at a time: its peak stays within 4x of those two, whatever the head count."""
    from gna_diffusers.calibrate import candidates

    n = grid[0] * grid[1]
    query, key = (torch.randn(1, text + n, heads, 16) for _ in range(2))
    tracker = PeakTensorMemory()
    with tracker:
        measure_recall(query, key, grid, text, torch.arange(0, n, n // 256), candidates(grid))
    two_matrices = 256 * (n + text) * 4 + 256 * (grid[0] + 1) * (grid[1] + 1) * 8
    assert two_matrices <= tracker.peak <= 4 * two_matrices


def test_budget_trades_the_least_recall_for_speed():
    from gna_diffusers.calibrate import meet_budget, overall_speedup

    log = planted_log()
    by_recall = choose(log, target=0.95)
    assert by_recall[2].pattern is None  # the global layer
    faster = meet_budget(log, by_recall, budget=overall_speedup(by_recall) * 1.2)
    assert overall_speedup(faster) >= overall_speedup(by_recall) * 1.2
    # Every layer that changed moved to a cheaper candidate; recall was given up, never gained.
    for before, after in zip(by_recall, faster):
        if after.pattern != before.pattern:
            assert after.pattern is not None and after.recall <= before.recall
    unreachable = meet_budget(log, by_recall, budget=1e9)  # everything at the cheapest candidate
    assert all(c.pattern == log.patterns[0] for c in unreachable)


def test_video_candidates_keep_time_wide_when_attention_spans_all_frames():
    """Planted video attention: a Gaussian (sigma 0.7) in space, uniform over the 6 frames. Only a window over
    every frame keeps 95%; in space a small one does."""
    grid, heads, dim = (6, 12, 12), 2, 16
    frames, rows, cols = torch.meshgrid(*(torch.arange(e) for e in grid), indexing="ij")
    p = torch.stack([rows.flatten(), cols.flatten()], dim=1).float()  # space only: time does not matter
    sigma = 0.7
    q = torch.zeros(p.shape[0], dim)
    k = torch.zeros(p.shape[0], dim)
    q[:, :2], q[:, 2] = p / sigma**2 * math.sqrt(dim), math.sqrt(dim)
    k[:, :2], k[:, 2] = p, -(p**2).sum(1) / (2 * sigma**2)
    q, k = (t[None, :, None].expand(1, -1, heads, dim).contiguous() for t in (q, k))
    runtime = _Runtime()
    probe = Probe(runtime, total_steps=1, step_fractions=(0,), queries=64)
    route = _Route(("blocks", 0))
    route.layout.grid = grid
    route.grid_spans = lambda queries, keys: (slice(0, queries), slice(0, keys))
    probe(route, q, k, None)
    (choice,) = choose(probe.log, 0.95)
    assert choice.pattern is not None
    assert choice.pattern.window[0] == grid[0]  # every frame
    assert choice.pattern.window[1] < grid[1] and choice.pattern.window[2] < grid[2]  # local in space
