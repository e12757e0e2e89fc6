"""Krea 2 (tiny offline transformer and pipeline, fp32, CPU): GNA on each main block's joint [prompt, image]
attention (padded prompts masked); the text-fusion blocks stay stock."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_krea2
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import krea2

GRID = (4, 6)
TEXT = 8


def test_whole_extent_reproduces_stock_with_a_padded_prompt_and_only_main_blocks_are_routed(monkeypatch):
    """A batch of 2 whose second prompt has 2 padded tokens: they stay masked as context keys."""
    transformer = krea2.tiny_transformer()
    inputs = krea2.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert handle.runtime.grid == GRID
        fusion = [m.processor for m in transformer.text_fusion.modules() if hasattr(m, "processor")]
        assert fusion and all(type(p) is transformer_krea2.Krea2AttnProcessor for p in fusion)

    assert_round_trip(transformer, "krea2", inputs, installed)
    assert spy.contexts == [(GRID, TEXT)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = krea2.tiny_transformer()
    inputs = krea2.transformer_inputs(transformer, GRID, text=TEXT)
    mask = joint_mask(GRID, window, stride, TEXT)
    assert_equals_masked_stock(transformer, "krea2", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_krea2, mask, monkeypatch))


def test_pipeline_takes_the_grid_from_prepare_position_ids(monkeypatch):
    """Krea2Pipeline (classifier-free guidance as two calls, a padded prompt) at 32x32 pixels: a 4x4 grid, read from
    the ids prepare_position_ids returns (once per generation), not from each call's ids. Whole windows reproduce
    the pipeline; a sparse preset routes the steps after the dense one."""
    pipe = krea2.tiny_pipeline()
    read = []
    real_grid = krea2._grid
    monkeypatch.setattr(krea2, "_grid", lambda ids: read.append(ids.shape) or real_grid(ids))
    monkeypatch.setattr(krea2, "_grid_from_ids", lambda ids: pytest.fail("read the grid from a call's position_ids"))

    def generate():
        return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **krea2.tiny_call_kwargs()).images

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="krea2", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        assert len(read) == 1  # one generation, one read
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="krea2", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert {grid for grid, _ in spy.contexts} == {(4, 4)}
    assert len(spy.contexts) == 2 * 2 * 2  # steps x guidance x layers


@pytest.mark.parametrize("preset, size", [("krea2-2k", 2048), ("krea2-1k", 1024)])
def test_preset_grids(preset, size):
    assert krea2.latent_grid(size, size) == tuple(load_preset(preset).base_grid)
