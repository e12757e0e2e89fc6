"""PRX (tiny offline transformers and pipelines, fp32, CPU): the latent PRX and PRXPixel. GNA on every block's
attention, whose queries are the image tokens alone and whose keys are [text, image], the prompt padding masked."""

import pytest
import torch
from brute_force import joint_mask
from diffusers.models.transformers import transformer_prx
from helpers import max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import prx

GRID = (4, 6)
TEXT = 12
VARIANTS = {"latent": False, "pixel": True}


@pytest.mark.parametrize("pixel", VARIANTS.values(), ids=VARIANTS.keys())
def test_whole_extent_reproduces_stock_and_removal_is_exact(pixel, monkeypatch):
    transformer = prx.tiny_transformer(pixel=pixel)
    inputs = prx.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=(5, 9))
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with no_gna_warnings(), enabled(transformer, GNAConfig(family="prx", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="prx", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
        assert torch.equal(transformer(**inputs)[0], stock)  # removed: bit-identical
    assert spy.contexts == [(GRID, TEXT)] * 4  # 2 layers, 2 runs: every prompt slot a context key


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """Each sample's grid queries attend to their window and to that sample's valid prompt tokens."""
    window, stride, valid = (2, 4), (1, 2), (5, 9)
    transformer = prx.tiny_transformer()
    inputs = prx.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="prx", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        grid_rows = joint_mask(GRID, window, stride, TEXT)[TEXT:]  # (N, TEXT + N): the grid queries' rows
        masks = grid_rows.repeat(2, 1, 1, 1)
        for sample, length in enumerate(valid):
            masks[sample, 0, :, length:TEXT] = False
        real = transformer_prx.dispatch_attention_fn

        def masked(query, key, value, attn_mask=None, **kwargs):
            return real(query, key, value, attn_mask=masks, **kwargs)

        monkeypatch.setattr(transformer_prx, "dispatch_attention_fn", masked)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


PIPELINES = {"latent": prx.tiny_pipeline, "pixel": prx.tiny_pixel_pipeline}


@pytest.mark.parametrize("build", PIPELINES.values(), ids=PIPELINES.keys())
def test_pipelines_run_gna_after_the_warm_up(build, monkeypatch):
    """PRXPipeline and PRXPixelPipeline (classifier-free guidance in one batch of 2, the prompts padded) at 32x48
    pixels: an 8x12 grid. Whole windows reproduce them; a sparse preset routes the steps after the dense one."""
    pipe = build()

    def generate():
        return pipe(prompt="a red cat", height=32, width=48, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **prx.tiny_call_kwargs()).images

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="prx", window=-1)) as handle:
            assert max_diff(generate(), stock) <= 1e-5
            assert handle.runtime.grid == (8, 12)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="prx", window=3, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2  # 2 sparse steps x 2 layers


def test_full_size_and_preset_grids():
    assert prx.latent_grid(1024, 1024) == tuple(load_preset("prx-1k").base_grid)
    with pytest.raises(ValueError, match="PRXPixel's 7B shape"):
        prx.full_size("Photoroom/prxpixel-t2i")
