"""SkyReels-V2 (tiny offline models, fp32, CPU): Wan's layout with processors of its own; diffusion
forcing's block-causal mask (several frames per block) runs dense."""

import dataclasses
import warnings

import pytest
import torch
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor
from helpers import max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import skyreels_v2, wan

GRID = (4, 4, 6)


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
            assert all(isinstance(b.attn1.processor, skyreels_v2.GNASkyReelsV2AttnProcessor)
                       for b in transformer.blocks)
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


@pytest.mark.parametrize("schedule",
                         [{}, {"ar_step": 1}, {"num_frames": 17, "base_num_frames": 9, "overlap_history": 4}],
                         ids=["synchronous", "asynchronous", "long-video"])
def test_diffusion_forcing_pipeline_counts_its_steps_through_the_per_frame_schedulers(schedule, monkeypatch):
    """The diffusion-forcing pipeline never steps its own scheduler: it steps one copy per latent frame
    (several per loop iteration) and, for long videos, a new set per chunk. One round of transformer calls
    is one step, each chunk gets the dense warm-up, and no copy drags the transformer along."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

    parts = wan.tiny_parts(0) | dict(scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction",
                                                                      use_flow_sigmas=True, flow_shift=8.0))
    pipe = SkyReelsV2DiffusionForcingPipeline(transformer=skyreels_v2.tiny_transformer(), **parts)
    spy = OperatorSpy(monkeypatch)
    sparse_per_call = []
    pipe.transformer.register_forward_hook(lambda *_: sparse_per_call.append(len(spy.windows)))
    schedule = dict(schedule)
    with enabled(pipe, GNAConfig(family="skyreels-v2", window=2, dense_steps=2)) as handle:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="gna")
            pipe(prompt="a cat", num_inference_steps=4, height=32, width=32, num_frames=schedule.pop("num_frames", 9),
                 max_sequence_length=48, output_type="pt", generator=torch.Generator().manual_seed(0), **schedule)
        iterations = handle.runtime.step
        assert iterations == pipe._num_timesteps  # loop iterations of the (last) chunk: 8 when asynchronous
    calls = [b - a for a, b in zip([0] + sparse_per_call, sparse_per_call)]  # cond + uncond per iteration
    chunks = len(calls) // (2 * iterations)
    assert (chunks > 1) == ("base_num_frames" in schedule)
    # Per chunk: two dense iterations (two calls each), then both blocks sparse in every call.
    assert calls == ([0] * 4 + [2] * (2 * iterations - 4)) * chunks
