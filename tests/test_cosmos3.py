"""Cosmos 3 Omni (tiny offline transformer and pipeline, fp32, CPU): GNA on the video's queries in the generation
pathway's call, grouped-query K/V read as they come, the prompt (its own causal call) and sound tokens as context."""

import warnings

import pytest
import torch
from brute_force import neighbor_mask
from diffusers.models.transformers import transformer_cosmos3
from helpers import max_diff, skip_unless_triton_interprets
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import cosmos3

GRID = (3, 4, 4)
N = 3 * 4 * 4
TEXT = 6


def run(transformer, inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        video, sound, _ = transformer(**inputs)
    return video[0], None if sound is None else sound[0]


@pytest.mark.parametrize("sound", [0, 5], ids=["video", "video and sound"])
def test_whole_extent_reproduces_stock_and_windows_change_only_the_video_queries(sound, monkeypatch):
    transformer = cosmos3.tiny_transformer(sound=bool(sound))
    inputs = cosmos3.transformer_inputs(transformer, GRID, text=TEXT, sound=sound)
    stock = run(transformer, inputs)
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(transformer, GNAConfig(family="cosmos3", window=-1)):
            video, sound_out = run(transformer, inputs)
        assert max_diff(video, stock[0]) <= 1e-5
        assert sound_out is None or max_diff(sound_out, stock[1]) <= 1e-5
        assert spy.contexts == [(GRID, TEXT + sound)] * 2  # 2 layers: the prompt and the sound are context
        with enabled(transformer, GNAConfig(family="cosmos3", window=2)):
            video, sound_out = run(transformer, inputs)
    assert max_diff(video, stock[0]) > 1e-3
    assert torch.equal(run(transformer, inputs)[0], stock[0])  # removed: bit-identical


def windowed_video_queries(window, stride, monkeypatch) -> None:
    """The stock model with its generation call (video and sound queries against [prompt, video, sound] keys,
    grouped-query) masked by the loop-based GNA definition on the video's queries against the video's keys."""
    inner = neighbor_mask(GRID, window, stride, (1, 1, 1), (False, False, False))
    real = transformer_cosmos3.dispatch_attention_fn

    def masked(query, key, value, attn_mask=None, **kwargs):
        if not kwargs.get("is_causal"):  # the generation pathway's call
            queries, keys = query.shape[1], key.shape[1]
            mask = torch.ones(queries, keys, dtype=torch.bool)
            mask[:N, TEXT:TEXT + N] = inner
            attn_mask = mask
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(transformer_cosmos3, "dispatch_attention_fn", masked)


@pytest.mark.parametrize("sound", [0, 5], ids=["video", "video and sound"])
@pytest.mark.parametrize("backend", ["reference", "flex", "triton"])
def test_sparse_windows_equal_an_independent_masked_attention(sound, backend, monkeypatch):
    if backend == "triton":
        skip_unless_triton_interprets()
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = cosmos3.tiny_transformer(sound=bool(sound))
    inputs = cosmos3.transformer_inputs(transformer, GRID, text=TEXT, sound=sound)
    with enabled(transformer, GNAConfig(family="cosmos3", base_grid=list(GRID), window=list(window),
                                        stride=list(stride), backend=backend)):
        routed = run(transformer, inputs)
    windowed_video_queries(window, stride, monkeypatch)
    expected = run(transformer, inputs)
    assert max_diff(routed[0], expected[0]) <= 1e-5
    assert routed[1] is None or max_diff(routed[1], expected[1]) <= 1e-5  # sound queries: dense, as stock


def test_a_video_not_right_after_the_prompt_runs_dense_with_one_warning(monkeypatch):
    """Two videos, or video tokens that do not follow the prompt, are layouts GNA does not place: stock attention,
    and a warning naming why; the positions are read once per tensor even then (no host sync per step)."""
    transformer = cosmos3.tiny_transformer()
    inputs = cosmos3.transformer_inputs(transformer, GRID, text=TEXT)
    stock = run(transformer, inputs)[0]
    shuffled = {**inputs, "vision_sequence_indexes": inputs["vision_sequence_indexes"].flip(0)}
    shuffled_stock = run(transformer, shuffled)[0]
    reads = []
    monkeypatch.setattr(cosmos3._VIDEO_SPANS, "read", lambda t: reads.append(1) or cosmos3._span(t))
    with enabled(transformer, GNAConfig(family="cosmos3", window=2)):
        with pytest.warns(UserWarning, match=r"do not follow the 6-token prompt consecutively"):
            assert torch.equal(run(transformer, shuffled)[0], shuffled_stock)
            assert torch.equal(run(transformer, shuffled)[0], shuffled_stock)
        assert len(reads) == 1
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*gna.*")
            in_place = {**inputs, "vision_sequence_indexes": inputs["vision_sequence_indexes"].clone()}
            assert max_diff(run(transformer, in_place)[0], stock) > 1e-3  # a new tensor, the video in place: sparse


def generate(pipe, **kwargs) -> torch.Tensor:
    return torch.as_tensor(pipe("a red cat", num_frames=9, height=64, width=64, num_inference_steps=3,
                                output_type="np", generator=torch.Generator().manual_seed(0), **kwargs).video)


@pytest.mark.parametrize("mode", ["text-to-world", "image-to-world"])
def test_pipeline_runs_gna_on_both_guidance_passes_after_the_warm_up(mode, monkeypatch):
    """Cosmos3OmniPipeline at 64x64x9 (a 5x8x8 grid), from text or from an image (its clean latent frame is the grid's
    first): the prompt's and the negative prompt's calls (two prompt lengths, so two layouts) both routed; whole
    windows reproduce the stock pipeline; the video positions are read once per generation and prompt."""
    from PIL import Image

    pipe = cosmos3.tiny_pipeline()
    pixels = (torch.arange(64 * 64 * 3) % 251).reshape(64, 64, 3).to(torch.uint8).numpy()
    kwargs = {"image": Image.fromarray(pixels)} if mode == "image-to-world" else {}
    noisy = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, call: noisy.append(call["vision_noisy_frame_indexes"][0].tolist()), with_kwargs=True)
    stock = generate(pipe, **kwargs)
    assert noisy[0] == ([1, 2, 3, 4] if kwargs else [0, 1, 2, 3, 4])
    reads = []
    monkeypatch.setattr(cosmos3._VIDEO_SPANS, "read", lambda t: reads.append(1) or cosmos3._span(t))
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="cosmos3", window=-1)):
            assert max_diff(generate(pipe, **kwargs), stock) <= 1e-5
        assert len(reads) == 2
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="cosmos3", window=2, dense_steps=1)) as handle:
            sparse = generate(pipe, **kwargs)
            assert handle.runtime.step == 3 and handle.runtime.grid == (5, 8, 8)
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    prompts = sorted({context for _, context in spy.contexts})
    assert len(spy.contexts) == 2 * 2 * 2 and len(prompts) == 2  # 2 sparse steps x 2 passes x 2 layers


