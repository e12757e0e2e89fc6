"""HunyuanImage 2.1 (tiny offline base and refiner transformers and pipelines, fp32, CPU): GNA on the dual- and
single-stream [image, text] attention, the padded prompt tokens masked."""

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_hunyuanimage
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import hunyuan_image

GRID = (4, 6)
TEXT = 7
BYT5 = 128  # the base model's glyph tokens, after the prompt's


@pytest.mark.parametrize("refiner", [False, True], ids=["base", "refiner"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(refiner, monkeypatch):
    """A batch of two prompts, the first with 3 valid tokens of 7: GNA's context is each sample's valid text."""
    transformer = hunyuan_image.tiny_transformer(refiner=refiner)
    inputs = hunyuan_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=(3, TEXT))
    spy = OperatorSpy(monkeypatch)
    assert_round_trip(transformer, "hunyuan-image", inputs)
    text = TEXT if refiner else TEXT + BYT5
    assert spy.contexts == [(GRID, text)] * 8  # 2 calls x (2 double + 2 single layers)


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = hunyuan_image.tiny_transformer()
    inputs = hunyuan_image.transformer_inputs(transformer, GRID, text=TEXT)
    del inputs["encoder_hidden_states_2"], inputs["encoder_attention_mask_2"]  # all prompt tokens valid: no mask
    mask = joint_mask(GRID, window, stride, 0, TEXT)
    assert_equals_masked_stock(transformer, "hunyuan-image", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_hunyuanimage, mask, monkeypatch))


def generate(pipe, steps=3, prompt="a red cat", **kwargs):
    return pipe(prompt=prompt, height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.mark.parametrize("prompt", ["a red cat", 'a sign that says "open"'], ids=["prompt", "glyph-text"])
def test_text_to_image_pipeline_runs_gna_after_the_warm_up(prompt, monkeypatch):
    """HunyuanImagePipeline with its guider (two transformer calls per step) at 32x32 pixels: a 16x16 grid; a quoted
    text adds valid ByT5 tokens. Whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = hunyuan_image.tiny_pipeline()
    stock = generate(pipe, prompt=prompt)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="hunyuan-image", window=-1)) as handle:
            assert max_diff(generate(pipe, prompt=prompt), stock) <= 1e-5
            assert handle.runtime.grid == (16, 16)
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="hunyuan-image", window=5, dense_steps=1)) as handle:
            sparse = generate(pipe, prompt=prompt)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert spy.contexts == [((16, 16), 64 + BYT5)] * (2 * 2 * 4)  # 2 sparse steps x 2 guider calls x 4 layers


def tiny_refiner_pipeline():
    from diffusers import (AutoencoderKLHunyuanImageRefiner, FlowMatchEulerDiscreteScheduler,
                           HunyuanImageRefinerPipeline)

    from gna_diffusers.patches.hunyuan_video15 import tiny_text_parts

    text = tiny_text_parts()
    vae = AutoencoderKLHunyuanImageRefiner(latent_channels=2, block_out_channels=(32, 32), layers_per_block=1,
                                           spatial_compression_ratio=2, temporal_compression_ratio=1).eval()
    pipe = HunyuanImageRefinerPipeline(
        transformer=hunyuan_image.tiny_transformer(refiner=True), vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        tokenizer=text["tokenizer"], text_encoder=text["text_encoder"])
    pipe.tokenizer_max_length = 32
    return pipe


def test_refiner_pipeline_takes_its_one_frame_latents_as_the_image_grid():
    """HunyuanImageRefinerPipeline: latents (B, C, 1, H, W) from its 16x VAE (2x here) beside the reference image's;
    the grid is the frame's rows and columns."""
    pipe = tiny_refiner_pipeline()
    image = torch.rand(1, 3, 32, 32)
    stock = generate(pipe, image=image)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="hunyuan-image", window=-1)) as handle:
            assert max_diff(generate(pipe, image=image), stock) <= 1e-5
            assert handle.runtime.grid == (16, 16)
        with enabled(pipe, GNAConfig(family="hunyuan-image", window=5, dense_steps=1)):
            sparse = generate(pipe, image=image)
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0


