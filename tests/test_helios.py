"""Helios (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's attn1 over the chunk's grid,
with the long-, mid- and short-term history tokens before it as context; one dense warm-up per chunk."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_helios
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import helios

GRID = (3, 4, 6)
# Latent history frames (long, mid, short) -> tokens: ceil(4/4) x ceil(8/8) x ceil(12/8) = 2, ceil(2/2) x 2 x 3 = 6,
# 2 x 4 x 6 = 48.
HISTORY = (4, 2, 2)
HISTORY_TOKENS = 2 + 6 + 48


@pytest.mark.parametrize("history, tokens", [((0, 0, 0), 0), (HISTORY, HISTORY_TOKENS), ((3, 1, 2), 2 + 6 + 48)])
def test_whole_extent_reproduces_stock_and_history_is_context(history, tokens, monkeypatch):
    transformer = helios.tiny_transformer()
    inputs = helios.transformer_inputs(transformer, GRID, text=7, history=history)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert handle.runtime.layout.grid_offset == tokens
        kinds = {(type(b.attn1.processor), type(b.attn2.processor)) for b in transformer.blocks}
        assert kinds == {(helios.GNAHeliosAttnProcessor, transformer_helios.HeliosAttnProcessor)}

    assert_round_trip(transformer, "helios", inputs, installed)
    assert spy.contexts == [(GRID, tokens)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = helios.tiny_transformer()
    inputs = helios.transformer_inputs(transformer, GRID, text=7, history=HISTORY)
    mask = joint_mask(GRID, window, stride, HISTORY_TOKENS)
    assert_equals_masked_stock(transformer, "helios", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_helios, mask, monkeypatch))


def test_pipeline_runs_gna_in_every_chunk_after_its_own_warm_up(monkeypatch):
    """HeliosPipeline, two chunks of 3 latent frames at 32x32 pixels (a 3x4x4 grid each), classifier-free
    guidance; each chunk sets its schedule again, so each has a dense first step, and its history is context."""
    pipe = helios.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **helios.tiny_call_kwargs()).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="helios", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="helios", window=2, dense_steps=1)):
            sparse = generate()
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    # 2 chunks x 2 sparse steps x 2 guidance calls x 2 layers, each after the chunk's history tokens
    assert len(spy.contexts) == 2 * 2 * 2 * 2 and {grid for grid, _ in spy.contexts} == {(3, 4, 4)}
    assert min(context for _, context in spy.contexts) > 0


def test_preset_grid():
    assert helios.latent_grid(384, 640, 33) == tuple(load_preset("helios-384p").base_grid)


def test_pyramid_pipeline_runs_gna_on_every_stages_grid(monkeypatch):
    """HeliosPyramidPipeline denoises each chunk in three stages of rising resolution, each setting its schedule:
    GNA follows the grid of each stage (2x2, 4x4, 8x8 per frame at 64x64 pixels) after each stage's dense step."""
    from diffusers import HeliosPyramidPipeline, HeliosScheduler

    # The scheduler's default gamma (1/3) makes the pipeline's 2x2 block-noise covariance singular, whose Cholesky
    # succeeds or fails by rounding (it fails on AMD EPYC's MKL, with or without GNA): 1/4 keeps it positive-definite.
    scheduler = HeliosScheduler(gamma=0.25)
    pipe = HeliosPyramidPipeline(**{**helios.tiny_pipeline().components, "scheduler": scheduler})
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="helios", window=2, dense_steps=1)):
            video = pipe(prompt="a red cat", height=64, width=64, pyramid_num_inference_steps_list=[2, 2, 2],
                         output_type="pt", generator=torch.Generator().manual_seed(0),
                         **helios.tiny_call_kwargs()).frames
    assert torch.isfinite(video).all()
    grids = [grid for grid, _ in spy.contexts]
    # 2 chunks x 3 stages x 1 sparse step x 2 guidance calls x 2 layers
    assert len(grids) == 24 and set(grids) == {(3, 2, 2), (3, 4, 4), (3, 8, 8)}
