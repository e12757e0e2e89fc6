"""Wan Animate 2 (tiny offline transformer, modular denoise blocks and whole modular pipeline, fp32, CPU): GNA takes
the generation pass's packed flex call (windows over the generation grid, each frame's driving-frame references in
the same softmax), the reference pass and the dense steps run stock, a segment that does not fill the packed buffers
runs stock with a warning, each segment has its own warm-up."""

import re
import warnings

import pytest
import torch
from brute_force import neighbor_mask
from diffusers.models.transformers import transformer_wan_animate_2
from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache
from helpers import assert_whole_windows_reproduce, harness_loads, max_diff, no_gna_warnings
from test_apply import OperatorSpy

import gna_diffusers.route
from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.harness.models import family_named, on_meta
from gna_diffusers.patches import chronoedit, wan_animate, wan_animate2

GRID = (4, 4, 4)  # the character's latent frame, then 3 segment frames, of 4x4 tokens
FRAME = 16


@pytest.fixture(scope="module")
def model():
    """The tiny transformer and one generation pass's inputs (stock builds its BlockMask once per model: ~5 s)."""
    transformer = wan_animate2.tiny_transformer()
    return transformer, wan_animate2.transformer_inputs(transformer, GRID, text=5)


def run(transformer, inputs) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs)[0][0]


def test_whole_extent_reproduces_stock_and_removal_is_exact(model, monkeypatch):
    transformer, inputs = model
    stock = run(transformer, inputs)
    spy = OperatorSpy(monkeypatch)
    monkeypatch.setattr(wan_animate2, "gna_attention", gna_diffusers.route.gna_attention)  # the spy: the patch calls it
    with no_gna_warnings(), enabled(transformer, GNAConfig(family="wan-animate2", window=-1)):
        assert max_diff(run(transformer, inputs), stock) <= 1e-5
        routed = {name for name, p in transformer.attn_processors.items()
                  if type(p) is wan_animate2.GNAWanAnimate2AttnProcessor}
        assert routed == {f"blocks.{i}.self_attn.processor" for i in range(2)}  # not the cross-attention
    with enabled(transformer, GNAConfig(family="wan-animate2", window=2)):
        assert max_diff(run(transformer, inputs), stock) > 1e-3
    assert torch.equal(run(transformer, inputs), stock)  # removed: bit-identical
    # per layer and call: the generation grid's windows, then each segment frame against its driving frame
    assert spy.windows == [GRID, (1, 4, 4), GRID, (1, 4, 4), (2, 2, 2), (1, 4, 4), (2, 2, 2), (1, 4, 4)]


def packed_masked_attention(window, stride, monkeypatch) -> None:
    """Stock's packed flex call, made dense SDPA with an independent boolean mask: each generation query sees its
    window over the grid and the whole driving frame before its own frame (frame 0, the character's, none)."""
    real = transformer_wan_animate_2.dispatch_attention_fn
    n = len(neighbor_mask(GRID, window, stride, (1, 1, 1), (False,) * 3))

    def masked(query, key, value, attn_mask=None, backend=None, **kwargs):
        if attn_mask is None:  # not the packed call
            return real(query, key, value, attn_mask=attn_mask, backend=backend, **kwargs)
        queries, keys = query.shape[1], key.shape[1]
        mask = torch.zeros(queries, keys, dtype=torch.bool)
        mask[:n, :n] = neighbor_mask(GRID, window, stride, (1, 1, 1), (False,) * 3)
        for frame in range(1, GRID[0]):
            rows, driving = slice(frame * FRAME, (frame + 1) * FRAME), queries + (frame - 1) * FRAME
            mask[rows, driving:driving + FRAME] = True
        mask[n:, 0] = True  # padding rows (stock drops them) see one key, so they hold no NaN
        return real(query, key, value, attn_mask=mask[None, None], **kwargs)

    monkeypatch.setattr(transformer_wan_animate_2, "dispatch_attention_fn", masked)


