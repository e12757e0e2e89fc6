"""CogView3-Plus (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's joint [text, image]
attention, whose stock processor (CogVideoX's) calls F.scaled_dot_product_attention itself."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import cogview3plus

GRID = (4, 6)
TEXT = 7


@pytest.mark.parametrize("fused", [False, True], ids=["separate-qkv", "fused-qkv"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(fused, monkeypatch):
    """Also after ``fuse_qkv_projections()`` (the projections fuse; the processor stays CogVideoX's)."""
    transformer = cogview3plus.tiny_transformer()
    if fused:
        transformer.fuse_qkv_projections()
    inputs = cogview3plus.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(b.attn1.processor) for b in transformer.transformer_blocks} == {
            cogview3plus.PATCH.processor_class}

    assert_round_trip(transformer, "cogview3plus", inputs, installed)
    assert spy.contexts == [(GRID, TEXT)] * 4  # every text token is context of every image query


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = cogview3plus.tiny_transformer()
    inputs = cogview3plus.transformer_inputs(transformer, GRID, text=TEXT)
    assert_equals_masked_stock(transformer, "cogview3plus", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, TEXT), monkeypatch))


def generate(pipe, steps=3, **kwargs):
    return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **cogview3plus.tiny_call_kwargs(), **kwargs).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """CogView3PlusPipeline (classifier-free guidance: the prompt and the all-zero negative features in one batch)
    at 32x32 pixels: an 8x8 grid. Whole windows reproduce it; a sparse preset routes the steps after the dense
    one."""
    pipe = cogview3plus.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cogview3plus", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="cogview3plus", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    # 2 sparse steps x 1 call (both guidance branches batched) x 2 layers, the prompt padded to 48 tokens
    assert spy.contexts == [((8, 8), 48)] * 4


def test_full_size_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    config = on_meta(cogview3plus.PATCH.transformer_class, cogview3plus.FULL_CONFIG).config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (30, 64, 40)
    assert cogview3plus.latent_grid(2048, 2048) == tuple(load_preset("cogview3plus-2k").base_grid)
    assert cogview3plus.latent_grid(2048, 2048) == (config.pos_embed_max_size,) * 2  # the largest size it covers
    assert cogview3plus.latent_grid(1024, 1024) == tuple(load_preset("cogview3plus-1k").base_grid)