def test_compare_asks_the_refiner_for_its_input_image():
    """The refiner's image argument defaults to None, but it refines an image: the harness asks for --image."""
    from gna_diffusers.harness.models import HarnessError, Model
    from gna_diffusers.harness.runner import Settings, _call_kwargs

    pipe = tiny_refiner_pipeline()
    model = Model("a-refiner", hunyuan_image, pipe, pipe.transformer, "pretrained")
    with pytest.raises(HarnessError, match=r"image-conditioned pipeline \(HunyuanImageRefinerPipeline\): give its "
                                           r"input image with --image PATH"):
        _call_kwargs(model, Settings(model="a-refiner"))


def test_compare_defaults_to_the_refiner_preset_for_the_refiner_and_anima_for_anima():
    """A family's default preset is for its main pipeline; compare picks the one the family names for the loaded
    pipeline's class (sweep still takes every preset of the family)."""
    from gna_diffusers.harness.models import Model
    from gna_diffusers.harness.runner import _resolve_presets
    from gna_diffusers.patches import cosmos

    refiner = tiny_refiner_pipeline()
    model = Model("a-refiner", hunyuan_image, refiner, refiner.transformer, "pretrained")
    assert [name for name, _ in _resolve_presets(None, model, single=True)] == ["hunyuan-image-refiner-2k"]
    assert "hunyuan-image-2k" in [name for name, _ in _resolve_presets(None, model, single=False)]
    base = hunyuan_image.tiny_pipeline()
    model = Model("a-base", hunyuan_image, base, base.transformer, "pretrained")
    assert [name for name, _ in _resolve_presets(None, model, single=True)] == ["hunyuan-image-2k"]
    anima = cosmos.tiny_anima_denoise()
    model = Model("an-anima", cosmos, anima, anima.transformer, "pretrained")
    assert [name for name, _ in _resolve_presets(None, model, single=True)] == ["anima-1k"]


def test_a_latent_video_of_several_frames_runs_dense_with_a_warning():
    transformer = hunyuan_image.tiny_transformer(refiner=True)
    inputs = hunyuan_image.transformer_inputs(transformer, GRID, text=TEXT)
    inputs["hidden_states"] = inputs["hidden_states"].repeat(1, 1, 2, 1, 1)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with pytest.warns(UserWarning, match="hold 2 frames, not one"):
            with enabled(transformer, GNAConfig(family="hunyuan-image", window=2)):
                assert torch.equal(transformer(**inputs)[0], stock)


def test_full_sizes_by_name_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    def billions(name: str) -> float:
        config, _ = hunyuan_image.full_size(name)
        return sum(p.numel() for p in on_meta(hunyuan_image.PATCH.transformer_class, config).parameters()) / 1e9

    assert billions("hunyuanvideo-community/HunyuanImage-2.1-Diffusers") == pytest.approx(17, rel=0.05)
    assert billions("hunyuanvideo-community/HunyuanImage-2.1-Distilled-Diffusers") == pytest.approx(17, rel=0.05)
    assert billions("hunyuanvideo-community/HunyuanImage-2.1-Refiner-Diffusers") == pytest.approx(15.0, abs=0.1)
    assert hunyuan_image.text_tokens("hunyuanvideo-community/HunyuanImage-2.1-Refiner-Diffusers") == 256
    assert hunyuan_image.text_tokens("hunyuanvideo-community/HunyuanImage-2.1-Diffusers") == 1000
    _, refiner_grid = hunyuan_image.full_size("HunyuanImage-2.1-Refiner")
    assert refiner_grid(2048, 2048) == tuple(load_preset("hunyuan-image-refiner-2k").base_grid)
    assert hunyuan_image.latent_grid(2048, 2048) == tuple(load_preset("hunyuan-image-2k").base_grid)


def test_regional_compilation_runs_gna_like_eager():
    """The stock transformer does not compile whole with fullgraph=True (it reorders the prompt tokens by boolean
    indexing); its blocks do, and GNA runs in them as in eager mode, padded prompt tokens masked."""
    transformer = hunyuan_image.tiny_transformer()
    inputs = hunyuan_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=(3, TEXT))
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="hunyuan-image", window=2)):
            eager = transformer(**inputs)[0]
        transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        with enabled(transformer, GNAConfig(family="hunyuan-image", window=2)):
            compiled = transformer(**inputs)[0]
    assert max_diff(compiled, eager) <= 1e-6
