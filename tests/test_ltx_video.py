"""LTX-Video (tiny offline pipelines, fp32, CPU): GNA on each block's self-attention only; the grid from the
call's ints or from its video_coords, with LTXConditionPipeline's conditioning frames (prepended) and the
long pipeline's overlap frames (appended) as context; the routed result against an independent masked
attention."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_ltx
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
from helpers import assert_round_trip, max_diff
from PIL import Image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import ltx_video
from gna_diffusers.route import LayoutError

GRID = (3, 4, 6)


def coords_of(frames: int, rows: int, cols: int, first_time: float = 0.0) -> torch.Tensor:
    """(1, 3, N) (time, row, col) coordinates of a row-major grid, as the pipelines' video ids."""
    t, r, c = torch.meshgrid(torch.arange(frames) + float(first_time), torch.arange(rows) * 32.0,
                             torch.arange(cols) * 32.0, indexing="ij")
    return torch.stack([t.flatten(), r.flatten(), c.flatten()])[None]


def test_whole_extent_reproduces_stock_and_only_self_attention_is_routed(monkeypatch):
    transformer = ltx_video.tiny_transformer()
    inputs = ltx_video.transformer_inputs(transformer, GRID, text=7, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert handle.runtime.layout.grid == GRID
        processors = {name: type(p) for name, p in transformer.attn_processors.items()}
        assert {n for n, cls in processors.items() if cls is ltx_video.GNALTXVideoAttnProcessor} == {
            f"transformer_blocks.{i}.attn1.processor" for i in range(2)}
        assert sum(cls is LTXVideoAttnProcessor for cls in processors.values()) == 2  # attn2 stays stock

    assert_round_trip(transformer, "ltx-video", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4


def test_layout_from_coords_finds_the_grid_among_conditioning_frames():
    grid = coords_of(*GRID)
    condition = coords_of(1, 4, 6, first_time=7)  # LTXConditionPipeline: a frame conditioned at index 7
    overlap = coords_of(2, 4, 6)  # the long pipeline: the previous window's tail, appended
    assert ltx_video.layout_from_coords(grid).describe() == "grid (3, 4, 6) (72 tokens)"
    before = ltx_video.layout_from_coords(torch.cat([condition, grid], dim=2))
    assert (before.grid, before.grid_offset, before.stream_tokens) == (GRID, 24, 96)
    after = ltx_video.layout_from_coords(torch.cat([grid, overlap], dim=2) / torch.tensor([25.0, 1, 1])[:, None])
    assert (after.grid, after.grid_offset, after.stream_tokens) == (GRID, 0, 120)
    one_frame = ltx_video.layout_from_coords(coords_of(1, 4, 6))
    assert one_frame.grid == (1, 4, 6)
    with pytest.raises(LayoutError, match="ambiguous"):  # two runs of equal length: which is generated?
        ltx_video.layout_from_coords(torch.cat([coords_of(2, 4, 6, first_time=5), coords_of(2, 4, 6)], dim=2))
    with pytest.raises(LayoutError, match="different video_coords"):
        ltx_video.layout_from_coords(torch.cat([grid, coords_of(3, 6, 4)]))
    with pytest.raises(LayoutError, match="not a row-major grid"):
        ltx_video.layout_from_coords(grid[:, [0, 2, 1]])  # rows and columns swapped: column-major frames


def test_conditioned_call_equals_an_independent_masked_attention(monkeypatch):
    """Conditioning tokens before the grid (video_coords, no ints): grid queries see their window and every
    conditioning token, conditioning queries see everything; checked against the stock model whose
    self-attention gets that boolean mask, built from the brute-force GNA definition."""
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = ltx_video.tiny_transformer()
    inputs = ltx_video.transformer_inputs(transformer, GRID, text=7)
    condition_tokens = 24
    inputs |= dict(num_frames=None, height=None, width=None, rope_interpolation_scale=None,
                   hidden_states=torch.cat([torch.randn(1, condition_tokens, 4), inputs["hidden_states"]], dim=1),
                   video_coords=torch.cat([coords_of(1, 4, 6, first_time=7), coords_of(*GRID)], dim=2))
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="ltx-video", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))) as handle:
            routed = transformer(**inputs)[0]
            assert handle.runtime.layout.grid_offset == condition_tokens
        masked_self_attention(transformer_ltx, joint_mask(GRID, window, stride, condition_tokens), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


def later_frame_condition():
    """An image to condition the tiny video's frame 8 on (a latent frame of its own, prepended)."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    pixels = (torch.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).to(torch.uint8).numpy()
    return LTXVideoCondition(image=Image.fromarray(pixels), frame_index=8)


def test_condition_pipeline_runs_gna_on_the_grid_it_prepared(monkeypatch):
    """LTXConditionPipeline with an image conditioned at a later frame: its tokens are prepended, the calls
    carry only video_coords, and the layout comes from prepare_latents' ids (no warning, no dense call)."""
    pipe = ltx_video.tiny_condition_pipeline()
    spy = OperatorSpy(monkeypatch)
    coordinate_reads = []
    read_coords = ltx_video.layout_from_coords
    monkeypatch.setattr(ltx_video, "layout_from_coords", lambda c: coordinate_reads.append(c.shape) or read_coords(c))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="ltx-video", window=2, dense_steps=1)):
            video = pipe(conditions=[later_frame_condition()], prompt="a red cat", height=32, width=32,
                         num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0),
                         **ltx_video.tiny_call_kwargs()).frames
    assert torch.isfinite(video).all()
    assert coordinate_reads == [(1, 3, 64 + 3 * 8 * 8)]  # prepare_latents' ids, once: no host sync per call
    # Steps 2 and 3 are sparse (CFG: both halves in one batched call), 2 blocks each; 64 conditioning tokens.
    assert spy.contexts == [((3, 8, 8), 64)] * 4


