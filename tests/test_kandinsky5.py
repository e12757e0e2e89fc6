"""Kandinsky 5 (tiny offline transformer and pipeline, fp32, CPU): GNA on the visual blocks' self-attention
only; the text blocks and the cross-attentions stay stock; the 10-second models' own sparse attention
(NABLA) is left to them; one-frame (image) calls; full-size shapes."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_kandinsky
from diffusers.models.transformers.transformer_kandinsky import Kandinsky5AttnProcessor
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.harness.models import on_meta
from gna_diffusers.patches import kandinsky5

GRID = (3, 4, 6)


@pytest.mark.parametrize("visual_cond", [False, True], ids=["text-to-video", "with-condition-channels"])
def test_whole_extent_reproduces_stock_and_only_visual_self_attention_is_routed(visual_cond, monkeypatch):
    transformer = kandinsky5.tiny_transformer(visual_cond=visual_cond)
    inputs = kandinsky5.transformer_inputs(transformer, GRID, text=7)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        processors = {name: type(p) for name, p in transformer.attn_processors.items()}
        assert {n for n, cls in processors.items() if cls is kandinsky5.GNAKandinsky5AttnProcessor} == {
            f"visual_transformer_blocks.{i}.self_attention.processor" for i in range(2)}
        assert sum(cls is Kandinsky5AttnProcessor for cls in processors.values()) == 1 + 2  # text block, cross

    assert_round_trip(transformer, "kandinsky5", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = kandinsky5.tiny_transformer()
    inputs = kandinsky5.transformer_inputs(transformer, GRID, text=7)
    mask = joint_mask(GRID, window, stride, 0)
    assert_equals_masked_stock(transformer, "kandinsky5", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_kandinsky, mask, monkeypatch))


def test_the_models_own_sparse_attention_is_left_to_it(monkeypatch):
    """With sparse_params (the 10-second models' NABLA, on tiles of 8x8 tokens) the call is the stock one."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    # set_attention_backend also sets diffusers' process-wide default backend, which reset does not undo.
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    transformer = kandinsky5.tiny_transformer()
    transformer.set_attention_backend("flex")  # NABLA's block mask needs it
    grid = (2, 8, 8)
    inputs = kandinsky5.transformer_inputs(transformer, grid, text=7)
    inputs["sparse_params"] = dict(sta_mask=torch.ones(1, 1, 2, 2, dtype=torch.bool), to_fractal=True, P=0.9)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="kandinsky5", window=2)):
            with pytest.warns(UserWarning, match="stock attention for this call: Kandinsky 5's own sparse attention"):
                out = transformer(**inputs)[0]
    assert torch.equal(out, stock)


def test_an_image_call_has_one_frame(monkeypatch):
    """Kandinsky 5 Image: one latent frame; the time axis gets window 1."""
    transformer = kandinsky5.tiny_transformer()
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), enabled(transformer, GNAConfig(family="kandinsky5", window=2)):
        out = transformer(**kandinsky5.transformer_inputs(transformer, (1, 4, 6), text=7))[0]
    assert torch.isfinite(out).all() and spy.windows == [(1, 2, 2)] * 2


def test_image_to_video_pipeline_runs_gna_with_its_condition_channels(monkeypatch):
    """Kandinsky5I2VPipeline: the image's latents and a mask ride in extra channels (visual_cond); the grid is
    the latents' (32x32 pixels and 21 frames -> 6x4x4). Whole windows reproduce it; every call of the sparse
    steps runs GNA in both blocks. (21 frames: the pipeline renormalises the first 4 latent frames by the ones
    after them, and returns NaN for videos of 4 latent frames or fewer, with or without GNA.)"""
    from diffusers import Kandinsky5I2VPipeline
    from PIL import Image

    pipe = Kandinsky5I2VPipeline(transformer=kandinsky5.tiny_transformer(visual_cond=True), **kandinsky5.tiny_parts())
    image = Image.fromarray((torch.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).to(torch.uint8).numpy())

    def generate() -> torch.Tensor:
        return pipe(image=image, prompt="a red cat", height=32, width=32, num_inference_steps=3,
                    output_type="latent", generator=torch.Generator().manual_seed(0),
                    **{**kandinsky5.tiny_call_kwargs(), "num_frames": 21}).frames

    stock = generate()
    assert torch.isfinite(stock).all()
    spy = OperatorSpy(monkeypatch)
    sparse_calls = []
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="kandinsky5", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="kandinsky5", window=2, dense_steps=1)) as handle:
            pipe.transformer.register_forward_pre_hook(lambda *_: sparse_calls.append(handle.runtime.sparse))
            sparse = generate()
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert sparse_calls.count(True) >= 2 and sparse_calls[0] is False
    assert spy.contexts == [((6, 4, 4), 0)] * (2 * sparse_calls.count(True))


@pytest.mark.parametrize("preset, size", [("kandinsky5-512p", (512, 768)), ("kandinsky5-768p", (768, 1280))])
def test_presets_sit_on_their_5_second_grids(preset, size):
    assert kandinsky5.latent_grid(*size, 121) == tuple(load_preset(preset).base_grid)


def test_full_size_shapes_follow_the_hub_name():
    def billions(name: str) -> float:
        config = kandinsky5.full_size(name)[0]
        return sum(p.numel() for p in on_meta(kandinsky5.PATCH.transformer_class, config).parameters()) / 1e9

    assert abs(billions("kandinskylab/Kandinsky-5.0-T2V-Pro-sft-5s-Diffusers") - 19) / 19 < 0.05
    assert abs(billions("kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers") - 2) / 2 < 0.05
