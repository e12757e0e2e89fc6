"""LTX-2 (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's video self-attention only;
the audio stream and the cross-attentions stay stock; appended conditioning tokens are context; LTX-2.3's
perturbed blocks; the pipeline's two schedulers count one step; the harness scores the video."""

import warnings
from math import prod

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_ltx2
from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor
from helpers import assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_config, load_preset
from gna_diffusers.cli import main
from gna_diffusers.harness.models import on_meta
from gna_diffusers.patches import ltx2
from gna_diffusers.patches._inputs import seeded_randn
from gna_diffusers.route import LayoutError

GRID = (3, 4, 6)


def with_keyframes(transformer, inputs: dict, keyframes: int) -> dict:
    """The inputs with ``keyframes`` conditioning tokens appended after the grid, as LTX2ConditionPipeline
    appends keyframe tokens, with their positions (those of the first frame's first tokens)."""
    batch = inputs["hidden_states"].shape[0]
    coords = transformer.rope.prepare_video_coords(batch, inputs["num_frames"], inputs["height"], inputs["width"],
                                                   torch.device("cpu"), fps=inputs["fps"])
    extra = torch.randn(batch, keyframes, inputs["hidden_states"].shape[2], generator=torch.Generator().manual_seed(5))
    return inputs | dict(hidden_states=torch.cat([inputs["hidden_states"], extra], dim=1),
                         video_coords=torch.cat([coords, coords[:, :, :keyframes]], dim=2))


@pytest.mark.parametrize("keyframes", [0, 5], ids=["text-to-video", "keyframes-appended"])
def test_whole_extent_reproduces_stock_and_only_the_video_self_attention_is_routed(keyframes, monkeypatch):
    transformer = ltx2.tiny_transformer()
    inputs = ltx2.transformer_inputs(transformer, GRID, text=7, batch=2)
    if keyframes:
        inputs = with_keyframes(transformer, inputs, keyframes)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert handle.runtime.layout.grid == GRID
        processors = {name: type(p) for name, p in transformer.attn_processors.items()}
        assert {n for n, cls in processors.items() if cls is ltx2.GNALTX2AttnProcessor} == {
            f"transformer_blocks.{i}.attn1.processor" for i in range(2)}
        assert sum(cls is LTX2AudioVideoAttnProcessor for cls in processors.values()) == 2 * 5  # audio, cross

    assert_round_trip(transformer, "ltx2", inputs, installed)
    assert spy.contexts == [(GRID, keyframes)] * 4  # 2 layers, 2 runs: the grid, the keyframe tokens as context


def with_memory(transformer, inputs: dict, slots: int) -> dict:
    """The inputs with ``slots`` image-memory slots put before the grid, as Echo's modular pipeline puts them: a frame
    of the grid's plane each, with the positions diffusers' Echo blocks give them (centred 500 s on, 50 s apart)."""
    from diffusers.modular_pipelines.echo.before_denoise import _video_memory_coords

    batch, cpu = inputs["hidden_states"].shape[0], torch.device("cpu")
    sizes = {name: inputs[name] for name in ("num_frames", "height", "width")}
    coords = transformer.rope.prepare_video_coords(batch, **sizes, device=cpu, fps=inputs["fps"])
    memory = _video_memory_coords(transformer, slots, sizes["height"], sizes["width"], inputs["fps"], 500.0, 50.0, cpu)
    tokens = torch.randn(batch, memory.shape[2], inputs["hidden_states"].shape[2],
                         generator=torch.Generator().manual_seed(7))
    return inputs | dict(hidden_states=torch.cat([tokens, inputs["hidden_states"]], dim=1),
                         video_coords=torch.cat([memory.expand(batch, -1, -1, -1), coords], dim=2))


