"""PixArt (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's image-only self-attention, whose
stock processor calls F.scaled_dot_product_attention itself; the prompt's cross-attention stays stock."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import pixart

GRID = (4, 6)
TEXT = 7


@pytest.mark.parametrize("alpha", [False, True], ids=["sigma", "alpha-size-conditions"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(alpha, monkeypatch):
    """PixArt-Sigma's transformer, and PixArt-Alpha's, which also takes the resolution and aspect ratio (embedded
    in a third of the width each: 3 heads here)."""
    transformer = pixart.tiny_transformer()
    if alpha:
        torch.manual_seed(0)
        transformer = type(transformer).from_config(
            {**transformer.config, "use_additional_conditions": True, "num_attention_heads": 3,
             "cross_attention_dim": 48}).eval()
    inputs = pixart.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        blocks = transformer.transformer_blocks
        assert {type(b.attn1.processor) for b in blocks} == {pixart.GNAAttnProcessor2_0}
        assert {type(b.attn2.processor) for b in blocks} == {pixart.AttnProcessor2_0}  # cross-attention

    assert_round_trip(transformer, "pixart", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4  # the grid alone: no context tokens in the self-attention


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = pixart.tiny_transformer()
    inputs = pixart.transformer_inputs(transformer, GRID, text=TEXT)
    assert_equals_masked_stock(transformer, "pixart", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, 0), monkeypatch))


def generate(pipe, steps=3, **kwargs):
    return pipe(prompt="a red cat", height=32, width=48, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **pixart.tiny_call_kwargs(), **kwargs).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """PixArtSigmaPipeline (classifier-free guidance in one batch of 2, DPM-Solver++) at 32x48 pixels: an 8x12
    grid. Whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = pixart.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="pixart", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 12)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="pixart", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2  # 2 sparse steps x 2 layers


def test_full_size_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    billions = sum(p.numel() for p in on_meta(pixart.PATCH.transformer_class, pixart.FULL_CONFIG).parameters()) / 1e9
    assert billions == pytest.approx(0.61, abs=0.01)  # PixArt-Sigma XL-2: "0.6B"
    assert pixart.latent_grid(2048, 2048) == tuple(load_preset("pixart-2k").base_grid)
    assert pixart.latent_grid(1024, 1024) == tuple(load_preset("pixart-1k").base_grid)
