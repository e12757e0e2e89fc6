"""Lumina-Next (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's image-only self-attention,
whose stock processor calls F.scaled_dot_product_attention itself with an all-valid mask expanded over the heads and
a proportional softmax scale; the gated cross-attention to the prompt stays stock."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import lumina_next

GRID = (4, 6)
TEXT = 7


def test_whole_extent_reproduces_stock_and_removal_is_exact(monkeypatch):
    transformer = lumina_next.tiny_transformer()
    inputs = lumina_next.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(block.attn1.processor) for block in transformer.layers} == {
            lumina_next.GNALuminaAttnProcessor}
        assert {type(block.attn2.processor) for block in transformer.layers} == {
            lumina_next.PATCH.stock_processor_class}

    assert_round_trip(transformer, "lumina-next", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4  # 2 layers, 2 runs: the image alone, its mask read through the heads


@pytest.mark.parametrize("proportional", [True, False], ids=["proportional-scale", "plain-scale"])
def test_sparse_windows_equal_an_independent_masked_attention(proportional, monkeypatch):
    """The softmax scale the processor computes (grown with the sequence length by proportional attention) is
    GNA's too."""
    window, stride = (2, 4), (1, 2)
    transformer = lumina_next.tiny_transformer()
    inputs = lumina_next.transformer_inputs(transformer, GRID, text=TEXT)
    if not proportional:
        inputs["cross_attention_kwargs"] = {}
    assert_equals_masked_stock(transformer, "lumina-next", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, 0), monkeypatch))


def generate(pipe, steps=3):
    return pipe(prompt="a red cat", num_inference_steps=steps, output_type="pt", **lumina_next.TINY_SIZE,
                generator=torch.Generator().manual_seed(0), **lumina_next.tiny_call_kwargs()).images


def test_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """LuminaPipeline (both guidance branches in one batch, proportional attention on) at 128x128 pixels: an 8x8
    grid. Whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = lumina_next.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="lumina-next", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="lumina-next", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3
    assert spy.contexts == [((8, 8), 0)] * 4  # 2 sparse steps x 2 layers


def test_preset_grids():
    assert lumina_next.latent_grid(1024, 1024) == tuple(load_preset("lumina-next-1k").base_grid)
    assert lumina_next.latent_grid(2048, 2048) == tuple(load_preset("lumina-next-2k").base_grid)
