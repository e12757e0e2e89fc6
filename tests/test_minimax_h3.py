"""MiniMax-H3 (tiny offline transformer and modular pipeline, fp32, CPU): GNA on the target video's queries over
one packed sequence [text, keyframe condition rows, audio rows, target video]; everything before the video is
context, its queries dense as stock. The grid is read from the rows' rotary positions."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_minimax_h3
from helpers import max_diff, random_weights_report, skip_unless_triton_interprets
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import minimax_h3

GRID = (5, 3, 4)
N = 5 * 3 * 4
TEXT = 7
# name -> (keyframe anchors, audio latents a channel: None as long as the video). Without audio the first keyframe's
# condition frame (at the first frame's time and plane) adjoins the video: it is context, not one more frame.
KEYFRAMES = {"text-to-video": ((), None), "first keyframe": (("first",), None),
             "first and last keyframes": (("first", "last"), None), "first keyframe, no audio": (("first",), 0)}


def run(transformer, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(video output, the video and audio outputs flattened into one vector: audio may have no rows)."""
    with torch.no_grad():
        video, audio = transformer(**inputs)
    return video, torch.cat([video.flatten(), audio.flatten()])


@pytest.mark.parametrize("keyframes", KEYFRAMES)
def test_whole_extent_reproduces_stock_and_removal_is_exact(keyframes, monkeypatch):
    transformer = minimax_h3.tiny_transformer()
    anchors, audio = KEYFRAMES[keyframes]
    inputs = minimax_h3.transformer_inputs(transformer, GRID, text=TEXT, keyframes=anchors, audio=audio)
    total = inputs["position_ids"].shape[0]
    stock = run(transformer, inputs)
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(transformer, GNAConfig(family="minimax-h3", window=-1)) as handle:
            both = run(transformer, inputs)[1]
            assert handle.runtime.layout.grid == GRID
        assert max_diff(both, stock[1]) <= 1e-5
        with enabled(transformer, GNAConfig(family="minimax-h3", window=2)):
            assert max_diff(run(transformer, inputs)[0], stock[0]) > 1e-3
    assert torch.equal(run(transformer, inputs)[0], stock[0])  # removed: bit-identical
    # 2 layers x 2 runs; the text, condition and audio rows are context (the token refiner is not routed)
    assert spy.contexts == [(GRID, total - N)] * 4


@pytest.mark.parametrize("backend", ["reference", "flex", "triton"])
def test_sparse_windows_equal_an_independent_masked_attention(backend, monkeypatch):
    """The video's queries: their window and every row before the video; the other rows' queries: everything."""
    if backend == "triton":
        skip_unless_triton_interprets()
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = minimax_h3.tiny_transformer()
    inputs = minimax_h3.transformer_inputs(transformer, GRID, text=TEXT, keyframes=("first",))
    total = inputs["position_ids"].shape[0]
    with enabled(transformer, GNAConfig(family="minimax-h3", base_grid=list(GRID), window=list(window),
                                        stride=list(stride), backend=backend)):
        routed = run(transformer, inputs)
    masked_self_attention(transformer_minimax_h3, joint_mask(GRID, window, stride, total - N), monkeypatch)
    expected = run(transformer, inputs)
    assert max_diff(routed[1], expected[1]) <= 1e-5


def test_a_sequence_that_does_not_end_in_video_frames_runs_dense_with_one_warning(monkeypatch):
    """Positions whose last rows form no row-major plane, or video rows that are not consecutive up to the
    sequence's end: stock attention and a warning naming why; the positions are read once per tensor even then."""
    transformer = minimax_h3.tiny_transformer()
    inputs = minimax_h3.transformer_inputs(transformer, GRID, text=TEXT)
    positions = inputs["position_ids"].clone()
    positions[-4:] = positions[-4:].flip(0)  # the last frame's last row, reversed
    unplaced = [("position_ids", positions), ("video_indices", inputs["video_indices"].flip(0)),
                ("video_indices", inputs["video_indices"] - 1)]  # the last row is no video row
    reads = []
    monkeypatch.setattr(minimax_h3._GRIDS, "read", lambda t: reads.append(1) or minimax_h3._target_grid(t))
    for name, value in unplaced:
        changed = {**inputs, name: value}
        stock = run(transformer, changed)[0]
        with enabled(transformer, GNAConfig(family="minimax-h3", window=2)):
            with pytest.warns(UserWarning, match=r"the last rows of the 83-row sequence are not video frames"):
                assert torch.equal(run(transformer, changed)[0], stock)
                assert torch.equal(run(transformer, changed)[0], stock)
    assert len(reads) == 2  # one read per positions tensor