def test_sparse_windows_equal_an_independent_masked_attention(model, monkeypatch):
    transformer, inputs = model
    window, stride = (2, 2, 4), (1, 2, 2)
    with enabled(transformer, GNAConfig(family="wan-animate2", base_grid=list(GRID), window=list(window),
                                        stride=list(stride))):
        routed = run(transformer, inputs)
    packed_masked_attention(window, stride, monkeypatch)
    assert max_diff(routed, run(transformer, inputs)) <= 1e-5


def test_the_reference_pass_runs_stock_and_is_no_denoising_step(model, monkeypatch):
    """The reference pass (kv_cache_mode="extract") is dense over the driving segment and fills the cache; GNA's
    pattern does not reach it and it counts no step, so the warm-up starts at the first generation pass."""
    transformer, inputs = model
    driving = {**inputs, "hidden_states": [inputs["hidden_states"][0][:, 1:]],
               "condition_latents": [inputs["condition_latents"][0][:, 1:]], "kv_cache_mode": "extract",
               "seq_len": (GRID[0] - 1) * FRAME, "offset_grid_sizes": inputs["reference_grid_sizes"],
               "kv_cache": WanAnimate2KVCache(2)}
    for name in ("reference_grid_sizes", "origin_len", "origin_area"):
        del driving[name]

    def extracted() -> torch.Tensor:  # the first layer's cached reference keys
        run(transformer, driving)
        return driving["kv_cache"].get(0).get()[0].clone()

    stock = extracted()
    spy = OperatorSpy(monkeypatch)
    monkeypatch.setattr(wan_animate2, "gna_attention", gna_diffusers.route.gna_attention)
    with no_gna_warnings(), enabled(transformer, GNAConfig(family="wan-animate2", window=2, dense_steps=1)):
        assert torch.equal(extracted(), stock)
        run(transformer, inputs)  # the first step: dense
        assert spy.windows == []
        run(transformer, inputs)
        assert len(spy.windows) == 4  # 2 layers x (grid, references)


