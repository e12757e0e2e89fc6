"""NVIDIA AnyFlow (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's ``attn1``; the
pipeline prepares latents channels-first and calls the transformer frames-first."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_anyflow
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import anyflow

GRID = (3, 4, 6)


def test_whole_extent_reproduces_stock_and_only_self_attention_is_routed(monkeypatch):
    transformer = anyflow.tiny_transformer()
    inputs = anyflow.transformer_inputs(transformer, GRID, text=7, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        kinds = {(type(b.attn1.processor), type(b.attn2.processor)) for b in transformer.blocks}
        assert kinds == {(anyflow.GNAAnyFlowAttnProcessor, transformer_anyflow.AnyFlowCrossAttnProcessor)}

    assert_round_trip(transformer, "anyflow", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = anyflow.tiny_transformer()
    inputs = anyflow.transformer_inputs(transformer, GRID, text=7)
    mask = joint_mask(GRID, window, stride, 0)
    assert_equals_masked_stock(transformer, "anyflow", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_anyflow, mask, monkeypatch))


def test_pipeline_uses_the_prepared_layout_and_runs_gna_after_the_warm_up(monkeypatch):
    """AnyFlowPipeline (classifier-free guidance in one batch of 2, flow-map Euler) at 32x32 pixels x 9 frames: a
    5x4x4 grid, read from the channels-first latents prepare_latents returns although the transformer takes them
    frames-first. Whole windows reproduce the pipeline; a sparse preset routes the steps after the dense one."""
    pipe = anyflow.tiny_pipeline()
    layouts = []

    def generate():
        return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **anyflow.tiny_call_kwargs()).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="anyflow", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="anyflow", window=2, dense_steps=1)) as handle:
            pipe.transformer.register_forward_hook(lambda *_: layouts.append(handle.runtime.layout is
                                                                              handle.runtime.prepared))
            sparse = generate()
            assert handle.runtime.step == 3
    assert layouts == [True] * 3  # every call's layout is the prepared one (no probe of its own)
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert spy.contexts == [((5, 4, 4), 0)] * (2 * 2)  # 2 sparse steps x 2 layers


@pytest.mark.parametrize("preset, size", [("anyflow-480p", (480, 832, 81)), ("anyflow-720p", (720, 1280, 81))])
def test_preset_grids(preset, size):
    assert anyflow.latent_grid(*size) == tuple(load_preset(preset).base_grid)
