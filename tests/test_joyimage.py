"""JoyImage-Edit and JoyImage-Edit Plus (tiny offline transformers and pipelines, fp32, CPU): GNA on every
double-stream block's attention over [image stream, text]; an edit's reference images come after the generated one
(JoyImage-Edit: frames of the stream; Plus: patches of their own sizes, the batch padded): context."""

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_joyimage
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from PIL import Image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import joyimage, joyimage_plus

GRID = (4, 6)
TEXT = 7


@pytest.mark.parametrize("references", [0, 1], ids=["text-to-image", "edit"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(references, monkeypatch):
    transformer = joyimage.tiny_transformer()
    inputs = joyimage.transformer_inputs(transformer, GRID, text=TEXT, batch=2, references=references)
    spy = OperatorSpy(monkeypatch)
    assert_round_trip(transformer, "joyimage", inputs)
    assert spy.contexts == [(GRID, references * 24 + TEXT)] * 4  # 2 layers, 2 runs


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """An edit: [generated grid, reference grid, text]; the generated grid's queries see their window, the whole
    reference and the text; the reference and text queries see everything."""
    window, stride = (2, 4), (1, 2)
    transformer = joyimage.tiny_transformer()
    inputs = joyimage.transformer_inputs(transformer, GRID, text=TEXT, references=1)
    mask = joint_mask(GRID, window, stride, 0, 24 + TEXT)
    assert_equals_masked_stock(transformer, "joyimage", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_joyimage, mask, monkeypatch))


def generate(pipe, **kwargs):
    """The pipeline at 64x96 pixels (an 8x12 grid). Its VAE samples the reference's latents without the generator:
    the global seed makes them repeat."""
    torch.manual_seed(0)
    return pipe(prompt="a red cat", height=64, width=96, num_inference_steps=3, output_type="pt",
                generator=torch.Generator().manual_seed(0), **joyimage.tiny_call_kwargs(), **kwargs).images


@pytest.mark.parametrize("edit", [False, True], ids=["text-to-image", "edit"])
def test_pipeline_runs_gna_after_the_warm_up(edit, monkeypatch):
    """JoyImageEditPipeline (classifier-free guidance as two calls), without and with a reference image: whole windows
    reproduce it; a sparse preset routes the steps after the dense one, the reference's 96 tokens among the context."""
    pipe = joyimage.tiny_pipeline()
    kwargs = dict(image=Image.new("RGB", (96, 64), (90, 30, 200))) if edit else {}
    stock = generate(pipe, **kwargs)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="joyimage", window=-1)) as handle:
            assert max_diff(generate(pipe, **kwargs), stock) <= 1e-5
            assert handle.runtime.grid == (8, 12)
        spy.contexts.clear()
        texts = []  # each call's prompt tokens
        hook = pipe.transformer.register_forward_pre_hook(
            lambda module, args, call: texts.append(call["encoder_hidden_states"].shape[1]), with_kwargs=True)
        with enabled(pipe, GNAConfig(family="joyimage", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe, **kwargs)
            assert handle.runtime.step == 3
        hook.remove()
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    # The calls after the dense step (2 guidance calls each), 2 layers each: the prompt, and an edit's 96 tokens.
    assert spy.contexts == [((8, 12), text + 96 * edit) for text in texts[2:] for _ in range(2)]


def test_plus_whole_extent_reproduces_stock_and_removal_is_exact(monkeypatch):
    """JoyImage-Edit Plus with a 3x4-patch reference image and prompts of 5 and 9 valid tokens."""
    transformer = joyimage_plus.tiny_transformer()
    inputs = joyimage_plus.transformer_inputs(transformer, GRID, text=TEXT, batch=2, references=((3, 4),),
                                              valid_text=(5, 7))
    spy = OperatorSpy(monkeypatch)
    assert_round_trip(transformer, "joyimage-plus", inputs)
    assert spy.contexts == [(GRID, 12 + TEXT)] * 4  # the reference's 12 patches and the prompt


def test_plus_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """[generated grid, reference patches, text]: the grid's queries see their window, the reference and their own
    sample's valid prompt tokens."""
    window, stride, valid = (2, 4), (1, 2), (5, 7)
    transformer = joyimage_plus.tiny_transformer()
    inputs = joyimage_plus.transformer_inputs(transformer, GRID, text=TEXT, batch=2, references=((3, 4),),
                                              valid_text=valid)
    n, total = GRID[0] * GRID[1], GRID[0] * GRID[1] + 12 + TEXT
    masks = joint_mask(GRID, window, stride, 0, 12 + TEXT).repeat(2, 1, 1, 1)
    for sample, length in enumerate(valid):
        masks[sample, 0, :, n + 12 + length:total] = False  # the prompt's padding, for every query
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="joyimage-plus", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        from diffusers.models.transformers import transformer_joyimage_edit_plus

        masked_self_attention(transformer_joyimage_edit_plus, masks, monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


@pytest.mark.parametrize("edit", [False, True], ids=["text-to-image", "edit"])
def test_plus_pipeline_runs_gna_after_the_warm_up(edit, monkeypatch):
    """JoyImageEditPlusPipeline (guidance in one batch of 2) at 64x96 pixels, without and with a 48x32 reference image
    (6x4 patches): whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    pipe = joyimage_plus.tiny_pipeline()
    kwargs = dict(images=[[Image.new("RGB", (48, 32), (90, 30, 200))]]) if edit else {}
    stock = generate(pipe, **kwargs)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="joyimage-plus", window=-1)) as handle:
            assert max_diff(generate(pipe, **kwargs), stock) <= 1e-5
            assert handle.runtime.layout.stream_tokens == 96 + 24 * edit
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="joyimage-plus", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe, **kwargs)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2  # 2 sparse steps x 2 layers


def test_full_size_and_preset_grids():
    assert joyimage.latent_grid(1024, 1024) == tuple(load_preset("joyimage-1k").base_grid)
    assert joyimage_plus.latent_grid(1024, 1024) == tuple(load_preset("joyimage-plus-1k").base_grid)
