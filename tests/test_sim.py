import itertools
import random
from math import ceil

import pytest
from brute_force import neighbor_mask
from conftest import random_case

from gna_diffusers.sim import PAPER_CONFIGS, simulate


def brute_force_tiles(case, q_tile, kv_tile):
    """Classify every (Q box, KV box) pair from the loop-built N x N mask. Returns (full, partial, empty, density)."""
    grid = case["grid"]
    mask = neighbor_mask(*(case[k] for k in ("grid", "window", "stride", "dilation", "causal")))
    coords = list(itertools.product(*(range(e) for e in grid)))

    def boxes(tile):
        per_axis = [range(ceil(e / t)) for e, t in zip(grid, tile)]
        for box in itertools.product(*per_axis):
            yield [i for i, c in enumerate(coords) if all(c[d] // tile[d] == box[d] for d in range(len(grid)))]

    full = partial = empty = 0
    for qs in boxes(q_tile):
        for ks in boxes(kv_tile):
            block = mask[qs][:, ks]
            if block.all():
                full += 1
            elif block.any():
                partial += 1
            else:
                empty += 1
    return full, partial, empty, mask.float().mean().item()


@pytest.mark.parametrize("seed", range(80))
def test_counts_match_brute_force_tile_classification(seed):
    rng = random.Random(seed)
    case = random_case(rng, max_tokens=72)
    q_tile = tuple(rng.randint(1, 4) for _ in case["grid"])
    kv_tile = tuple(rng.randint(1, 4) for _ in case["grid"])
    result = simulate(**case, q_tile=q_tile, kv_tile=kv_tile)
    full, partial, empty, density = brute_force_tiles(case, q_tile, kv_tile)
    assert (result.full_pairs, result.partial_pairs, result.empty_pairs) == (full, partial, empty)
    assert result.density == pytest.approx(density)
    assert result.tile_pairs == full + partial + empty


@pytest.mark.parametrize(
    "name, flop_bound, tile_bound, block_sparse",
    [
        ("flux-4k", 10.24, 10.24, True),
        ("flux-4k stride 1", 10.24, 7.51, False),
        ("hunyuan-video-720p", 11.11, 11.11, True),
        ("hunyuan-video-720p stride 1", 11.11, 5.44, False),
    ],
)
def test_reproduces_published_checks(name, flop_bound, tile_bound, block_sparse):
    (config,) = [c for c in PAPER_CONFIGS if c.name == name]
    result = config.simulate()
    assert round(result.flop_bound, 2) == flop_bound
    assert round(result.tile_bound, 2) == tile_bound
    assert result.perfectly_block_sparse is block_sparse
    assert (result.partial_pairs == 0) is block_sparse


def test_long_1d_axis_without_an_n_by_n_mask():
    result = simulate((131072,), 4096, stride=512, q_tile=128, kv_tile=128)
    assert result.density == pytest.approx(4096 / 131072)
    assert result.perfectly_block_sparse


def test_tile_arguments_are_validated():
    with pytest.raises(ValueError, match=r"q_tile has 2 entries but the grid has 3 dimensions"):
        simulate((8, 8, 8), 4, q_tile=(2, 2))
    with pytest.raises(ValueError, match=r"kv_tile\[0\]=0 must be >= 1"):
        simulate((8, 8), 4, kv_tile=(0, 2))


def test_token_tiles_count_token_pairs():
    result = simulate((7, 5), (3, 2))
    assert result.full_pairs == 35 * 6 and result.partial_pairs == 0
    assert result.density == pytest.approx(6 / 35)
