"""ERNIE-Image (tiny offline transformer and pipeline, fp32, CPU): GNA on every block's single-stream self-attention
over [image, text], each sample's prompt padding masked."""

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import ernie_image

GRID = (4, 6)
TEXT = 12
LENGTHS = {"one-length": None, "mixed-lengths": (5, 9)}  # valid prompt tokens per sample (None: all 12)


@pytest.mark.parametrize("valid", LENGTHS.values(), ids=LENGTHS.keys())
def test_whole_extent_reproduces_stock_and_removal_is_exact(valid, monkeypatch):
    transformer = ernie_image.tiny_transformer()
    inputs = ernie_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    spy = OperatorSpy(monkeypatch)
    assert_round_trip(transformer, "ernie-image", inputs)
    assert spy.contexts[:2] == [(GRID, TEXT)] * 2  # every prompt slot is a context key (the padding masked)


def per_sample_mask(lengths: tuple[int, ...], window, stride) -> torch.Tensor:
    """(B, 1, S, S) [query, key]: sample b is [the grid, its prompt, padding]; its grid queries see their window and
    the prompt, its prompt (and padding) queries every valid key."""
    n = GRID[0] * GRID[1]
    masks = torch.zeros(len(lengths), 1, n + TEXT, n + TEXT, dtype=torch.bool)
    for sample, length in enumerate(lengths):
        masks[sample, 0, :, :n + length] = True
        masks[sample, 0, :n + length, :n + length] = joint_mask(GRID, window, stride, 0, length)
    return masks


@pytest.mark.parametrize("valid", [(TEXT, TEXT), (5, 9)], ids=["one-length", "mixed"])
def test_sparse_windows_equal_an_independent_masked_attention(valid, monkeypatch):
    from diffusers.models.transformers import transformer_ernie_image

    window, stride = (2, 4), (1, 2)
    transformer = ernie_image.tiny_transformer()
    inputs = ernie_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    mask = per_sample_mask(valid, window, stride)
    assert_equals_masked_stock(transformer, "ernie-image", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_ernie_image, mask, monkeypatch))


def generate(pipe, steps=3, **kwargs):
    return pipe(prompt="a red cat", height=32, width=48, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **ernie_image.tiny_call_kwargs(), **kwargs).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """ErnieImagePipeline (classifier-free guidance in one batch of 2, the empty negative prompt padded) at 32x48
    pixels: an 8x12 grid. Whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = ernie_image.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="ernie-image", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 12)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="ernie-image", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2  # 2 sparse steps x 2 layers


def test_full_size_and_preset_grids():
    assert ernie_image.latent_grid(2048, 2048) == tuple(load_preset("ernie-image-2k").base_grid)
    assert ernie_image.latent_grid(1024, 1024) == tuple(load_preset("ernie-image-1k").base_grid)
