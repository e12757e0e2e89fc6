"""CogView4 (tiny offline transformer and pipelines, fp32, CPU): GNA on each block's joint [text, image] attention,
whose stock processor calls F.scaled_dot_product_attention itself."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import cogview4

GRID = (4, 6)
TEXT = 7


def text_mask(batch: int = 2) -> torch.Tensor:
    """(B, text) validity of the prompt tokens: the first sample's first three are padding."""
    mask = torch.ones(batch, TEXT)
    mask[0, :3] = 0
    return mask


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "text-mask"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(masked, monkeypatch):
    """Also with a text ``attention_mask``: the stock processor turns it into a (B, 1, S, S) float mask (1 where
    query and key are valid), an additive bias GNA reproduces."""
    transformer = cogview4.tiny_transformer()
    inputs = cogview4.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    if masked:
        inputs["attention_mask"] = text_mask()
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(b.attn1.processor) for b in transformer.transformer_blocks} == {
            cogview4.GNACogView4AttnProcessor}

    assert_round_trip(transformer, "cogview4", inputs, installed)
    assert spy.contexts == [(GRID, TEXT)] * 4  # every text token is context of every image query


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = cogview4.tiny_transformer()
    inputs = cogview4.transformer_inputs(transformer, GRID, text=TEXT)
    assert_equals_masked_stock(transformer, "cogview4", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, TEXT), monkeypatch))


def generate(pipe, steps=3, **kwargs):
    torch.manual_seed(0)  # the control pipeline samples the control image's latents from the global generator
    return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **cogview4.tiny_call_kwargs(), **kwargs).images


def test_text_to_image_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """CogView4Pipeline (classifier-free guidance: two transformer calls per step) at 32x32 pixels: an 8x8 grid.
    Whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = cogview4.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cogview4", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="cogview4", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    # 2 sparse steps x 2 calls (prompt and empty negative prompt, both left-padded to 16 tokens) x 2 layers
    assert spy.contexts == [((8, 8), 16)] * 8


def test_control_pipeline_conditions_along_channels():
    """CogView4ControlPipeline concatenates the control image's latents along channels: the grid is the latents',
    and whole windows reproduce the stock pipeline."""
    from diffusers import CogView4ControlPipeline

    transformer = cogview4.tiny_transformer()
    wide = type(transformer).from_config({**transformer.config, "in_channels": 8}).eval()
    pipe = CogView4ControlPipeline(transformer=wide, **cogview4.tiny_parts())
    control = torch.rand(1, 3, 32, 32)
    stock = generate(pipe, control_image=control)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cogview4", window=-1)) as handle:
            assert max_diff(generate(pipe, control_image=control), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
    with enabled(pipe, GNAConfig(family="cogview4", window=3, dense_steps=1)):
        assert torch.isfinite(generate(pipe, control_image=control)).all()


def test_full_size_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    billions = sum(p.numel() for p in on_meta(cogview4.PATCH.transformer_class, cogview4.FULL_CONFIG).parameters())
    assert billions / 1e9 == pytest.approx(6.37, abs=0.01)  # CogView4-6B's transformer (its name rounds it)
    assert cogview4.latent_grid(2048, 2048) == tuple(load_preset("cogview4-2k").base_grid)
    assert cogview4.latent_grid(1024, 1024) == tuple(load_preset("cogview4-1k").base_grid)
