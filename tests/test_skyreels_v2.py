"""SkyReels-V2 (tiny offline models, fp32, CPU): Wan's layout with processors of its own; diffusion
forcing's block-causal mask (several frames per block) runs dense."""

import dataclasses

import pytest
import torch
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import skyreels_v2

GRID = (4, 4, 6)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("forcing", [False, True], ids=["text-to-video", "diffusion-forcing"])
def test_whole_extent_reproduces_stock_and_only_attn1_is_routed(forcing, monkeypatch):
    """Diffusion forcing with one frame per block gives every frame its own noise level and no mask: GNA."""
    transformer = skyreels_v2.tiny_transformer()
    inputs = skyreels_v2.transformer_inputs(transformer, GRID, text=7, batch=2)
    if forcing:
        inputs |= dict(timestep=torch.tensor([[900, 700, 500, 300]] * 2), enable_diffusion_forcing=True)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="skyreels-v2", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
            assert all(isinstance(b.attn1.processor, skyreels_v2.GNASkyReelsV2AttnProcessor) for b in transformer.blocks)
            assert all(type(b.attn2.processor) is SkyReelsV2AttnProcessor for b in transformer.blocks)
        spy.contexts.clear()
        with enabled(transformer, GNAConfig(family="skyreels-v2", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
        assert torch.equal(transformer(**inputs)[0], stock)
    assert spy.contexts == [(GRID, 0)] * 2  # the video tokens alone, in both blocks


def test_block_causal_diffusion_forcing_runs_dense_with_one_warning():
    transformer = skyreels_v2.tiny_transformer()
    transformer._set_ar_attention(2)  # what the diffusion-forcing pipelines do for causal_block_size=2
    inputs = skyreels_v2.transformer_inputs(transformer, GRID, text=7)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="skyreels-v2", window=2)):
            with pytest.warns(UserWarning, match="2 frames per block masks attention block-causally"):
                out = transformer(**inputs)[0]
    assert torch.equal(out, stock)


def test_the_route_refuses_a_mask_that_differs_between_grid_queries(monkeypatch):
    """Without the family's guard, the route itself sees that the block-causal mask's rows differ across
    the grid and runs those layers dense with a warning, rather than GNA under one row of it."""
    from gna_diffusers.patches import PATCHES

    unguarded = dataclasses.replace(skyreels_v2.PATCH, layout_probe=skyreels_v2.LAYOUT.probe)
    monkeypatch.setitem(PATCHES, "skyreels-v2", unguarded)
    transformer = skyreels_v2.tiny_transformer()
    transformer._set_ar_attention(2)
    inputs = skyreels_v2.transformer_inputs(transformer, GRID, text=7)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="skyreels-v2", window=2)):
            with pytest.warns(UserWarning, match="attention mask differs between grid queries"):
                out = transformer(**inputs)[0]
    assert torch.equal(out, stock)
