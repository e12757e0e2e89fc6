"""Qwen-Image and Qwen-Image-Edit (tiny offline models, fp32, CPU): the grid comes from img_shapes, padded
text is masked, and Edit's reference-image tokens are context keys of every grid query."""

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_qwenimage
from helpers import assert_whole_windows_reproduce, harness_loads, max_diff, no_gna_warnings

import gna_diffusers
from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import qwen_image

GRID = (8, 8)  # the tiny pipeline's token grid at 64x64 pixels


def generate(pipe, steps=2):
    return pipe(["a red cat", "a dog on the beach at sunset"], height=64, width=64, num_inference_steps=steps,
                output_type="pt", generator=torch.Generator().manual_seed(0), **qwen_image.tiny_call_kwargs()).images


class ContextSpy:
    """Records the grid, extra keys and their validity mask of every gna_attention call."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = gna_diffusers.route.gna_attention

        def spy(*args, **kwargs):
            mask = kwargs["extra_kv_mask"]
            self.calls.append((args[3], kwargs["extra_k"].shape[1], None if mask is None else mask.clone()))
            return real(*args, **kwargs)

        monkeypatch.setattr(gna_diffusers.route, "gna_attention", spy)


def test_edit_references_and_padded_text_are_context_with_the_right_validity(monkeypatch):
    transformer = qwen_image.tiny_transformer()
    inputs = qwen_image.transformer_inputs(transformer, (4, 6), text=7, valid_text=(3, 7), references=((3, 5),))
    spy = ContextSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="qwen-image", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5  # a leak of padded text would differ
        with enabled(transformer, GNAConfig(family="qwen-image", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
    grid, extra, mask = spy.calls[0]
    assert grid == (4, 6) and extra == 7 + 15  # the text and the 3x5 reference image
    expected = torch.ones(2, 22, dtype=torch.bool)
    expected[0, 3:7] = False  # only the first prompt's padding; reference tokens are always valid
    assert torch.equal(mask, expected)


def layered_call(layers: int, plane=(4, 6), text: int = 5) -> tuple[torch.nn.Module, dict]:
    """A Qwen-Image-Layered transformer (layer-wise 3-D RoPE, the RGB flag as an extra timestep condition) and one
    call as its pipeline makes it: ``layers`` generated planes of ``plane`` tokens, then the condition image's."""
    torch.manual_seed(0)
    transformer = type(qwen_image.tiny_transformer()).from_config(
        {**qwen_image.tiny_transformer().config, "use_layer3d_rope": True, "use_additional_t_cond": True}).eval()
    inputs = qwen_image.transformer_inputs(transformer, plane, text=text, batch=2, references=(plane,) * layers)
    inputs["img_shapes"] = [[(1, *plane)] * (layers + 1)] * 2  # `layers` generated planes and the condition image
    return transformer, inputs | {"additional_t_cond": torch.zeros(2, dtype=torch.long)}


