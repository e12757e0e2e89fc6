"""Qwen-Image and Qwen-Image-Edit (tiny offline models, fp32, CPU): the grid comes from img_shapes, padded
text is masked, and Edit's reference-image tokens are context keys of every grid query."""

import torch
from helpers import max_diff

import gna_diffusers
from gna_diffusers import GNAConfig, enabled
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
