"""HiDream-I1 (tiny offline transformer and pipeline, fp32, CPU): GNA on the dual- and single-stream [image, text]
attention, whose stock processor calls F.scaled_dot_product_attention itself; a non-square image's padding slots are
context, as the stock attention attends them."""

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import hidream

GRID = (4, 6)  # non-square: the 24 image tokens fill the first of the tiny model's 256 slots
TEXT = 7


@pytest.mark.parametrize("grid", [(4, 4), GRID], ids=["square", "padded"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(grid, monkeypatch):
    transformer = hidream.tiny_transformer()
    inputs = hidream.transformer_inputs(transformer, grid, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(b.block.attn1.processor) for b in transformer.double_stream_blocks} == {
            hidream.GNAHiDreamAttnProcessor}

    assert_round_trip(transformer, "hidream", inputs, installed)
    padding = 0 if grid[0] == grid[1] else transformer.max_seq - grid[0] * grid[1]
    # double blocks: T5, the initial Llama layer and the block's own; single blocks: the same joint sequence
    assert spy.contexts == [(grid, padding + 3 * TEXT)] * 8


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2), (1, 1)
    transformer = hidream.tiny_transformer()
    inputs = hidream.transformer_inputs(transformer, (4, 4), text=TEXT)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="hidream", base_grid=[4, 4], window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        masked_sdpa(joint_mask((4, 4), window, stride, 0, 3 * TEXT), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


def generate(pipe, width=32, steps=3):
    return pipe(prompt="a red cat", height=32, width=width, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **hidream.tiny_call_kwargs()).images


@pytest.mark.parametrize("width, grid", [(32, (8, 8)), (48, (6, 9))], ids=["square", "wide"])
def test_text_to_image_pipeline_runs_gna_after_the_warm_up(width, grid, monkeypatch):
    """HiDreamImagePipeline (classifier-free guidance in one batch of 2) scales a request to its area, 32x32 pixels
    here: an 8x8 grid, or 6x9 for a wider request, packed into 256 slots. Whole windows reproduce it; a sparse
    preset routes the steps after the dense one."""
    pipe = hidream.tiny_pipeline()
    stock = generate(pipe, width)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="hidream", window=-1)) as handle:
            assert max_diff(generate(pipe, width), stock) <= 1e-5
            assert handle.runtime.grid == grid
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="hidream", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe, width)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 4  # 2 sparse steps x 4 layers


def test_pre_packed_hidden_states_run_dense_with_a_warning():
    transformer = hidream.tiny_transformer()
    inputs = hidream.transformer_inputs(transformer, (4, 4), text=TEXT)
    packed, masks, sizes, ids = transformer.patchify(inputs["hidden_states"])
    inputs |= dict(hidden_states=packed, hidden_states_masks=torch.ones(1, packed.shape[1]), img_sizes=sizes,
                   img_ids=ids)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with pytest.warns(UserWarning, match="pre-packed"), enabled(transformer, GNAConfig(family="hidream", window=2)):
            assert torch.equal(transformer(**inputs)[0], stock)


def test_full_size_and_preset_grid():
    from gna_diffusers.harness.models import on_meta

    billions = sum(p.numel() for p in on_meta(hidream.PATCH.transformer_class, hidream.FULL_CONFIG).parameters()) / 1e9
    assert billions == pytest.approx(17, rel=0.05)
    assert hidream.latent_grid(1024, 1024) == tuple(load_preset("hidream-1k").base_grid)