def test_a_segment_that_does_not_fill_the_packed_buffers_runs_stock_with_one_warning(model):
    """A larger origin area than the segment's grid: stock scatters the grid into larger buffers and attends to
    their unfilled slots too; GNA does not reproduce that and runs stock, saying why once per layer."""
    transformer, inputs = model
    padded = {**inputs, "origin_area": [80, 64]}  # 5x4 token frames, the grid's are 4x4
    stock = run(transformer, padded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with enabled(transformer, GNAConfig(family="wan-animate2", window=2)):
            assert torch.equal(run(transformer, padded), stock)
    messages = {str(w.message) for w in caught if "gna" in str(w.message)}
    assert messages == {f"gna: layer blocks.{i} runs dense: the segment's grid {GRID} does not fill the packed "
                        f"buffer of 3 + 1 frames of 20 tokens" for i in range(2)}


def test_preset_full_size_and_names():
    preset = load_preset(wan_animate2.DEFAULT_PRESET)
    assert preset.family == "wan-animate2" and wan_animate2.latent_grid(800, 640) == tuple(preset.base_grid)

    def block_parameters(module) -> int:
        return sum(p.numel() for p in on_meta(module.PATCH.transformer_class, module.FULL_CONFIG).blocks.parameters())

    assert block_parameters(wan_animate2) == block_parameters(chronoedit)  # Wan 2.1 I2V 14B's blocks
    assert family_named("Wan-AI/Wan-Animate-2").PATCH.family == "wan-animate2"
    assert family_named("Wan-AI/Wan2.2-Animate-14B-Diffusers") is wan_animate
    assert not re.search(wan_animate2.NAME_PATTERN, "Wan2.2-Animate-14B", re.IGNORECASE)


@pytest.mark.slow
def test_random_weights_mode_times_it(tmp_path, monkeypatch):
    from gna_diffusers.cli import main

    name = "Wan-AI/Wan-Animate-2"
    monkeypatch.setattr(wan_animate2, "FULL_CONFIG", dict(wan_animate2.tiny_transformer().config))
    monkeypatch.setattr(wan_animate2, "TEXT_TOKENS", 8)
    assert main(["compare", "--random-weights", "--model", name, "--height", "64", "--width", "96", "--frames", "9",
                 "--repeats", "1", "--output", str(tmp_path / "timed")]) == 0
    report = (tmp_path / "timed" / "report.md").read_text()
    assert "wan-animate2-800x640" in report and "4x4x6" in report.replace(", ", "x")


def test_regional_compilation_runs_gna_like_eager(model):
    """diffusers tells Wan Animate 2's users to compile its blocks (its flex attention needs it at video sizes):
    compiled (dynamo, eager backend; stock's own host reads break the graph), GNA gives eager GNA's output."""
    transformer, inputs = model
    config = GNAConfig(family="wan-animate2", window=2)
    with enabled(transformer, config):
        eager = run(transformer, inputs)
    try:
        transformer.compile_repeated_blocks(fullgraph=False, backend="eager")
        with enabled(transformer, config):
            assert max_diff(run(transformer, inputs), eager) <= 1e-6
    finally:
        for block in transformer.blocks:  # the module-scoped model stays eager for the other tests
            block._compiled_call_impl = None
        torch._dynamo.reset()


def tiny_denoise_pipeline():
    """diffusers' Wan Animate 2 core denoise blocks (segments: a driving-video slice encoded, the reference pass, the
    guided denoising loop) on tiny components: a Wan VAE 8x in space and 4x in time, as the blocks' packed sizes
    assume (the tiny transformer's 2x2 patches make 16 pixels a token)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines.wan_animate_2.modular_blocks_wan_animate_2 import WanAnimate2CoreDenoiseStep

    pipe = WanAnimate2CoreDenoiseStep().init_pipeline()
    torch.manual_seed(0)
    pipe.update_components(transformer=wan_animate2.tiny_transformer(), vae=wan_animate2.tiny_vae(),
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    return pipe


def denoise_inputs(size: int = 64, steps: int = 3) -> dict:
    """Two 5-frame segments (9 driving frames, one carried over) at size x size pixels: 3x4x4 generation grids."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(segment_frame_length=5, prev_segment_conditioning_frames=1, effective_segment=4, num_segments=2,
                reference_image_latents=randn(8, 1, size // 8, size // 8),
                driving_video_pixels=randn(1, 3, 9, size, size),
                condition_clip_context=randn(1, 257, 1280), prompt_ref_embeds=randn(1, 5, wan_animate2.TINY_TEXT_WIDTH),
                height=size, width=size, prompt_embeds=randn(1, 5, wan_animate2.TINY_TEXT_WIDTH),
                negative_prompt_embeds=randn(1, 5, wan_animate2.TINY_TEXT_WIDTH), num_inference_steps=steps,
                generator=torch.Generator().manual_seed(1))


def assert_segments_run_gna(pipe, generate, monkeypatch, sparse_steps: int) -> torch.Tensor:
    """Whole windows reproduce ``generate()`` (two segments); a sparse pattern runs GNA on every generation pass after
    each segment's dense first step (``sparse_steps`` a segment x 2 guidance passes x 2 layers, each a grid call and a
    driving-frame call), with no notice, and changes the output. Returns the stock output."""
    stock = generate()
    spy = OperatorSpy(monkeypatch)
    monkeypatch.setattr(wan_animate2, "gna_attention", gna_diffusers.route.gna_attention)
    assert_whole_windows_reproduce(pipe, "wan-animate2", generate, stock, tolerance=1e-4, dense_steps=1)
    spy.windows.clear()
    with no_gna_warnings(), enabled(pipe, GNAConfig(family="wan-animate2", window=2, dense_steps=1)):
        sparse = generate()
    assert max_diff(sparse, stock) > 1e-3
    assert spy.windows == [(2, 2, 2), (1, 4, 4)] * (2 * sparse_steps * 2 * 2)
    return stock


def test_modular_denoise_runs_gna_in_every_segment_after_its_own_warm_up(monkeypatch):
    """apply() on diffusers' modular pipeline counts its scheduler's steps: each segment sets its schedule again, so
    each has its dense first step; every generation pass after it (the prompt and the negative) runs GNA on both
    layers, the reference passes never. Whole windows reproduce the stock segments."""
    pipe = tiny_denoise_pipeline()

    def generate() -> torch.Tensor:  # every segment's frames, flattened one after the other
        return torch.cat([segment.flatten() for segment in pipe(**denoise_inputs()).get("segment_frames")])

    assert_segments_run_gna(pipe, generate, monkeypatch, sparse_steps=2)  # 3 steps a segment


def test_a_training_pass_gives_the_inference_output_and_gradients(model):
    """Inference merges the two softmaxes in place in the output buffer; autograd takes the out-of-place ops."""
    transformer, inputs = model
    with enabled(transformer, GNAConfig(family="wan-animate2", window=2)):
        inference = run(transformer, inputs)
        trained = transformer(**inputs)[0][0]  # the parameters require grad: a graph is built
        trained.square().sum().backward()
        weight = transformer.blocks[0].self_attn.to_q.weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        transformer.zero_grad(set_to_none=True)
    assert max_diff(trained.detach(), inference) <= 1e-6


def character_and_driving_video(frames: int = 9, size: int = 64):
    """A character image and a driving video of ``frames`` frames, size x size pixels, as PIL images."""
    import numpy as np
    from PIL import Image

    def picture(offset: int) -> Image.Image:
        return Image.fromarray(((np.arange(size * size * 3) + offset) % 251).reshape(size, size, 3).astype("uint8"))

    return picture(0), [picture(7 * frame + 3) for frame in range(frames)]


@pytest.mark.slow
def test_the_whole_modular_pipeline_runs_gna_from_image_and_driving_video(monkeypatch):
    """diffusers' whole Wan Animate 2 modular pipeline (encoders, segments, decoder) on tiny components: 9 driving
    frames in two 5-frame segments at 64x64; whole windows reproduce its video, sparse windows run on the generation
    passes after each segment's dense step, the reference passes stay stock."""
    pipe = wan_animate2.tiny_pipeline()
    image, video = character_and_driving_video()

    def generate() -> torch.Tensor:
        return torch.from_numpy(pipe(prompt="a red cat", image=image, driving_video=video, height=64, width=64,
                                     segment_frame_length=5, num_inference_steps=2, max_sequence_length=8,
                                     generator=torch.Generator().manual_seed(0), output="videos"))

    stock = assert_segments_run_gna(pipe, generate, monkeypatch, sparse_steps=1)  # 2 steps a segment
    assert stock.shape == (1, 9, 64, 64, 3)


@pytest.mark.slow
def test_compare_runs_it_from_a_character_image_and_a_driving_video_file(tmp_path, monkeypatch, capsys):
    """compare on Wan Animate 2 with weights (the tiny modular pipeline, given to the harness as a loaded model): the
    character from --image, the driving video from --call-arg driving_video=@PATH; without it the run stops with
    the pipeline's one line naming the input."""
    import json

    import imageio.v2 as imageio

    from gna_diffusers.cli import main

    pipe = wan_animate2.tiny_pipeline()
    harness_loads(monkeypatch, wan_animate2, pipe)
    image, video = character_and_driving_video()
    image.save(tmp_path / "character.png")
    imageio.mimwrite(tmp_path / "driving.gif", [frame for frame in video])
    args = ["compare", "--model", "Wan-AI/Wan-Animate-2", "--output", str(tmp_path / "out"), "--no-warmup",
            "--steps", "2", "--prompt", "a red cat", "--height", "64", "--width", "64", "--device", "cpu",
            "--image", str(tmp_path / "character.png"), "--call-arg", "segment_frame_length=5",
            "--call-arg", "max_sequence_length=8"]
    assert main(args) == 2
    assert "error: Required input 'driving_video' is missing" in capsys.readouterr().err  # the pipeline's own check
    assert main([*args, "--call-arg", f"driving_video=@{tmp_path / 'driving.gif'}"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["preset"]["name"] == "wan-animate2-800x640"
    assert len(report["samples"][0]["metrics"]["per_frame_psnr"]) == 9