@pytest.mark.parametrize("grid", [GRID, (1, 4, 6)], ids=["video", "one frame"])
def test_memory_tokens_before_the_grid_are_context(grid, monkeypatch):
    """Echo's image-memory slots come before the video's tokens (a one-frame video's plane is as large as a slot, and
    earlier in time): the grid is where the positions end with it; the slots are context of every window, which an
    independent masked attention checks."""
    transformer = ltx2.tiny_transformer()
    inputs = with_memory(transformer, ltx2.transformer_inputs(transformer, grid, text=7), slots=2)
    memory = 2 * grid[1] * grid[2]
    window, stride = (grid[0], 2, 3), (1, 2, 3)  # every frame: the one-frame grid allows no other
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="ltx2", window=-1)) as handle:
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
            assert (handle.runtime.layout.grid, handle.runtime.layout.grid_offset) == (grid, memory)
        with enabled(transformer, GNAConfig(family="ltx2", base_grid=list(grid), window=[-1, *window[1:]],
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        masked_self_attention(transformer_ltx2, joint_mask(grid, window, stride, memory), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5 and max_diff(routed, stock) > 1e-3


def test_the_grid_offset_is_read_once_per_positions_tensor(monkeypatch):
    """Reading the positions is a host sync: the same tensor again (a pipeline's next step) reuses the read."""
    transformer = ltx2.tiny_transformer()
    inputs = with_memory(transformer, ltx2.transformer_inputs(transformer, GRID, text=7), slots=1)
    reads = []
    monkeypatch.setattr(ltx2._GRID_OFFSETS, "read", lambda coords, grid: reads.append(grid) or ltx2.grid_offset(coords,
                                                                                                             grid))
    with torch.no_grad(), enabled(transformer, GNAConfig(family="ltx2", window=2)):
        for coords in (inputs["video_coords"], inputs["video_coords"], inputs["video_coords"].clone()):
            transformer(**(inputs | {"video_coords": coords}))
    assert reads == [GRID, GRID]


def test_a_one_frame_grid_with_an_appended_keyframe_of_its_size_keeps_the_grid_first():
    """A keyframe appended at the first frame's positions fits either end of a one-frame grid's positions: as early
    in time as the grid, it is taken as the appended one."""
    transformer = ltx2.tiny_transformer()
    inputs = with_keyframes(transformer, ltx2.transformer_inputs(transformer, (1, 4, 6), text=7), keyframes=24)
    with torch.no_grad(), enabled(transformer, GNAConfig(family="ltx2", window=2)) as handle:
        transformer(**inputs)
        assert (handle.runtime.layout.grid, handle.runtime.layout.grid_offset) == ((1, 4, 6), 0)


def test_conditioning_tokens_gna_cannot_place_run_dense_and_compiled_calls_do_not_read_positions(monkeypatch):
    """Positions that neither begin nor end with the sizes' grid: stock attention and a warning. Under torch.compile
    the positions are not read, so a call with conditioning tokens is not placed (compile the blocks instead)."""
    transformer = ltx2.tiny_transformer()
    inputs = with_memory(transformer, ltx2.transformer_inputs(transformer, GRID, text=7), slots=1)
    scrambled = inputs | {"video_coords": inputs["video_coords"].roll(5, dims=2)}
    with torch.no_grad():
        stock = transformer(**scrambled)[0]
        with enabled(transformer, GNAConfig(family="ltx2", window=2)):
            with pytest.warns(UserWarning, match=r"neither begin nor end with the \(3, 4, 6\) grid"):
                assert torch.equal(transformer(**scrambled)[0], stock)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with pytest.raises(LayoutError, match=r"read from video_coords, which a compiled graph cannot do: compile the "
                                          r"blocks"):
        ltx2.layout_probe(transformer, (), inputs, None)


def echo_pipeline():
    """Echo's denoise blocks (diffusers' modular pipeline: no scheduler, a DMD loop over its own 8 sigmas) with the
    tiny transformer, and a call of it on prompt embeddings at 128 x 192 pixels and 17 frames (a 3 x 4 x 6 grid)
    with two memory images before it."""
    from diffusers.modular_pipelines.echo.modular_blocks_echo import EchoDenoiseStep

    pipe = EchoDenoiseStep().init_pipeline()
    pipe.update_components(transformer=ltx2.tiny_transformer(audio_channels=16))
    pipe.set_progress_bar_config(disable=True)
    randn = seeded_randn(1, "cpu", torch.float32)
    embeds = dict(connector_prompt_embeds=randn(1, 7, 16), connector_audio_prompt_embeds=randn(1, 7, 16),
                  connector_attention_mask=torch.ones(1, 7, dtype=torch.long))
    memory = [randn(1, 4, 1, 4, 6) for _ in range(2)]

    def generate():
        return pipe(**embeds, memory_video_latents=memory, height=128, width=192, num_frames=17,
                    generator=torch.Generator().manual_seed(0), output="latents")

    return pipe, generate


def test_echo_modular_pipeline_counts_its_loop_steps_and_windows_the_video_after_its_memory(monkeypatch):
    """Echo's loop has no scheduler: its progress bar's length (8 sigmas) starts a generation, each loop step ends a
    step, so a fractional warm-up works and restarts with every call; the memory images are context."""
    pipe, generate = echo_pipeline()
    loop = pipe._blocks.sub_blocks["denoise_loop"]
    stock = generate()
    with enabled(pipe, GNAConfig(family="ltx2", window=-1)):
        assert max_diff(generate(), stock) <= 1e-5
    spy = OperatorSpy(monkeypatch)
    per_call = []
    pipe.transformer.register_forward_hook(lambda *_: per_call.append(len(spy.windows)))
    with enabled(pipe, GNAConfig(family="ltx2", window=2, dense_steps=0.3)) as handle:
        for generation in range(2):
            sparse = generate()
            # round(0.3 x 8) = 2 dense steps, then 2 layers a call
            assert per_call[8 * generation:] == [12 * generation + n for n in (0, 0, 2, 4, 6, 8, 10, 12)]
            assert (handle.runtime.step, handle.runtime.total_steps) == (8, 8)
            assert handle.runtime.layout.grid_offset == 2 * 4 * 6  # after the memory images
    assert max_diff(sparse, stock) > 1e-3
    assert set(spy.contexts) == {(GRID, 2 * 4 * 6)}
    assert "loop_step" not in vars(loop) and "progress_bar" not in vars(loop)  # removed: the class's methods again
    with enabled(pipe, "ltx2-echo-512p"):
        assert torch.isfinite(generate()).all()


def test_compare_loads_a_saved_echo_modular_pipeline_and_scores_it(tmp_path):
    """A modular pipeline's folder (modular_model_index.json, no model_index.json): compare loads it with
    ModularPipeline.from_pretrained, calls it with the inputs its blocks take (Echo's loop walks its own 8 sigmas) and
    scores Echo's preset's video against dense (a step count it does not take is ignored with a warning); calibrate
    runs it too."""
    import json

    from diffusers.modular_pipelines.echo.modular_blocks_echo import EchoBlocks

    tiny = ltx2.tiny_pipeline()
    pipe = EchoBlocks().init_pipeline()
    pipe.update_components(**{name: tiny.components[name] for name in pipe.component_names if name in tiny.components})
    pipe.save_pretrained(str(tmp_path / "echo"), overwrite_modular_index=True)  # (diffusers splits a str)
    size = ["--height", "32", "--width", "32", "--frames", "9", "--prompt", "a red cat"]
    with pytest.warns(UserWarning, match="EchoModularPipeline takes no num_inference_steps: --steps is ignored"):
        assert main(["compare", "--model", str(tmp_path / "echo"), "--output", str(tmp_path / "out"), "--no-warmup",
                     "--steps", "4", *size]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["family"] == "ltx2" and report["preset"]["name"] == "ltx2-echo-512p"
    (sample,) = report["samples"]
    assert len(sample["dense"]["transformer_call_s"]) == len(sample["gna"]["transformer_call_s"]) == 8
    assert 20 < report["summary"]["psnr"] < float("inf")  # the sparse steps changed the video, a little
    preset = tmp_path / "calibrated.yaml"
    assert main(["calibrate", "--model", str(tmp_path / "echo"), "--output", str(preset), *size[:6]]) == 0
    assert load_config(preset).family == "ltx2"


def test_perturbed_attention_blocks_of_ltx_2_3_get_the_perturbed_gna_processor(monkeypatch):
    """LTX-2.3's spatio-temporal guidance perturbs chosen blocks' attention for part of the batch: the
    perturbed processor class is routed too, and its perturbation stays stock."""
    transformer = ltx2.tiny_transformer(perturbed_attn=True)
    inputs = ltx2.transformer_inputs(transformer, GRID, text=7, batch=2)
    inputs |= dict(spatio_temporal_guidance_blocks=[1], perturbation_mask=torch.tensor([1.0, 0.0]))
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="ltx2", window=-1)):
            assert {type(b.attn1.processor) for b in transformer.transformer_blocks} == {
                ltx2.GNALTX2PerturbedAttnProcessor}
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="ltx2", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
    assert len(spy.windows) == 2 + 2


def test_pipeline_counts_each_step_once_over_its_video_and_audio_schedulers(monkeypatch):
    """The real LTX2Pipeline: its audio scheduler is a deep copy of the video one (a follower of the same
    installation); with its default guidance each step makes 3 transformer calls (CFG, STG, modality). Two
    generations: each has its own dense first step, then the sparse ones, and nothing is reported."""
    pipe = ltx2.tiny_pipeline()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="ltx2", window=2, dense_steps=1)):
            for _ in range(2):
                output = pipe(prompt="a robot dancing", height=32, width=32, num_frames=5, num_inference_steps=3,
                              max_sequence_length=16, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(output.frames).all() and torch.isfinite(output.audio).all()
    per_step = len(calls) // (2 * 3)
    assert per_step == 3
    # Per generation: 2 sparse steps x 3 calls x 2 blocks; 32x32 pixels and 5 frames -> a 3x16x16 grid.
    assert spy.contexts == [((3, 16, 16), 0)] * (2 * 2 * per_step * 2)


def positions_only(transformer, inputs: dict, slot_frame: int = 5) -> tuple[dict, dict]:
    """The call as LTX-2.5's DFR pipeline makes it, untiled: no sizes, ``video_coords`` for the grid and for one
    generated keyframe slot appended after it (a whole single-pixel frame at pixel frame ``slot_frame``, as the
    pipeline places slots inside the canvas); and the sizes it dropped."""
    sizes = {name: inputs.pop(name) for name in ("num_frames", "height", "width")}
    coords = transformer.rope.prepare_video_coords(1, **sizes, device=torch.device("cpu"), fps=inputs["fps"])
    slot = transformer.rope.prepare_video_coords(1, 1, sizes["height"], sizes["width"], torch.device("cpu"),
                                                 fps=inputs["fps"])
    slot[:, 0, :, 0], slot[:, 0, :, 1] = slot_frame / inputs["fps"], (slot_frame + 1) / inputs["fps"]
    extra = torch.randn(1, slot.shape[2], inputs["hidden_states"].shape[2], generator=torch.Generator().manual_seed(6))
    return inputs | dict(hidden_states=torch.cat([inputs["hidden_states"], extra], dim=1),
                         video_coords=torch.cat([coords, slot], dim=2)), sizes


def test_a_call_with_positions_alone_reads_its_grid_from_them(monkeypatch):
    """No num_frames / height / width, only video_coords (LTX-2.5's DFR pipeline): the grid is the box of patches the
    positions begin with, the appended slot is context, and the output is the one the same call gets with sizes."""
    transformer = ltx2.tiny_transformer()
    inputs, sizes = positions_only(transformer, ltx2.transformer_inputs(transformer, GRID, text=7))
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="ltx2", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="ltx2", window=2)):
            sparse = transformer(**inputs)[0]
            assert torch.equal(transformer(**inputs, **sizes)[0], sparse)
    assert max_diff(sparse, stock) > 1e-3
    assert spy.contexts == [(GRID, GRID[1] * GRID[2])] * 2 * 3  # the slot's frame of tokens is context