def modular_pipeline():
    """MiniMax-H3's text-to-video-and-audio core denoise blocks as a modular pipeline with the tiny transformer, and
    a call of it on prompt embeddings at 128 x 96 pixels and 124 frames (a 37 x 4 x 3 grid after the prompt and 414
    audio rows; no guidance: one call a step, the video and audio schedulers stepping after it)."""
    from diffusers import MiniMaxH3Scheduler
    from diffusers.modular_pipelines.minimax_h3.modular_blocks_minimax_h3 import MiniMaxH3CoreDenoiseStep

    pipe = MiniMaxH3CoreDenoiseStep().init_pipeline()
    pipe.update_components(transformer=minimax_h3.tiny_transformer(), scheduler=MiniMaxH3Scheduler(shift=12.0),
                           audio_scheduler=MiniMaxH3Scheduler(shift=3.0))
    embeds = torch.randn(1, TEXT, 16, generator=torch.Generator().manual_seed(1))

    def generate(steps: int = 4):
        return pipe(prompt_embeds=embeds, text_token_tags=torch.ones(TEXT, dtype=torch.long), height=128, width=96,
                    num_frames=124, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                    output="latents")

    return pipe, generate


def test_modular_pipeline_counts_its_steps_and_runs_gna(monkeypatch):
    """The scheduler's grid ends at its terminal zero: 4 steps are 3 transformer calls; the first stays dense."""
    pipe, generate = modular_pipeline()
    stock = generate()
    with enabled(pipe, GNAConfig(family="minimax-h3", window=-1)):
        assert max_diff(generate(), stock) <= 1e-5
    spy = OperatorSpy(monkeypatch)
    per_call = []
    pipe.transformer.register_forward_hook(lambda *_: per_call.append(len(spy.windows)))
    with enabled(pipe, GNAConfig(family="minimax-h3", window=3, dense_steps=1)) as handle:
        sparse = generate()
        assert handle.runtime.layout.grid == (37, 4, 3) and handle.runtime.step == 3
    assert per_call == [0, 2, 4]  # 2 layers a sparse call
    assert max_diff(sparse, stock) > 1e-3
    with enabled(pipe, "minimax-h3-768p"):
        assert torch.isfinite(generate()).all()


def test_omni_reference_workflow_patches_its_own_transformer(monkeypatch):
    """The ref2va core denoise blocks load only ``transformer_ref`` and pack [text, an image reference, a video
    reference with its soundtrack, target audio, target video]: the references are context of the video's windows;
    apply and remove find the transformer under that name."""
    import numpy as np
    from diffusers import MiniMaxH3Scheduler
    from diffusers.modular_pipelines.minimax_h3 import MiniMaxH3ImageReference, MiniMaxH3VideoReference
    from diffusers.modular_pipelines.minimax_h3.modular_blocks_minimax_h3 import MiniMaxH3Ref2VACoreDenoiseStep

    pipe = MiniMaxH3Ref2VACoreDenoiseStep().init_pipeline()
    pipe.update_components(transformer_ref=minimax_h3.tiny_transformer(), scheduler=MiniMaxH3Scheduler(shift=12.0),
                           audio_scheduler=MiniMaxH3Scheduler(shift=3.0))
    assert getattr(pipe, "transformer", None) is None
    gen = torch.Generator().manual_seed(1)
    references = [MiniMaxH3ImageReference(image=np.zeros((64, 64, 3), dtype="uint8")),
                  MiniMaxH3VideoReference(frames=np.zeros((5, 64, 64, 3), dtype="uint8"), audio=torch.zeros(2, 100))]
    inputs = dict(prompt_embeds=torch.randn(1, TEXT, 16, generator=gen),
                  text_token_tags=torch.ones(TEXT, dtype=torch.long), normalized_references=references,
                  condition_latents=[torch.randn(1, 24, 1, 4, 6, generator=gen),
                                     torch.randn(1, 24, 2, 8, 6, generator=gen)],
                  audio_condition_latents=[torch.randn(2 * 3, 32, generator=gen)], height=128, width=96, num_frames=124,
                  num_inference_steps=3, output="latents")

    def generate():
        return pipe(**inputs, generator=torch.Generator().manual_seed(0))

    stock = generate()
    with enabled(pipe, GNAConfig(family="minimax-h3", window=-1)) as handle:
        assert max_diff(generate(), stock) <= 1e-5
        assert handle.transformers == [pipe.transformer_ref] and handle.runtime.layout.grid == (37, 4, 3)
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, GNAConfig(family="minimax-h3", window=3, dense_steps=1)):
        sparse = generate()
    assert torch.equal(generate(), stock)  # removed
    # 1 sparse call x 2 layers; context: 7 text rows, the image's 2x3 and the video's 2x4x3 patches, the video's 6
    # audio rows and the target's 414 (stereo, 207 latents a channel)
    assert spy.contexts == [((37, 4, 3), 7 + 6 + 24 + 6 + 414)] * 2 and max_diff(sparse, stock) > 1e-3