def test_pipeline_with_sound_keeps_the_sound_stock_and_its_tokens_as_context(monkeypatch):
    """enable_sound=True: the sound's latent tokens follow the video in the generation call; whole windows reproduce
    the stock video and sound, the sound tokens are context keys of the video's windows (prompt + sound)."""
    pipe = cosmos3.tiny_pipeline(sound=True)

    def generate_av():
        output = pipe("a red cat", num_frames=9, height=64, width=64, num_inference_steps=3, output_type="np",
                      enable_sound=True, generator=torch.Generator().manual_seed(0))
        return torch.as_tensor(output.video), output.sound

    calls = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, call: calls.append((call["und_len"], call["sound_token_shapes"])), with_kwargs=True)
    video, sound = generate_av()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="cosmos3", window=-1)):
            whole_video, whole_sound = generate_av()
        assert max_diff(whole_video, video) <= 1e-5 and max_diff(whole_sound, sound) <= 1e-5
        (prompt, [(sound_tokens, _, _)]), _ = calls[:2]
        assert sound_tokens > 0 and spy.contexts[0] == ((5, 8, 8), prompt + sound_tokens)
        with enabled(pipe, GNAConfig(family="cosmos3", window=2)):
            sparse_video, _ = generate_av()
    assert max_diff(sparse_video, video) > 0


def test_latent_grid_of_the_default_size_and_its_errors():
    assert cosmos3.latent_grid(720, 1280, 189) == (48, 23, 40)
    assert cosmos3.latent_grid(704, 1280, 1) == (1, 22, 40)
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        cosmos3.latent_grid(720, 1280, 120)
    with pytest.raises(ValueError, match="divisible by 16"):
        cosmos3.latent_grid(721, 1280, 189)
    with pytest.raises(ValueError, match="one sample per transformer call"):
        cosmos3.transformer_inputs(cosmos3.tiny_transformer(), GRID, batch=2)


def test_sea_cache_stacks_with_gna():
    """diffusers' SeaCache (its documented use is Cosmos 3) skips the decoder stack on some steps, per guidance
    pass: with GNA whole windows the pipeline equals the cached stock one; the steps count from the scheduler, so
    the step after the dense one, skipped, leaves the last step sparse."""
    from diffusers import SeaCacheConfig

    pipe = cosmos3.tiny_pipeline()
    pipe.transformer.enable_cache(SeaCacheConfig(threshold=100.0, residual_order=0, retention_steps=1,
                                                 cache_end_steps=0, max_consecutive_cached=1))
    calls = []
    pipe.transformer.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    stock = generate(pipe)
    assert len(calls) == 2 * 2  # steps 0 and 2, two guidance passes each: step 1 reuses the stack's residual
    with enabled(pipe, GNAConfig(family="cosmos3", window=-1)):
        assert max_diff(generate(pipe), stock) <= 1e-5
    with enabled(pipe, GNAConfig(family="cosmos3", window=2, dense_steps=1)) as handle:
        sparse = generate(pipe)
        assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0


def test_layers_compile_with_fullgraph_as_diffusers_regional_compilation():
    """compile_repeated_blocks (diffusers' regional compilation of the decoder layers): GNA runs in the compiled
    layers as in eager mode, grouped-query K/V and sound context included."""
    transformer = cosmos3.tiny_transformer(sound=True)
    inputs = cosmos3.transformer_inputs(transformer, GRID, text=TEXT, sound=5)
    config = GNAConfig(family="cosmos3", window=2)
    with enabled(transformer, config):
        eager = run(transformer, inputs)
    transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        with enabled(transformer, config):
            compiled = run(transformer, inputs)
    finally:
        torch._dynamo.reset()
    assert max_diff(compiled[0], eager[0]) <= 1e-6 and max_diff(compiled[1], eager[1]) <= 1e-6
