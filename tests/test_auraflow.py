"""AuraFlow (tiny offline transformer and pipeline, fp32, CPU): GNA on the MMDiT blocks' joint [context, image]
attention and on the single blocks' attention over the same tokens in one stream; the context is the 8 learned
registers then the prompt. The stock processor calls F.scaled_dot_product_attention itself."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import auraflow

GRID = (4, 6)
TEXT = 7
CONTEXT = auraflow.REGISTER_TOKENS + TEXT


@pytest.mark.parametrize("fused", [False, True], ids=["separate-qkv", "fused-qkv"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(fused, monkeypatch):
    """Both kinds of block are routed; after ``fuse_qkv_projections()`` (before apply) GNA's fused subclass takes
    the fused processor's place."""
    transformer = auraflow.tiny_transformer()
    if fused:
        transformer.fuse_qkv_projections()
    inputs = auraflow.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    expected = auraflow.GNAFusedAuraFlowAttnProcessor if fused else auraflow.GNAAuraFlowAttnProcessor
    blocks = [*transformer.joint_transformer_blocks, *transformer.single_transformer_blocks]
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(block.attn.processor) for block in blocks} == {expected}

    assert_round_trip(transformer, "auraflow", inputs, installed)
    # every register and prompt token is context of every image query, in both blocks, both runs
    assert spy.contexts == [(GRID, CONTEXT)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """Both kinds of block attend over the same [context, image] sequence: the stock model with the GNA mask on
    every attention call is the reference."""
    window, stride = (2, 4), (1, 2)
    transformer = auraflow.tiny_transformer()
    inputs = auraflow.transformer_inputs(transformer, GRID, text=TEXT)
    assert_equals_masked_stock(transformer, "auraflow", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, CONTEXT), monkeypatch))


@pytest.mark.parametrize("dense", ["joint", "single"])
def test_presets_name_both_block_types(dense, monkeypatch):
    """A preset's dense_layers keep one kind of block dense: only the other kind's calls reach GNA."""
    transformer = auraflow.tiny_transformer(num_mmdit_layers=1, num_single_dit_layers=2)
    inputs = auraflow.transformer_inputs(transformer, GRID, text=TEXT)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), enabled(transformer, GNAConfig(family="auraflow", window=2,
                                                         dense_layers=[{"blocks": dense}])):
        transformer(**inputs)
    assert len(spy.contexts) == {"joint": 2, "single": 1}[dense]


def generate(pipe, steps=3, **kwargs):
    return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **auraflow.tiny_call_kwargs(), **kwargs).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """AuraFlowPipeline (both guidance branches in one batch) at 32x32 pixels: an 8x8 grid. Whole windows
    reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = auraflow.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="auraflow", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="auraflow", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    # 2 sparse steps x 2 blocks; the registers, then the prompt padded to 48 tokens
    assert spy.contexts == [((8, 8), auraflow.REGISTER_TOKENS + 48)] * 4


def test_full_size_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    config = on_meta(auraflow.PATCH.transformer_class, auraflow.FULL_CONFIG).config
    assert auraflow.latent_grid(1024, 1024) == tuple(load_preset("auraflow-1k").base_grid)
    table = int(config.pos_embed_max_size ** 0.5)
    assert auraflow.latent_grid(1536, 1536) == tuple(load_preset("auraflow-1536").base_grid) == (table, table)
