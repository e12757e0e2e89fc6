"""GLM-Image (tiny offline transformer and pipeline, fp32, CPU; the pipeline without its autoregressive model, given
prior tokens): GNA on every block's [glyph text, image] self-attention; editing's condition images fill a KV cache in
a stock pass of their own, and their cached keys are context of every generated token."""

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_glm_image
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from PIL import Image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import glm_image

GRID = (4, 6)
TEXT = 6


def test_whole_extent_reproduces_stock_and_removal_is_exact(monkeypatch):
    transformer = glm_image.tiny_transformer()
    inputs = glm_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)
    assert_round_trip(transformer, "glm-image", inputs)
    assert spy.contexts == [(GRID, TEXT)] * 4  # 2 layers, 2 runs


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = glm_image.tiny_transformer()
    inputs = glm_image.transformer_inputs(transformer, GRID, text=TEXT)
    mask = joint_mask(GRID, window, stride, TEXT)
    assert_equals_masked_stock(transformer, "glm-image", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_glm_image, mask, monkeypatch))


def test_condition_pass_runs_stock_and_is_not_counted_on_a_bare_transformer(monkeypatch):
    """A bare transformer's calls count the steps; the condition image's KV-cache pass is no step: after it, the
    first denoising call is still the dense warm-up, and only the second runs GNA, against the cached keys (the
    condition's 12 tokens and the text)."""
    from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache

    transformer = glm_image.tiny_transformer()
    condition = glm_image.transformer_inputs(transformer, (3, 4), text=0, seed=1)
    inputs = glm_image.transformer_inputs(transformer, GRID, text=TEXT)
    caches = GlmImageKVCache(num_layers=2)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), no_gna_warnings():
        with enabled(transformer, GNAConfig(family="glm-image", window=2, dense_steps=1)) as handle:
            caches.set_mode("write")
            transformer(**condition, kv_caches=caches)
            caches.set_mode("read")
            transformer(**inputs, kv_caches=caches)
            assert not spy.contexts and handle.runtime.step == 0  # the first call is step 0
            transformer(**inputs, kv_caches=caches)
    assert spy.contexts == [(GRID, 12 + TEXT)] * 2


def generate(pipe, grid=(8, 8), steps=3, **kwargs):
    """A (rows, cols) grid's image: 4 pixels per token (the tiny VAE compresses 2x)."""
    return pipe(prompt='a sign that says "hi"', height=4 * grid[0], width=4 * grid[1], num_inference_steps=steps,
                output_type="pt", generator=torch.Generator().manual_seed(0),
                prior_token_ids=glm_image.prior_tokens(grid), **kwargs).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """GlmImagePipeline with classifier-free guidance (two calls per step; the glyph text of the quoted words, the
    negative prompt's none) at 32x24 pixels: an 8x6 grid."""
    pipe = glm_image.tiny_pipeline()
    stock = generate(pipe, (8, 6))
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="glm-image", window=-1)) as handle:
            assert max_diff(generate(pipe, (8, 6)), stock) <= 1e-5
            assert handle.runtime.grid == (8, 6)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="glm-image", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe, (8, 6))
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2 * 2  # 2 sparse steps x 2 guidance calls x 2 layers


def test_editing_pipeline_reads_the_condition_keys_as_context(monkeypatch):
    """Editing with one 16x12-pixel condition image (a 3x4 grid of tokens, cached once per generation):
    whole windows reproduce it; sparse, the conditional call's grid attends to the 12 cached condition tokens and the
    glyph text, the unconditional one (cache skipped) to its empty text; a second generation repeats the first (its
    condition pass, after the first generation's sparse steps, runs stock again)."""
    pipe = glm_image.tiny_pipeline()
    edit = dict(image=[Image.new("RGB", (16, 12), (90, 30, 200))],
                prior_token_image_ids=[glm_image.prior_tokens((3, 4), seed=1)[0]],
                source_image_grid_thw=[torch.tensor([[1, 3, 4]])])
    stock = generate(pipe, **edit)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="glm-image", window=-1)):
            assert max_diff(generate(pipe, **edit), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="glm-image", window=3, dense_steps=1)):
            first = generate(pipe, **edit)
            assert torch.equal(generate(pipe, **edit), first)
    assert max_diff(first, stock) > 0
    # The conditional calls: 12 condition tokens and "hi" with its end token; the unconditional: the end token alone.
    assert {context for _, context in spy.contexts} == {12 + 3, 1}
    assert len(spy.contexts) == 2 * 2 * 2 * 2  # 2 generations x 2 sparse steps x 2 guidance calls x 2 layers


def test_full_size_and_preset_grids():
    assert glm_image.latent_grid(2048, 2048) == tuple(load_preset("glm-image-2k").base_grid)
    assert glm_image.latent_grid(1024, 1024) == tuple(load_preset("glm-image-1k").base_grid)


@pytest.mark.parametrize("mode", ["read", "skip"])
def test_denoising_calls_in_any_cache_mode_are_sparse(mode, monkeypatch):
    """Only a ``write`` call is the condition pass: ``read`` and ``skip`` calls are denoising calls."""
    from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache

    transformer = glm_image.tiny_transformer()
    caches = GlmImageKVCache(num_layers=2)
    caches.set_mode(mode)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), enabled(transformer, GNAConfig(family="glm-image", window=2)):
        transformer(**glm_image.transformer_inputs(transformer, GRID, text=TEXT), kv_caches=caches)
    assert spy.contexts == [(GRID, TEXT)] * 2
