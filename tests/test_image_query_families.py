"""Families whose attention takes its queries from the image tokens alone and its keys from the image and the text
(tiny offline transformers and pipelines, fp32, CPU): PRX and PRXPixel, keys [text, image]; NucleusMoE-Image, keys
[image, text]. The prompt padding is masked; the text keys are context of every grid query."""

import pytest
import torch
from brute_force import joint_mask
from helpers import assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import nucleusmoe_image, prx

GRID = (4, 6)
TEXT = 12
# family -> (module, transformer builder, text before the image in the keys)
FAMILIES = {
    "prx": (prx, prx.tiny_transformer, True),
    "prx-pixel": (prx, lambda: prx.tiny_transformer(pixel=True), True),
    "nucleusmoe-image": (nucleusmoe_image, nucleusmoe_image.tiny_transformer, False),
}


def family_of(name: str) -> str:
    return FAMILIES[name][0].PATCH.family


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("valid", [None, (5, 9)], ids=["unpadded", "padded"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(name, valid, monkeypatch):
    module, build, _ = FAMILIES[name]
    transformer = build()
    inputs = module.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    spy = OperatorSpy(monkeypatch)
    assert_round_trip(transformer, family_of(name), inputs)
    assert spy.contexts == [(GRID, TEXT)] * 4  # 2 layers, 2 runs: every prompt slot a context key


@pytest.mark.parametrize("name", FAMILIES)
def test_sparse_windows_equal_an_independent_masked_attention(name, monkeypatch):
    """Each sample's grid queries attend to their window and to that sample's valid prompt tokens."""
    module, build, text_first = FAMILIES[name]
    window, stride, valid = (2, 4), (1, 2), (5, 9)
    transformer = build()
    inputs = module.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    n = GRID[0] * GRID[1]
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family=family_of(name), base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        if text_first:  # keys [text, grid]: the grid queries' rows of [text, grid] attention
            masks = joint_mask(GRID, window, stride, TEXT)[TEXT:].repeat(2, 1, 1, 1)
        else:  # keys [grid, text]
            masks = joint_mask(GRID, window, stride, 0, TEXT)[:n].repeat(2, 1, 1, 1)
        for sample, length in enumerate(valid):
            padding = slice(length, TEXT) if text_first else slice(n + length, n + TEXT)
            masks[sample, 0, :, padding] = False
        dispatch_module = module.PATCH.dispatch_module
        real = dispatch_module.dispatch_attention_fn

        def masked(query, key, value, attn_mask=None, **kwargs):
            return real(query, key, value, attn_mask=masks, **kwargs)

        monkeypatch.setattr(dispatch_module, "dispatch_attention_fn", masked)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


# pipeline -> (module, pipeline builder, pixels per grid token, transformer calls per step)
PIPELINES = {
    "prx": (prx, prx.tiny_pipeline, 4, 1),  # guidance in one batch of 2
    "prx-pixel": (prx, prx.tiny_pixel_pipeline, 4, 1),
    "nucleusmoe-image": (nucleusmoe_image, nucleusmoe_image.tiny_pipeline, 8, 2),  # guidance as two calls
}


@pytest.mark.parametrize("name", PIPELINES)
def test_pipelines_run_gna_after_the_warm_up(name, monkeypatch):
    """PRXPipeline, PRXPixelPipeline and NucleusMoEImagePipeline with classifier-free guidance, on an 8x12 grid: whole
    windows reproduce them; a sparse preset routes the steps after the dense one."""
    module, build, pixels, calls = PIPELINES[name]
    pipe = build()

    def generate():
        return pipe(prompt="a red cat", height=8 * pixels, width=12 * pixels, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **module.tiny_call_kwargs()).images

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family=module.PATCH.family, window=-1)) as handle:
            assert max_diff(generate(), stock) <= 1e-5
            assert handle.runtime.grid == (8, 12)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family=module.PATCH.family, window=3, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * calls * 2  # 2 sparse steps x guidance calls x 2 layers


def test_nucleusmoe_text_kv_cache_stacks_with_gna():
    """diffusers' TextKVCache (NucleusMoE-Image's: each block's prompt keys and values projected once, then passed
    to the processor as cached_txt_key / cached_txt_value): whole windows reproduce the cached stock pipeline, and a
    sparse preset gives what it gives without the cache."""
    from diffusers import TextKVCacheConfig

    pipe = nucleusmoe_image.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", height=64, width=96, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **nucleusmoe_image.tiny_call_kwargs()).images

    sparse_config = GNAConfig(family="nucleusmoe-image", window=3, dense_steps=1)
    with enabled(pipe, sparse_config):
        uncached_sparse = generate()
    pipe.transformer.enable_cache(TextKVCacheConfig())
    stock = generate()
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="nucleusmoe-image", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        with enabled(pipe, sparse_config) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert max_diff(sparse, uncached_sparse) <= 1e-5 and max_diff(sparse, stock) > 1e-3


@pytest.mark.parametrize("preset", ["prx-1k", "nucleusmoe-image-1k", "nucleusmoe-image-2k"])
def test_preset_grids(preset):
    config = load_preset(preset)
    size = int(preset.rsplit("-", 1)[1].removesuffix("k")) * 1024
    module = prx if config.family == "prx" else nucleusmoe_image
    assert module.latent_grid(size, size) == tuple(config.base_grid)


def test_prx_pixel_has_no_full_size_shape_offline():
    with pytest.raises(ValueError, match="PRXPixel's 7B shape"):
        prx.full_size("Photoroom/prxpixel-t2i")