@pytest.mark.parametrize("preset", ["ltx-video-704p", "ltx-video-704p-conservative"])
def test_presets_resolve_on_the_full_size_grid(preset):
    config = load_preset(preset)
    assert ltx_video.latent_grid(704, 1216, 161) == tuple(config.base_grid)
    with pytest.raises(ValueError, match="8k \\+ 1"):
        ltx_video.latent_grid(704, 1216, 160)


def test_the_full_size_shape_follows_the_hub_name():
    assert ltx_video.full_size("Lightricks/LTX-Video-0.9.7-dev")[0]["num_layers"] == 48
    assert ltx_video.full_size("Lightricks/LTX-Video")[0] == {}  # 2B: diffusers' defaults
    assert ltx_video.full_size("Lightricks/ltxv-2b-0.9.8-distilled")[0] == {}


@pytest.mark.slow
def test_condition_pipeline_compiles_whole_with_the_prepared_grid():
    """Under torch.compile(fullgraph=True) the calls' video_coords are not read (a host sync would break the
    graph): the grid prepare_latents returned is used; one graph per phase, no break."""
    from torch._dynamo.utils import counters

    pipe = ltx_video.tiny_condition_pipeline()
    with enabled(pipe, GNAConfig(family="ltx-video", window=2, dense_steps=1)) as handle:
        torch._dynamo.reset()
        counters.clear()
        pipe.transformer.compile(fullgraph=True, backend="eager")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*gna.*")
                pipe(conditions=[later_frame_condition()], prompt="a red cat", height=32, width=32,
                     num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0),
                     **ltx_video.tiny_call_kwargs())
        finally:
            torch._dynamo.reset()
        assert handle.runtime.grid == (3, 8, 8)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 2  # dense warm-up, then sparse


def test_long_multi_prompt_pipeline_runs_gna_in_every_temporal_window(monkeypatch):
    """LTXI2VLongMultiPromptPipeline: sliding temporal windows, each with its own schedule (so its own dense
    warm-up), calls that carry only video_coords, and from the second window on the previous window's last
    latent frames appended after the grid: context. 33 frames -> 9 latent frames (the tiny VAE: 4x in time),
    windows of 4 latent frames overlapping by 2: [0, 4), [2, 6), [4, 8), [6, 9)."""
    from diffusers import LTXI2VLongMultiPromptPipeline

    pipe = LTXI2VLongMultiPromptPipeline(transformer=ltx_video.tiny_transformer(), **ltx_video.tiny_parts(0))
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="ltx-video", window=2, dense_steps=1)):
            video = pipe(prompt="a red cat", height=32, width=32, num_frames=33, temporal_tile_size=16,
                         temporal_overlap=8, num_inference_steps=3, output_type="pt", max_sequence_length=48,
                         decode_horizontal_tiles=1, decode_vertical_tiles=1).frames
    assert torch.isfinite(video).all()
    # Per window: 2 denoising calls (the schedule's last timestep is not run), the first dense; 2 blocks.
    overlap = 2 * 8 * 8
    assert spy.contexts == [((4, 8, 8), 0)] * 2 + [((4, 8, 8), overlap)] * 4 + [((3, 8, 8), overlap)] * 2
