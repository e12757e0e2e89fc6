"""Ovis-Image (tiny offline transformer and pipeline, fp32, CPU): FLUX's architecture with its own attention
processor: GNA on the double- and single-stream blocks, the grid from FLUX's img_ids probe."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_ovis_image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import ovis_image

GRID = (4, 6)
TEXT = 8


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def test_whole_extent_reproduces_stock_on_both_block_types(monkeypatch):
    transformer = ovis_image.tiny_transformer()
    inputs = ovis_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*gna.*")
            with enabled(transformer, GNAConfig(family="ovis-image", window=-1)) as handle:
                assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
                assert {row["blocks"] for row in handle.layers()} == {"double", "single"}
        with enabled(transformer, GNAConfig(family="ovis-image", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
        assert torch.equal(transformer(**inputs)[0], stock)  # removed: bit-identical
    assert spy.contexts == [(GRID, TEXT)] * 8  # 2 double + 2 single layers, 2 runs


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = ovis_image.tiny_transformer()
    inputs = ovis_image.transformer_inputs(transformer, GRID, text=TEXT)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="ovis-image", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        masked_self_attention(transformer_ovis_image, joint_mask(GRID, window, stride, TEXT), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


def test_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """OvisImagePipeline (classifier-free guidance as two calls) at 32x32 pixels: an 8x8 grid. Whole windows
    reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = ovis_image.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **ovis_image.tiny_call_kwargs()).images

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="ovis-image", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="ovis-image", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert {grid for grid, _ in spy.contexts} == {(8, 8)} and len(spy.contexts) == 2 * 2 * 4  # steps x CFG x layers


@pytest.mark.parametrize("preset, size", [("ovis-image-2k", 2048), ("ovis-image-1k", 1024)])
def test_preset_grids(preset, size):
    assert ovis_image.latent_grid(size, size) == tuple(load_preset(preset).base_grid)
