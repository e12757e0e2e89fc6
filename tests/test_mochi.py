"""Mochi 1 (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's joint [video, valid text]
attention, which the stock processor runs per sample with F.scaled_dot_product_attention."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import mochi

GRID = (3, 4, 6)
TEXT = 8

pytestmark = pytest.mark.filterwarnings("ignore:.*autocast.*")  # MochiRoPE asks for fp32 autocast on the CPU


def test_whole_extent_reproduces_stock_per_sample_text_is_context(monkeypatch):
    """A batch of 2 whose second prompt has 2 padded tokens: the stock processor calls attention once per sample
    with that sample's valid tokens, and each call's text is context of every video query."""
    transformer = mochi.tiny_transformer()
    inputs = mochi.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        kinds = {type(b.attn1.processor) for b in transformer.transformer_blocks}
        assert kinds == {mochi.GNAMochiAttnProcessor}

    assert_round_trip(transformer, "mochi", inputs, installed)
    assert {type(b.attn1.processor) for b in transformer.transformer_blocks} == {mochi.PATCH.stock_processor_class}
    assert spy.contexts == [(GRID, TEXT), (GRID, TEXT - TEXT // 4)] * 4  # 2 calls x 2 layers x 2 runs


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = mochi.tiny_transformer()
    inputs = mochi.transformer_inputs(transformer, GRID, text=TEXT)
    mask = joint_mask(GRID, window, stride, 0, context_after=TEXT)
    assert_equals_masked_stock(transformer, "mochi", inputs, GRID, window, stride,
                               lambda: masked_sdpa(mask, monkeypatch))


def test_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """MochiPipeline (classifier-free guidance in one batch of 2: the empty negative prompt has one valid token) at
    64x64 pixels x 7 frames: a 2x4x4 grid. Whole windows reproduce it; a sparse preset routes every sample's call
    of the steps after the dense one."""
    pipe = mochi.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), height=64, width=64,
                    **mochi.tiny_call_kwargs()).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="mochi", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="mochi", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    grids = {grid for grid, _ in spy.contexts}
    assert grids == {(2, 4, 4)} and len(spy.contexts) == 2 * 2 * 2  # 2 sparse steps x 2 samples x 2 layers


def test_full_size_shape_and_preset_grid():
    assert mochi.latent_grid(480, 848, 163) == tuple(load_preset("mochi-480p").base_grid)
    with pytest.raises(ValueError, match="6k \\+ 1"):
        mochi.latent_grid(480, 848, 161)
