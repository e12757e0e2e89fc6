"""Ideogram 4 (tiny offline transformers and pipeline, fp32, CPU): GNA on each block's attention over the packed
[padding, prompt, image] sequence, in both the prompt-conditioned and the unconditional transformer."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_ideogram4
from helpers import max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import ideogram4

GRID = (4, 6)
TEXT = 8


def test_whole_extent_reproduces_stock_and_the_grid_comes_from_position_ids(monkeypatch):
    transformer = ideogram4.tiny_transformer()
    inputs = ideogram4.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0][:, TEXT:]  # the image positions carry the prediction
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*gna.*")
            with enabled(transformer, GNAConfig(family="ideogram4", window=-1)) as handle:
                assert max_diff(transformer(**inputs)[0][:, TEXT:], stock) <= 1e-5
                assert handle.runtime.grid == GRID
        with enabled(transformer, GNAConfig(family="ideogram4", window=2)):
            assert max_diff(transformer(**inputs)[0][:, TEXT:], stock) > 1e-3
        assert torch.equal(transformer(**inputs)[0][:, TEXT:], stock)  # removed: bit-identical
    assert spy.contexts == [(GRID, TEXT)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = ideogram4.tiny_transformer()
    inputs = ideogram4.transformer_inputs(transformer, GRID, text=TEXT)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="ideogram4", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0][:, TEXT:]
        masked_self_attention(transformer_ideogram4, joint_mask(GRID, window, stride, TEXT), monkeypatch)
        expected = transformer(**inputs)[0][:, TEXT:]
    assert max_diff(routed, expected) <= 1e-5


def test_pipeline_routes_both_transformers_on_the_grid_encode_prompt_names(monkeypatch):
    """Ideogram4Pipeline at 64x64 pixels (a 16x16 grid): the prompt-conditioned transformer's sequence is [left
    padding, prompt, image] under a segment mask, the unconditional one's the image alone. The layout of every call
    is the one the pipeline prepared (no read of position_ids); whole windows reproduce the pipeline."""
    pipe = ideogram4.tiny_pipeline()
    prepared = []

    def generate():
        return pipe(prompt="a red cat", num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **ideogram4.TINY_SIZE, **ideogram4.tiny_call_kwargs(),
                    **ideogram4.steps_call_kwargs(3)).images

    stock = generate()
    monkeypatch.setattr(ideogram4, "_grid_from_ids", lambda ids: pytest.fail("read the grid from position_ids"))
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="ideogram4", window=-1)) as handle:
            for model in (pipe.transformer, pipe.unconditional_transformer):
                model.register_forward_hook(
                    lambda *_: prepared.append(handle.runtime.layout is handle.runtime.prepared))
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="ideogram4", window=4, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert prepared == [True] * 12  # 2 generations x 3 steps x 2 transformers
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    grids = [grid for grid, _ in spy.contexts]
    assert grids == [(16, 16)] * (2 * 2 * 2)  # 2 sparse steps x 2 transformers x 2 layers
    assert {context for _, context in spy.contexts} == {0, 64}  # the unconditional branch has no prompt


def test_preset_grid():
    assert ideogram4.latent_grid(2048, 2048) == tuple(load_preset("ideogram4-2k").base_grid)


def test_compare_runs_other_step_counts_with_a_constant_guidance_scale(tmp_path):
    """The pipeline's default guidance schedule has one entry per default step (48): compare with 2 steps passes a
    constant scale instead (without it the pipeline refuses the call)."""
    from gna_diffusers.cli import main

    assert ideogram4.steps_call_kwargs(None) == ideogram4.steps_call_kwargs(48) == {}
    args = ["compare", "--model", ideogram4.TINY_NAME, "--output", str(tmp_path), "--steps", "2", "--prompt", "a cat",
            "--no-warmup", "--height", "64", "--width", "64"]
    assert main(args) == 0
