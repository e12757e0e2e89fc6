"""Lumina-Image 2.0 (tiny offline transformer and pipeline, fp32, CPU): GNA on the noise refiner's image-only
self-attention and on the main blocks' [caption, image] one, whose stock processor calls
F.scaled_dot_product_attention itself; a batch whose captions differ in length puts each sample's grid at its own
offset, which the GNA processor rolls into place."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import lumina2

GRID = (4, 6)
TEXT = 12
LENGTHS = {"one-length": None, "mixed-lengths": (5, 9)}  # valid caption tokens per sample (None: all 12)


@pytest.mark.parametrize("valid", LENGTHS.values(), ids=LENGTHS.keys())
def test_whole_extent_reproduces_stock_and_removal_is_exact(valid, monkeypatch):
    transformer = lumina2.tiny_transformer()
    inputs = lumina2.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(b.attn.processor) for b in transformer.context_refiner} == {lumina2.Lumina2AttnProcessor2_0}

    assert_round_trip(transformer, "lumina2", inputs, installed)
    # the main blocks' context: the longest caption (the rest of a shorter one: padding)
    context = max(valid or (TEXT,))
    assert spy.contexts[:3] == [(GRID, 0), (GRID, context), (GRID, context)]  # refiner, then 2 main blocks


def per_sample_mask(lengths: tuple[int, ...], window, stride) -> torch.Tensor:
    """(B, 1, S, S) [query, key] of the main blocks: sample b is [its caption, the grid, batch padding]; its grid
    queries see their window and the caption, its caption (and padding) queries every valid key."""
    n = GRID[0] * GRID[1]
    total = max(lengths) + n
    masks = torch.zeros(len(lengths), 1, total, total, dtype=torch.bool)
    for sample, length in enumerate(lengths):
        masks[sample, 0, :, :length + n] = True
        masks[sample, 0, :length + n, :length + n] = joint_mask(GRID, window, stride, length)
    return masks


@pytest.mark.parametrize("valid", [(TEXT, TEXT), (5, 9), (9, 5)], ids=["one-length", "mixed", "mixed-reversed"])
def test_sparse_windows_equal_an_independent_masked_attention(valid, monkeypatch):
    """The main blocks sparse (the refiner dense): each sample's grid queries attend to their window around them
    and to that sample's caption alone, wherever its grid starts."""
    window, stride = (2, 4), (1, 2)
    transformer = lumina2.tiny_transformer()
    inputs = lumina2.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="lumina2", base_grid=list(GRID), window=list(window),
                                            stride=list(stride), dense_layers=[{"blocks": "refiner"}])):
            routed = transformer(**inputs)[0]
        masked_sdpa(per_sample_mask(valid, window, stride), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


def generate(pipe, prompt="a red cat", steps=3, **kwargs):
    return pipe(prompt=prompt, height=128, width=96, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **lumina2.tiny_call_kwargs(), **kwargs).images


@pytest.mark.parametrize("prompt", ["a red cat", ["a red cat", "a blue dog on a long walk by the sea"]],
                         ids=["one-prompt", "two-prompts"])
def test_text_to_image_pipeline_runs_gna_after_the_warm_up(prompt, monkeypatch):
    """Lumina2Pipeline (one call per guidance branch, each with its own caption length) at 128x96 pixels: an 8x6
    grid. Two prompts of different lengths make one batch with a key mask. Whole windows reproduce it; a sparse
    preset routes the steps after the dense one."""
    pipe = lumina2.tiny_pipeline()
    stock = generate(pipe, prompt)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="lumina2", window=-1)) as handle:
            assert max_diff(generate(pipe, prompt), stock) <= 1e-5
            assert handle.runtime.grid == (8, 6)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="lumina2", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe, prompt)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2 * 3  # 2 sparse steps x 2 guidance calls x (1 refiner + 2 main blocks)


def test_full_size_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    billions = sum(p.numel() for p in on_meta(lumina2.PATCH.transformer_class, lumina2.FULL_CONFIG).parameters()) / 1e9
    assert billions == pytest.approx(2.61, abs=0.01)  # Lumina-Image 2.0: "2.6B"
    assert lumina2.latent_grid(2048, 2048) == tuple(load_preset("lumina2-2k").base_grid)
    assert lumina2.latent_grid(1024, 1024) == tuple(load_preset("lumina2-1k").base_grid)


def test_compiled_blocks_run_gna_like_eager():
    """The stock transformer reads its caption lengths to the host, so it does not compile whole with
    fullgraph=True, nor does it name repeated blocks for compile_repeated_blocks; each block compiles whole, the
    roll of a mixed-length batch included, and GNA runs in it as in eager mode."""
    transformer = lumina2.tiny_transformer()
    inputs = lumina2.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=(5, 9))
    config = GNAConfig(family="lumina2", window=3)
    with torch.no_grad():
        with enabled(transformer, config):
            eager = transformer(**inputs)[0]
        torch._dynamo.reset()
        for block in (*transformer.noise_refiner, *transformer.layers):
            block.compile(fullgraph=True, backend="eager")
        try:
            with enabled(transformer, config):
                compiled = transformer(**inputs)[0]
        finally:
            torch._dynamo.reset()
    assert max_diff(compiled, eager) <= 1e-6
