"""NucleusMoE-Image (tiny offline transformer and pipeline, fp32, CPU): GNA on every block's attention, whose queries
are the image tokens alone and whose keys are [image, text], the prompt padding masked by a (B, S) key mask."""

import pytest
import torch
from brute_force import joint_mask
from diffusers.models.transformers import transformer_nucleusmoe_image
from helpers import max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import nucleusmoe_image

GRID = (4, 6)
TEXT = 12
LENGTHS = {"unmasked": None, "padded": (5, 9)}  # valid prompt tokens per sample (None: all, no mask)


@pytest.mark.parametrize("valid", LENGTHS.values(), ids=LENGTHS.keys())
def test_whole_extent_reproduces_stock_and_removal_is_exact(valid, monkeypatch):
    transformer = nucleusmoe_image.tiny_transformer()
    inputs = nucleusmoe_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with no_gna_warnings(), enabled(transformer, GNAConfig(family="nucleusmoe-image", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="nucleusmoe-image", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
        assert torch.equal(transformer(**inputs)[0], stock)  # removed: bit-identical
    assert spy.contexts == [(GRID, TEXT)] * 4  # 2 layers, 2 runs: every prompt slot a context key


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """Each sample's grid queries attend to their window and to that sample's valid prompt tokens, after the grid."""
    window, stride, valid = (2, 4), (1, 2), (5, 9)
    transformer = nucleusmoe_image.tiny_transformer()
    inputs = nucleusmoe_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="nucleusmoe-image", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        n = GRID[0] * GRID[1]
        masks = joint_mask(GRID, window, stride, 0, TEXT)[:n].repeat(2, 1, 1, 1)  # the grid queries' rows
        for sample, length in enumerate(valid):
            masks[sample, 0, :, n + length:] = False
        real = transformer_nucleusmoe_image.dispatch_attention_fn

        def masked(query, key, value, attn_mask=None, **kwargs):
            return real(query, key, value, attn_mask=masks, **kwargs)

        monkeypatch.setattr(transformer_nucleusmoe_image, "dispatch_attention_fn", masked)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


def generate(pipe, steps=3):
    return pipe(prompt="a red cat", height=64, width=96, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **nucleusmoe_image.tiny_call_kwargs()).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """NucleusMoEImagePipeline (classifier-free guidance as two calls) at 64x96 pixels: an 8x12 grid. Whole windows
    reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = nucleusmoe_image.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="nucleusmoe-image", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 12)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="nucleusmoe-image", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2 * 2  # 2 sparse steps x 2 guidance calls x 2 layers


def test_full_size_and_preset_grids():
    assert nucleusmoe_image.latent_grid(1024, 1024) == tuple(load_preset("nucleusmoe-image-1k").base_grid)
    assert nucleusmoe_image.latent_grid(2048, 2048) == tuple(load_preset("nucleusmoe-image-2k").base_grid)