def test_regional_compilation_runs_gna_like_eager():
    transformer = minimax_h3.tiny_transformer()
    inputs = minimax_h3.transformer_inputs(transformer, GRID, text=TEXT)
    with enabled(transformer, GNAConfig(family="minimax-h3", window=2)):
        eager = run(transformer, inputs)[0]
    transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    with enabled(transformer, GNAConfig(family="minimax-h3", window=2)):
        compiled = run(transformer, minimax_h3.transformer_inputs(transformer, GRID, text=TEXT))[0]
    assert max_diff(compiled, eager) <= 1e-6


def test_whole_model_compile_runs_dense_and_says_so_after_the_step():
    """Compiled whole, the grid cannot be read from the positions (a host sync): stock attention, and the notice
    (raised inside the compiled forward) is given at the next scheduler call."""
    pipe, generate = modular_pipeline()
    stock = generate(steps=2)
    pipe.transformer.compile(backend="eager", fullgraph=True)
    with enabled(pipe, GNAConfig(family="minimax-h3", window=3)):
        with pytest.warns(UserWarning, match=r"under torch.compile .*compile_repeated_blocks"):
            out = generate(steps=2)
    assert torch.equal(out, stock)


def test_full_size_and_preset_grid():
    from gna_diffusers.harness.models import on_meta

    model = on_meta(minimax_h3.PATCH.transformer_class, minimax_h3.FULL_CONFIG)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(33.1, rel=0.01)
    assert minimax_h3.latent_grid(768, 1344, 124) == tuple(load_preset("minimax-h3-768p").base_grid)
    with pytest.raises(ValueError, match=r"17n\+5 frames"):
        minimax_h3.latent_grid(768, 1344, 121)


def test_compare_times_it_with_random_weights_and_loads_real_ones_as_a_modular_pipeline(tmp_path, monkeypatch,
                                                                                          capsys):
    """The harness times the transformer alone at the preset's size; with weights it loads the hub repo as a modular
    pipeline (offline and not cached here: the error says so)."""
    from gna_diffusers.cli import main

    report = random_weights_report(minimax_h3, "MiniMaxAI/MiniMax-H3", ["--height", "128", "--width", "96",
                                                                      "--frames", "124"], tmp_path, monkeypatch)
    assert report["model"]["family"] == "minimax-h3" and report["grid"] == [37, 4, 3]
    (row,) = report["presets"]
    assert row["preset"] == "minimax-h3-768p" and row["gna_step_ms"] > 0
    assert main(["compare", "--model", "MiniMaxAI/MiniMax-H3", "--output", str(tmp_path / "weights")]) == 2
    assert "cannot load model 'MiniMaxAI/MiniMax-H3' from the hub (or the local cache, when offline)" in (
        capsys.readouterr().err)
