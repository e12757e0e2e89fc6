"""FLUX's architecture under other names, each with its own attention processor (tiny offline transformers and
pipelines, fp32, CPU): Ovis-Image, LongCat-Image, Bria 3.2 and Bria FIBO. GNA on the double- and single-stream
blocks, the grid from FLUX's img_ids probe (LongCat's image ids start past the text's; Bria's are per sample,
(B, N, 3); FIBO's single blocks run Bria 3's processor)."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from helpers import assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, list_presets, load_preset
from gna_diffusers.patches import bria, bria_fibo, longcat_image, ovis_image

GRID = (4, 6)
TEXT = 8
FAMILIES = {"ovis-image": ovis_image, "longcat-image": longcat_image, "bria": bria, "bria-fibo": bria_fibo}
# transformer calls per step (Bria's: one batch of two)
GUIDANCE_CALLS = {"ovis-image": 2, "longcat-image": 2, "bria": 1, "bria-fibo": 1}
family = pytest.mark.parametrize("name", FAMILIES)


@family
def test_whole_extent_reproduces_stock_on_both_block_types(name, monkeypatch):
    module = FAMILIES[name]
    transformer = module.tiny_transformer()
    inputs = module.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert {row["blocks"] for row in handle.layers()} == {"double", "single"}

    assert_round_trip(transformer, name, inputs, installed)
    assert spy.contexts == [(GRID, TEXT)] * 8  # 2 double + 2 single layers, 2 runs


@family
def test_sparse_windows_equal_an_independent_masked_attention(name, monkeypatch):
    module = FAMILIES[name]
    window, stride = (2, 4), (1, 2)
    transformer = module.tiny_transformer()
    inputs = module.transformer_inputs(transformer, GRID, text=TEXT)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family=name, base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        for dispatch_module in module.PATCH.routed_modules:  # FIBO: its own, and Bria 3's for the single blocks
            masked_self_attention(dispatch_module, joint_mask(GRID, window, stride, TEXT), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


@family
def test_pipeline_runs_gna_after_the_warm_up(name, monkeypatch):
    """The pipeline (classifier-free guidance as two calls, or Bria's one batch of two) on an 8x8 grid (32x32 pixels,
    FIBO's 128x128: its pipeline assumes a 16x VAE). Whole windows reproduce it; a sparse preset routes the steps
    after the dense one."""
    module = FAMILIES[name]
    pipe = module.tiny_pipeline()
    size = getattr(module, "TINY_SIZE", {"height": 32, "width": 32})

    def generate():
        return pipe(prompt="a red cat", num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **size, **module.tiny_call_kwargs()).images

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family=name, window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family=name, window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert {grid for grid, _ in spy.contexts} == {(8, 8)}
    assert len(spy.contexts) == 2 * GUIDANCE_CALLS[name] * 4  # steps x guidance calls x layers


@pytest.mark.parametrize("preset", [p for p in list_presets() if load_preset(p).family in FAMILIES])
def test_preset_grids(preset):
    """A preset named <family>-<n>k is for n x 1024 pixels square."""
    config = load_preset(preset)
    size = int(preset.removeprefix(f"{config.family}-").removesuffix("k")) * 1024
    assert FAMILIES[config.family].latent_grid(size, size) == tuple(config.base_grid)


@pytest.mark.parametrize("module, model", [(longcat_image, "meituan-longcat/LongCat-Image"), (bria, "briaai/BRIA-3.2"),
                                           (bria_fibo, "briaai/FIBO")], ids=["longcat-image", "bria", "bria-fibo"])
def test_no_full_size_shape_offline(module, model):
    with pytest.raises(ValueError, match="full-size shape is not known offline"):
        module.full_size(model)


def test_fibo_prompts_of_different_lengths_are_masked_and_exact(monkeypatch):
    """Two prompts of different lengths: Bria FIBO's pipeline passes a (B, 1, 1, S) key mask over the shorter one's
    padding in joint_attention_kwargs. Whole windows reproduce the stock pipeline; a sparse preset runs, no notice."""
    pipe = bria_fibo.tiny_pipeline()
    masks = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append((kwargs.get("joint_attention_kwargs") or {}).get("attention_mask")),
        with_kwargs=True)

    def generate():
        return pipe(prompt=["a red cat", "a blue dog on a long walk by the sea"], num_inference_steps=3,
                    output_type="pt", generator=torch.Generator().manual_seed(0), **bria_fibo.TINY_SIZE,
                    **bria_fibo.tiny_call_kwargs()).images

    stock = generate()
    assert masks[0] is not None and not bool(masks[0].all())  # the shorter prompt's padding is masked
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="bria-fibo", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        with enabled(pipe, GNAConfig(family="bria-fibo", window=3, dense_steps=1)):
            sparse = generate()
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0 and spy.windows


@pytest.mark.parametrize("references", [1, 2])
def test_fibo_edit_reference_tokens_are_context(references, monkeypatch):
    """BriaFiboEditPipeline puts each reference image's latent tokens after the generated image's (ids with time index
    1, 2, ...), as FLUX.1 Kontext: they are context keys of every grid query. Whole windows reproduce the stock
    pipeline; a sparse preset routes the steps after the dense one."""
    from diffusers import BriaFiboEditPipeline
    from PIL import Image

    pipe = BriaFiboEditPipeline(**bria_fibo.tiny_pipeline().components)
    images = [Image.new("RGB", (128, 128), (200, 30, 30)), Image.new("RGB", (128, 128), (30, 30, 200))][:references]

    def generate():
        return pipe(prompt='{"edit_instruction": "make it blue"}', image=images, num_inference_steps=3,
                    output_type="pt", generator=torch.Generator().manual_seed(0), **bria_fibo.TINY_SIZE,
                    **bria_fibo.tiny_call_kwargs()).images

    text = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: text.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="bria-fibo", window=-1)) as handle:
            assert max_diff(generate(), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
        contexts = {context for _, context in spy.contexts}
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="bria-fibo", window=3, dense_steps=1)):
            sparse = generate()
    assert contexts == {text[0] + references * 64}  # the prompt, and each reference's 8x8 grid
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3 and spy.contexts


def test_longcat_image_edit_reference_tokens_are_context(monkeypatch):
    """LongCat-Image-Edit's call, as its pipeline builds it: the reference image's packed latents after the generated
    image's, its ids on modality 2 over the same positions (the generated image's: modality 1). Its tokens are
    context keys of every grid query, as Kontext's: exact against an independently masked attention. (The pipeline
    itself scales every request to a megapixel and needs a Qwen2.5-VL processor: not run on CPU.)"""
    from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import prepare_pos_ids

    window, stride = (2, 4), (1, 2)
    transformer = longcat_image.tiny_transformer()
    inputs = longcat_image.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    reference = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(1))
    inputs["hidden_states"] = torch.cat([inputs["hidden_states"], reference], dim=1)
    reference_ids = prepare_pos_ids(modality_id=2, type="image", start=(TEXT, TEXT), height=GRID[0], width=GRID[1])
    inputs["img_ids"] = torch.cat([inputs["img_ids"], reference_ids.to(inputs["img_ids"].dtype)])
    n = GRID[0] * GRID[1]
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with no_gna_warnings():
            with enabled(transformer, GNAConfig(family="longcat-image", window=-1)):
                assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
            with enabled(transformer, GNAConfig(family="longcat-image", base_grid=list(GRID), window=list(window),
                                                stride=list(stride))):
                routed = transformer(**inputs)[0]
        masked_self_attention(longcat_image.PATCH.dispatch_module, joint_mask(GRID, window, stride, TEXT, n),
                              monkeypatch)
        expected = transformer(**inputs)[0]
    assert set(spy.contexts) == {(GRID, TEXT + n)}  # the prompt and the reference image's tokens
    assert max_diff(routed, expected) <= 1e-5 and max_diff(routed, stock) > 1e-3