def test_dfr_spatial_tiles_each_run_gna_over_their_own_box(monkeypatch):
    """The DFR pipeline's spatial epilogue (diffusers' own tile plan) calls the transformer per tile with the tile's
    tokens, then the slot tokens overlapping it, and positions rebased on the tile: each call's grid is its tile's
    box, and its output the one the same call gets with the tile's sizes."""
    from diffusers.pipelines.ltx2.dfr_layout import epilogue_tiles, video_tile_plan

    transformer = ltx2.tiny_transformer()
    inputs, sizes = positions_only(transformer, ltx2.transformer_inputs(transformer, (3, 8, 12), text=7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan says it clamps its overlap on a grid this small
        tiles = epilogue_tiles((3, 8, 12), frame_tiles=1, frame_seams=())
    plan = video_tile_plan(tiles, inputs["video_coords"], 3, 8, 12)
    assert len(plan) == 4
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(transformer, GNAConfig(family="ltx2", window=2)):
            for tile, token_plan in zip(tiles, plan):
                call = inputs | dict(hidden_states=inputs["hidden_states"][:, token_plan.keep],
                                     video_coords=token_plan.coords)
                box = tuple(part.stop - part.start for part in (tile.frames, tile.heights, tile.widths))
                spy.contexts.clear()
                out = transformer(**call)[0]
                assert spy.contexts == [(box, len(token_plan.keep) - prod(box))] * 2
                tile_sizes = dict(num_frames=box[0], height=box[1], width=box[2])
                assert torch.equal(transformer(**call, **tile_sizes)[0], out)


def whole_then_sparse(pipe, generate, monkeypatch) -> list[tuple]:
    """``generate()`` stock, with whole windows (it must reproduce the stock latents) and with sparse ones (it must
    change them), with no GNA notice; the (grid, context keys) of every routed call."""
    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="ltx2", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        with enabled(pipe, GNAConfig(family="ltx2", window=2)):
            assert max_diff(generate(), stock) > 1e-3
    return spy.contexts


@pytest.mark.parametrize("tiled", [False, True], ids=["whole canvas", "spatial tiles"])
def test_dfr_pipeline_runs_gna_on_its_canvas_or_tiles(tiled, monkeypatch):
    """LTX-2.5's LTX2DFRPipeline (a distilled pass: its own sigmas, no guidance call) at 32x32, 17 frames: a 9x16x16
    canvas with two generated keyframe slots (a frame of tokens each, context); with ``video_tiles``, diffusers' 2x2
    spatial epilogue tiles (9x14x14 each). Whole windows reproduce the stock latents; sparse windows change them."""
    from diffusers.pipelines.ltx2.dfr_layout import epilogue_tiles

    pipe = ltx2.tiny_pipeline(dfr=True)
    kwargs = {}
    if tiled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plan clamps its overlap on a canvas this small, and says so
            kwargs["video_tiles"] = epilogue_tiles((9, 16, 16), frame_tiles=1, frame_seams=())

    def generate():
        return pipe("a red cat", height=32, width=32, num_frames=17, sigmas=[1.0, 0.6, 0.3], output_type="latent",
                    generator=torch.Generator().manual_seed(0), **kwargs).frames

    contexts = whole_then_sparse(pipe, generate, monkeypatch)
    assert {grid for grid, _ in contexts} == ({(9, 14, 14)} if tiled else {(9, 16, 16)})
    assert max(context for _, context in contexts) == 2 * 16 * 16  # the two slots' tokens


def test_dfr_temporal_refine_round_runs_gna_on_each_window(monkeypatch):
    """LTX2DFRTemporalRefinePipeline after a DFR pass (its latents, keyframe slots and audio): the round doubles the
    latent frames and denoises temporal windows, each call passing positions only (grids 9x16x16 and 17x16x16 here,
    the keyframes context). Whole windows reproduce its latents; sparse windows change them."""
    pipe = ltx2.tiny_pipeline(dfr=True)
    first = pipe("a red cat", height=32, width=32, num_frames=17, sigmas=[1.0, 0.6, 0.3], output_type="latent",
                 generator=torch.Generator().manual_seed(0))
    refine = ltx2.tiny_temporal_refine_pipeline(pipe)

    def generate():
        return refine(latents=first.frames, keyframes_latents=first.keyframes, audio_latents=first.audio,
                      keyframe_positions=first.keyframe_positions, prompt="a red cat", height=32, width=32,
                      num_frames=17, output_type="latent", generator=torch.Generator().manual_seed(0)).frames

    contexts = whole_then_sparse(refine, generate, monkeypatch)
    assert {grid for grid, _ in contexts} == {(9, 16, 16), (17, 16, 16)}


def per_query_mask(transformer, inputs: dict) -> dict:
    tokens = inputs["hidden_states"].shape[1]
    return inputs | {"video_self_attention_mask": torch.ones(1, tokens, tokens).tril()}  # per query: no window


def positions_without_a_box(transformer, inputs: dict) -> dict:
    inputs, _ = positions_only(transformer, inputs)
    return inputs | {"video_coords": inputs["video_coords"].flip(2)}  # the slot first, the frames reversed


@pytest.mark.parametrize("change, message", [
    (per_query_mask, "runs dense"),
    (positions_without_a_box, "video_coords do not begin with a row-major box"),
], ids=["video self-attention mask", "positions without a box"])
def test_calls_gna_cannot_place_run_dense_with_a_warning(change, message):
    transformer = ltx2.tiny_transformer()
    inputs = change(transformer, ltx2.transformer_inputs(transformer, GRID, text=7))
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="ltx2", window=2)):
            with pytest.warns(UserWarning, match=message):
                out = transformer(**inputs)[0]
    assert torch.equal(out, stock)


