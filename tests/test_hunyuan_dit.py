"""Hunyuan-DiT (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's image-only self-attention,
whose stock processor calls F.scaled_dot_product_attention itself; the prompt's cross-attention stays stock."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import hunyuan_dit

GRID = (4, 6)


@pytest.mark.parametrize("conditions", [True, False], ids=["v1.1-style-and-size", "v1.2"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(conditions, monkeypatch):
    transformer = hunyuan_dit.tiny_transformer()
    if not conditions:
        torch.manual_seed(0)
        transformer = type(transformer).from_config(
            {**transformer.config, "use_style_cond_and_image_meta_size": False}).eval()
    inputs = hunyuan_dit.transformer_inputs(transformer, GRID, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(b.attn1.processor) for b in transformer.blocks} == {hunyuan_dit.GNAHunyuanAttnProcessor2_0}
        assert {type(b.attn2.processor) for b in transformer.blocks} == {hunyuan_dit.HunyuanAttnProcessor2_0}

    assert_round_trip(transformer, "hunyuan-dit", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4  # the grid alone


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = hunyuan_dit.tiny_transformer()
    inputs = hunyuan_dit.transformer_inputs(transformer, GRID)
    assert_equals_masked_stock(transformer, "hunyuan-dit", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, 0), monkeypatch))


@pytest.mark.parametrize("width, grid", [(64, (4, 4)), (96, (4, 6))], ids=["square", "wide"])
def test_text_to_image_pipeline_runs_gna_after_the_warm_up(width, grid, monkeypatch):
    """HunyuanDiTPipeline (classifier-free guidance in one batch of 2) at 64 pixels high: its 8x VAE and 2x2 patches
    make a 4x4 grid, or 4x6 for a wider image. Whole windows reproduce it; a sparse preset routes the steps after
    the dense one."""
    pipe = hunyuan_dit.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", height=64, width=width, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **hunyuan_dit.tiny_call_kwargs()).images

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="hunyuan-dit", window=-1)) as handle:
            assert max_diff(generate(), stock) <= 1e-5
            assert handle.runtime.grid == grid
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="hunyuan-dit", window=3, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3
    assert len(spy.windows) == 2 * 2  # 2 sparse steps x 2 layers


def test_controlnet_blocks_are_patched_beside_the_transformer(monkeypatch):
    """HunyuanDiTControlNetPipeline: the ControlNet runs Hunyuan-DiT blocks (here 1, beside a 4-block transformer)
    over the same image tokens and is patched too; whole windows reproduce the stock pipeline, and removal restores
    it. (The pipeline samples the control image's latents from the global generator: seeded per call.)"""
    from diffusers import HunyuanDiT2DControlNetModel, HunyuanDiTControlNetPipeline
    from PIL import Image

    parts = hunyuan_dit.tiny_pipeline().components
    parts["transformer"] = hunyuan_dit.tiny_transformer(num_layers=4)
    torch.manual_seed(0)
    controlnet = HunyuanDiT2DControlNetModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, patch_size=2, sample_size=16, hidden_size=32,
        transformer_num_layers=4, cross_attention_dim=hunyuan_dit.BERT_WIDTH,
        cross_attention_dim_t5=hunyuan_dit.T5_WIDTH, pooled_projection_dim=16, text_len=77, text_len_t5=256).eval()
    for parameter in (*controlnet.controlnet_blocks.parameters(), *controlnet.input_block.parameters()):
        torch.nn.init.normal_(parameter, std=0.2)  # zero at initialisation: make the control count
    pipe = HunyuanDiTControlNetPipeline(controlnet=controlnet, **parts)
    control = Image.new("RGB", (64, 64), (90, 30, 200))

    def generate():
        torch.manual_seed(0)
        return pipe(prompt="a red cat", height=64, width=64, num_inference_steps=2, output_type="pt",
                    control_image=control, generator=torch.Generator().manual_seed(0),
                    **hunyuan_dit.tiny_call_kwargs()).images

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="hunyuan-dit", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
            assert type(controlnet.blocks[0].attn1.processor) is hunyuan_dit.GNAHunyuanAttnProcessor2_0
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="hunyuan-dit", window=2)):
            assert max_diff(generate(), stock) > 1e-3
    assert len(spy.windows) == 2 * (1 + 4)  # 2 steps x (the ControlNet's block + the transformer's 4)
    assert torch.equal(generate(), stock)


def test_full_size_and_preset_grid():
    from gna_diffusers.harness.models import on_meta

    model = on_meta(hunyuan_dit.PATCH.transformer_class, hunyuan_dit.FULL_CONFIG)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(1.5, rel=0.05)
    assert hunyuan_dit.latent_grid(1024, 1024) == tuple(load_preset("hunyuan-dit-1k").base_grid)
