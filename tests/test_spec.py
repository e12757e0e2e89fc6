import random

import numpy as np
import pytest
import torch
from brute_force import axis_neighbors, neighbor_mask
from conftest import random_case

from gna_diffusers.spec import GNASpec, axis_bounds, grid_mask


@pytest.mark.parametrize("seed", range(200))
def test_grid_mask_matches_brute_force(seed):
    case = random_case(random.Random(seed))
    spec = GNASpec.create(**case)
    expected = neighbor_mask(*(case[k] for k in ("grid", "window", "stride", "dilation", "causal")))
    assert torch.equal(grid_mask(spec), expected)


def test_border_windows_are_shifted_not_truncated():
    start, end = axis_bounds(10, 4, 1, 1, False)
    assert (end - start).tolist() == [4] * 10
    assert start.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 6]  # even window: one more key on the left


def test_stride_groups_share_their_leaders_window():
    start, _ = axis_bounds(12, 4, 4, 1, False)
    # Leaders are 2, 6, 10 (i//4*4 + 2): windows start at 0, 4, 8 for the three groups.
    assert start.tolist() == [0] * 4 + [4] * 4 + [8] * 4


def test_causal_ends_at_the_query_itself():
    start, end = axis_bounds(8, 3, 2, 1, True)
    assert end.tolist() == list(range(1, 9))
    assert start.tolist() == [0, 0, 1, 1, 3, 3, 5, 5]


def test_dilation_keeps_keys_in_the_query_group():
    mask = grid_mask(GNASpec.create((9,), 3, dilation=2))
    for i in range(9):
        keys = mask[i].nonzero().flatten().tolist()
        assert len(keys) == 3 and all(k % 2 == i % 2 for k in keys)
        assert set(keys) == axis_neighbors(9, 3, 1, 2, False, i)


def test_full_window_is_dense_whatever_the_stride():
    spec = GNASpec.create((5, 7), (5, 7), stride=(3, 7))
    assert spec.is_dense() and grid_mask(spec).all()


def test_scalars_broadcast_and_numpy_ints_are_accepted():
    spec = GNASpec.create((np.int64(8), 6), np.int64(4), stride=2)
    assert spec.window == (4, 4) and spec.stride == (2, 2) and spec.causal == (False, False)
    assert all(type(v) is int for v in spec.grid + spec.window)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(grid=(8, 8), window=(4, 4, 4)), r"window has 3 entries but the grid has 2 dimensions"),
        (dict(grid=(8, 8), window=(4, 0)), r"window\[1\]=0 must be >= 1"),
        (dict(grid=(8, 8), window=(4, 9)), r"window\[1\]=9 with dilation 1 spans 9 positions but grid\[1\] is 8"),
        (dict(grid=(8, 8), window=4, dilation=(1, 3)), r"window\[1\]=4 with dilation 3 spans 12 positions"),
        (dict(grid=(8, 8), window=4, stride=(5, 1)), r"stride\[0\]=5 must be between 1 and window\[0\]=4"),
        (dict(grid=(8, 8), window=4, stride=(1, 0)), r"stride\[1\]=0 must be between 1 and window\[1\]=4"),
        (dict(grid=(8, 8), window=4, dilation=(0, 1)), r"dilation\[0\]=0 must be >= 1"),
        (dict(grid=(8, 8), window=4, causal=(True, 1)), r"causal\[1\] must be bool"),
        (dict(grid=(8, 8), window=(4, 2.5)), r"window\[1\] must be int"),
        (dict(grid=(8, 8, 8, 8), window=4), r"grid must have 1, 2 or 3 dimensions"),
        (dict(grid=(8, 0), window=4), r"grid\[1\] must be a positive int"),
        (dict(grid=64, window=4), r"grid must be a tuple"),
    ],
)
def test_invalid_arguments_name_the_argument_and_dimension(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GNASpec.create(**kwargs)