@pytest.mark.parametrize("preset", ["ltx2-1080p", "ltx2-4k", "ltx2-echo-512p"])
def test_shipped_presets_run_on_the_tiny_transformer(preset, monkeypatch):
    transformer = ltx2.tiny_transformer()
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), enabled(transformer, load_preset(preset).model_copy(update={"dense_steps": 0})) as handle:
        out = transformer(**ltx2.transformer_inputs(transformer, GRID, text=7))[0]
        assert handle.runtime.grid == GRID
    assert spy.windows and torch.isfinite(out).all()


def test_full_size_config_is_ltx_2_19b_and_the_grid_follows_the_vae():
    billions = sum(p.numel() for p in on_meta(ltx2.PATCH.transformer_class, ltx2.FULL_CONFIG).parameters()) / 1e9
    assert abs(billions - 19) / 19 < 0.05
    assert ltx2.latent_grid(1088, 1920, 121) == tuple(load_preset("ltx2-1080p").base_grid)
    assert ltx2.latent_grid(2176, 3840, 121) == tuple(load_preset("ltx2-4k").base_grid)
    with pytest.raises(ValueError, match="8k \\+ 1"):
        ltx2.latent_grid(1088, 1920, 120)


@pytest.mark.slow
def test_random_weights_mode_times_ltx2(tmp_path, monkeypatch):
    """The full-size config (swapped for the tiny one here) is timed with --random-weights."""
    monkeypatch.setattr(ltx2, "FULL_CONFIG", dict(ltx2.tiny_transformer().config))
    monkeypatch.setattr(ltx2, "TEXT_TOKENS", 8)
    assert main(["compare", "--random-weights", "--model", "Lightricks/LTX-2", "--height", "128", "--width", "192",
                 "--frames", "17", "--repeats", "1", "--output", str(tmp_path / "timed")]) == 0
    report = (tmp_path / "timed" / "report.md").read_text()
    assert "ltx2-1080p" in report and "3x4x6" in report.replace(", ", "x")


@pytest.mark.slow
def test_compare_scores_the_video_and_says_the_audio_is_not_scored(tmp_path):
    assert main(["compare", "--model", "tiny-ltx2", "--height", "32", "--width", "32", "--frames", "5", "--steps", "2",
                 "--prompt", "a robot dancing", "--no-warmup", "--output", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "not scored: the audio track" in report and "temporal PSNR" in report
