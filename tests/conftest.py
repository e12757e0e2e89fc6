import os
import random

import pytest
import torch
from helpers import undo_leftover_routes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton reads this when a kernel is decorated, i.e. when gna_diffusers is first imported: set it here,
# before any test module imports the package. With a GPU the real kernels run instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Under pytest-xdist every worker is a process of its own: one intra-op thread each keeps the workers from
# oversubscribing the cores (the tiny models gain nothing from more).
if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)


def random_case(rng: random.Random, max_tokens: int = 96) -> dict:
    """A random valid GNA pattern on a small grid, arguments as per-axis tuples."""
    while True:
        ndim = rng.choice((1, 2, 3))
        grid = tuple(rng.randint(2, {1: 40, 2: 11, 3: 6}[ndim]) for _ in range(ndim))
        if grid[0] * (grid[1] if ndim > 1 else 1) * (grid[2] if ndim > 2 else 1) <= max_tokens:
            break
    dilation = tuple(rng.choice((1, 1, 1, 2, 3)) if e >= 4 else 1 for e in grid)
    dilation = tuple(r if e // r >= 2 else 1 for e, r in zip(grid, dilation))
    window = tuple(rng.randint(2, e // r) for e, r in zip(grid, dilation))
    stride = tuple(rng.randint(1, w) for w in window)
    causal = tuple(rng.random() < 0.25 for _ in grid)
    return dict(grid=grid, window=window, stride=stride, dilation=dilation, causal=causal)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture(autouse=True)
def no_installation_outlives_its_test():
    """Every test removes what it applied: a leftover dispatch wrapper would hide the next test's bugs."""
    yield
    leftover = undo_leftover_routes()  # clean up first, so one failure does not cascade
    assert not leftover, f"GNA left applied on {leftover}"


@pytest.fixture(params=["flux", "hunyuan-video"])
def family(request) -> str:
    """Each family with a tiny offline pipeline."""
    return request.param


@pytest.fixture
def pipe(family):
    """The family's tiny offline pipeline (fp32, CPU); GNA is removed after the test."""
    from gna_diffusers import remove
    from gna_diffusers.patches import FAMILY_MODULES

    pipe = FAMILY_MODULES[family].tiny_pipeline()
    yield pipe
    remove(pipe)