@pytest.mark.parametrize("layers", [3, 1])
def test_layered_planes_form_one_3d_grid_and_the_condition_image_is_context(layers, monkeypatch):
    """Qwen-Image-Layered: a token's window covers its neighbourhood in every generated layer; the condition image
    (as large as a layer: told apart by the call's ``additional_t_cond``) and the prompt are context."""
    transformer, inputs = layered_call(layers)
    spy = ContextSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with no_gna_warnings(), enabled(transformer, GNAConfig(family="qwen-image", window=-1)) as handle:
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
            assert handle.runtime.layout.grid == (layers, 4, 6)
        window, stride = (-1, 2, 4), (1, 2, 2)
        with enabled(transformer, GNAConfig(family="qwen-image", base_grid=[layers, 4, 6], window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
    assert [(grid, extra) for grid, extra, _ in spy.calls[:1]] == [((layers, 4, 6), 5 + 24)]
    masked_self_attention(transformer_qwenimage,
                          joint_mask((layers, 4, 6), (layers, 2, 4), stride, 5, 24), monkeypatch)
    with torch.no_grad():
        assert max_diff(routed, transformer(**inputs)[0]) <= 1e-5
    preset = load_preset("qwen-image-layered-640").model_copy(update={"dense_steps": 0})  # a bare transformer
    with enabled(transformer, preset), torch.no_grad():  # the 5-layer preset on this call's layers
        assert torch.isfinite(transformer(**inputs)[0]).all()


def pattern_image(mode: str = "RGBA", step: int = 7, size: int = 64):
    """A deterministic size x size image in ``mode`` (RGB or RGBA)."""
    from PIL import Image

    pixels = ((torch.arange(size * size * len(mode)) * step) % 251).reshape(size, size, len(mode)).to(torch.uint8)
    return Image.fromarray(pixels.numpy())  # 3 or 4 channels: RGB or RGBA


def test_layered_pipeline_runs_gna_over_its_generated_planes_after_the_warm_up(monkeypatch):
    """QwenImageLayeredPipeline with 2 layers: it generates 3 planes (the combined image, then the layers), 10x10
    tokens each at its 640 bucket, one 3-D grid; the input image's plane and the prompt are context. Whole windows
    reproduce it; the 640 preset (5 planes at 40x40) runs GNA on the steps after its warm-up."""
    pipe = qwen_image.tiny_layered_pipeline()

    def generate() -> torch.Tensor:
        return pipe(image=pattern_image(), prompt="a red cat", layers=2, num_inference_steps=4, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **qwen_image.tiny_call_kwargs()).images[0]

    stock = generate()
    spy = ContextSpy(monkeypatch)
    assert_whole_windows_reproduce(pipe, "qwen-image", generate, stock, tolerance=1e-4)
    spy.calls.clear()
    with no_gna_warnings():
        with enabled(pipe, "qwen-image-layered-640"):
            sparse = generate()
    assert stock.shape == (2, 4, 640, 640) and max_diff(sparse, stock) > 1e-3
    # round(0.32 x 4) = 1 dense step, then 3 steps x 2 layers; context: the prompt's 64 tokens (its templated text cut
    # at max_sequence_length) and the input image's 100
    assert [(grid, extra) for grid, extra, _ in spy.calls] == [((3, 10, 10), 64 + 100)] * 6


def test_compare_scores_the_layered_pipeline_layers_as_frames(tmp_path, monkeypatch):
    """compare on a Qwen-Image-Layered pipeline (the tiny one, given to the harness as a loaded model: it has no
    processor to save): asks for its RGBA --image, keeps the alpha, defaults to the layered preset and scores the
    layers, composited over white, as frames (no temporal PSNR or MP4: layers have no time axis)."""
    import json

    import gna_diffusers.harness.runner as runner
    from gna_diffusers.cli import main

    pipe = qwen_image.tiny_layered_pipeline()
    harness_loads(monkeypatch, qwen_image, pipe)
    images = []
    real_load = runner._load_image
    monkeypatch.setattr(runner, "_load_image", lambda path, mode: images.append(real_load(path, mode).mode) or
                        real_load(path, mode))
    pattern_image().save(tmp_path / "input.png")
    args = ["compare", "--model", "Qwen/Qwen-Image-Layered", "--output", str(tmp_path / "out"), "--no-warmup",
            "--steps", "4", "--prompt", "a red cat", "--device", "cpu"]
    assert main(args) == 2  # no --image: refused, with the reason
    assert main([*args, "--image", str(tmp_path / "input.png")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["preset"]["name"] == "qwen-image-layered-640" and set(images) == {"RGBA"}
    (sample,) = report["samples"]
    assert list(sample["files"]) == ["strip"] and 20 < report["summary"]["psnr"]  # no MP4 of layers
    assert len(sample["metrics"]["per_frame_psnr"]) == 4 and "temporal_psnr" not in sample["metrics"]  # 4 layers


@pytest.mark.parametrize("plus", [False, True], ids=["edit", "edit-plus"])
def test_edit_pipelines_run_gna_with_their_reference_images_as_context(plus, monkeypatch):
    """QwenImageEditPipeline (one input image) and QwenImageEditPlusPipeline (Edit 2509 / 2511: here two) with true
    CFG (two calls a step, one step): the generated image's 16x16 grid; each reference image's 256 tokens and the
    prompt (which its Qwen2.5-VL read with the images) are context. Whole windows reproduce it; a sparse pattern runs
    after the dense warm-up step."""
    from diffusers import QwenImageEditPlusPipeline

    pipe = qwen_image.tiny_edit_pipeline()
    pipe = QwenImageEditPlusPipeline(**pipe.components) if plus else pipe
    images = [pattern_image("RGB", step) for step in ((5, 7) if plus else (5,))]
    references = 256 * len(images)

    def generate() -> torch.Tensor:
        return pipe(image=images if plus else images[0], prompt="make it red", negative_prompt=" ",
                    num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0),
                    **qwen_image.tiny_call_kwargs()).images

    stock = generate()
    spy = ContextSpy(monkeypatch)
    assert_whole_windows_reproduce(pipe, "qwen-image", generate, stock, tolerance=1e-4)
    spy.calls.clear()
    with no_gna_warnings():
        texts = []  # the prompt's and the negative prompt's token counts, per transformer call
        hook = pipe.transformer.register_forward_pre_hook(
            lambda module, args, kwargs: texts.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
        with enabled(pipe, GNAConfig(family="qwen-image", window=4, dense_steps=1)):
            sparse = generate()
        hook.remove()
    assert max_diff(sparse, stock) > 1e-3 and len(set(texts)) == 2
    # after the dense step (its 2 calls): 2 steps x 2 calls, each on 2 layers; context: the call's text, then the
    # reference images' tokens
    assert [(grid, extra) for grid, extra, _ in spy.calls] == [((16, 16), text + references) for text in texts[2:]
                                                               for _layer in range(2)]


def test_an_edit_reference_as_large_as_the_image_stays_context():
    """Without ``additional_t_cond`` (Qwen-Image-Edit) a reference image of the generated image's size is context,
    not a second layer."""
    transformer = qwen_image.tiny_transformer()
    inputs = qwen_image.transformer_inputs(transformer, (4, 6), text=5, batch=2, references=((4, 6),))
    with enabled(transformer, GNAConfig(family="qwen-image", window=2)) as handle, torch.no_grad():
        transformer(**inputs)
        assert handle.runtime.layout.grid == (4, 6) and handle.runtime.layout.stream_tokens == 48


@pytest.mark.parametrize("preset, size", [("qwen-image-layered-640", 640), ("qwen-image-layered-1k", 1024)])
def test_layered_presets_match_their_buckets(preset, size):
    """A square image in the pipeline's 640 / 1024 bucket, its default 4 layers (5 planes)."""
    assert tuple(load_preset(preset).base_grid) == (5, *qwen_image.latent_grid(size, size))


def test_whole_extent_windows_reproduce_the_stock_pipeline_and_remove_restores_it():
    pipe = qwen_image.tiny_pipeline()
    stock = generate(pipe)
    with enabled(pipe, GNAConfig(family="qwen-image", window=-1)) as handle:
        assert max_diff(generate(pipe), stock) <= 1e-5
        assert handle.runtime.grid == GRID
    with enabled(pipe, GNAConfig(family="qwen-image", base_grid=list(GRID), window=[2, 2])):
        assert max_diff(generate(pipe), stock) > 1e-3
    assert torch.equal(generate(pipe), stock)


def test_sparse_preset_reaches_exactly_the_selected_blocks(monkeypatch):
    pipe = qwen_image.tiny_pipeline()
    spy = ContextSpy(monkeypatch)
    config = GNAConfig(family="qwen-image", base_grid=list(GRID), window=[2, 2],
                       dense_layers=[{"blocks": "blocks", "layers": [1]}])
    with enabled(pipe, config) as handle:
        generate(pipe, steps=1)
        processors = [block.attn.processor for block in pipe.transformer.transformer_blocks]
        assert isinstance(processors[0], handle.patch.processor_class)
        assert type(processors[1]) is handle.patch.stock_processor_class
    assert [grid for grid, _, _ in spy.calls] == [GRID]



def test_latent_grids_of_the_presets_sizes():
    assert qwen_image.latent_grid(1328, 1328) == (83, 83) and qwen_image.latent_grid(928, 1664) == (58, 104)
