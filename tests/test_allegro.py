"""Allegro (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's ``attn1`` (video tokens
alone), whose stock processor calls F.scaled_dot_product_attention itself; ``attn2`` stays stock."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from diffusers.models.attention_processor import AllegroAttnProcessor2_0
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import allegro

GRID = (3, 4, 6)


def test_whole_extent_reproduces_stock_and_only_self_attention_is_routed(monkeypatch):
    transformer = allegro.tiny_transformer()
    inputs = allegro.transformer_inputs(transformer, GRID, text=7, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        kinds = {(type(b.attn1.processor), type(b.attn2.processor)) for b in transformer.transformer_blocks}
        assert kinds == {(allegro.GNAAllegroAttnProcessor, AllegroAttnProcessor2_0)}

    assert_round_trip(transformer, "allegro", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = allegro.tiny_transformer()
    inputs = allegro.transformer_inputs(transformer, GRID, text=7)
    assert_equals_masked_stock(transformer, "allegro", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, 0), monkeypatch))


def test_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """AllegroPipeline (classifier-free guidance in one batch of 2, DDIM, tiled VAE decoding) at 128x128 pixels x
    24 frames: a 6x8x8 grid. Whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = allegro.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), height=128, width=128,
                    **allegro.tiny_call_kwargs()).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="allegro", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="allegro", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert spy.contexts == [((6, 8, 8), 0)] * (2 * 2)  # 2 sparse steps x 2 layers (the batch in one call)


def test_preset_grid_and_frame_rule():
    assert allegro.latent_grid(720, 1280, 88) == tuple(load_preset("allegro-720p").base_grid)
    with pytest.raises(ValueError, match="even frame count"):
        allegro.latent_grid(720, 1280, 87)


def test_compare_warns_when_the_vae_decodes_a_constant(tmp_path):
    """Below one VAE tile (24 frames x 128 pixels for the tiny model, 320 for the real one) Allegro's VAE decodes
    zeros, dense and sparse alike: compare says so instead of reporting a perfect match silently."""
    import json

    from gna_diffusers.cli import main

    args = ["compare", "--model", allegro.TINY_NAME, "--output", str(tmp_path), "--steps", "2", "--prompt", "a cat",
            "--no-warmup", "--height", "32", "--width", "32", "--frames", "8"]
    with pytest.warns(UserWarning, match="dense output is one constant colour"):
        assert main(args) == 0
    note = json.loads((tmp_path / "report.json").read_text())["samples"][0]["metrics"]["note"]
    assert "Allegro" in note
