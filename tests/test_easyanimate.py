"""EasyAnimate V5.1 (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's joint [text, video]
attention, whose stock processor calls F.scaled_dot_product_attention itself."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import easyanimate

GRID = (3, 4, 6)
TEXT = 7


def test_whole_extent_reproduces_stock_and_removal_is_exact(monkeypatch):
    transformer = easyanimate.tiny_transformer()
    inputs = easyanimate.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(b.attn1.processor) for b in transformer.transformer_blocks} == {
            easyanimate.GNAEasyAnimateAttnProcessor}

    assert_round_trip(transformer, "easyanimate", inputs, installed)
    assert spy.contexts == [(GRID, TEXT)] * 4  # every text token is context of every video query


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = easyanimate.tiny_transformer()
    inputs = easyanimate.transformer_inputs(transformer, GRID, text=TEXT)
    assert_equals_masked_stock(transformer, "easyanimate", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, TEXT), monkeypatch))


def test_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """EasyAnimatePipeline (classifier-free guidance in one batch of 2, flow matching) at 64x64 pixels x 9 frames: a
    3x4x4 grid with the 256 Qwen2-VL tokens as context. Whole windows reproduce it; a sparse preset routes the steps
    after the dense one."""
    pipe = easyanimate.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **easyanimate.TINY_SIZE,
                    **easyanimate.tiny_call_kwargs()).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="easyanimate", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="easyanimate", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert spy.contexts == [((3, 4, 4), 256)] * (2 * 2)  # 2 sparse steps x 2 layers


def test_full_size_shapes_by_name():
    assert easyanimate.full_size("alibaba-pai/EasyAnimateV5.1-12b-zh-diffusers")[0] is easyanimate.FULL_CONFIG
    with pytest.raises(ValueError, match="no full-size EasyAnimate 7B shape"):
        easyanimate.full_size("alibaba-pai/EasyAnimateV5.1-7b-zh-diffusers")


def test_preset_grid_and_frame_rule():
    assert easyanimate.latent_grid(1024, 1024, 49) == tuple(load_preset("easyanimate-1024").base_grid)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        easyanimate.latent_grid(1024, 1024, 48)
