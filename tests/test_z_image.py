"""Z-Image (tiny offline models, fp32, CPU): list inputs, image tokens padded to a multiple of 32 with a
learnt pad token (context keys), captions after the image, a key mask when the samples' lengths differ."""

import pytest
import torch
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor
from helpers import assert_whole_windows_reproduce, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import z_image
from gna_diffusers.route import LayoutError

GRID = (6, 8)  # 48 image tokens, padded to 64


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_whole_extent_reproduces_stock_and_pad_and_caption_tokens_are_context(monkeypatch):
    transformer = z_image.tiny_transformer()
    inputs = z_image.transformer_inputs(transformer, GRID, valid_text=(7, 40))  # captions pad to 32 and 64
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="z-image", window=-1)) as handle:
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
            assert (handle.runtime.layout.grid, handle.runtime.layout.stream_tokens) == (GRID, 64)
        spy.contexts.clear()
        with enabled(transformer, GNAConfig(family="z-image", window=3)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
        assert max_diff(transformer(**inputs)[0], stock) == 0  # removed: bit-identical
    # The refiner block sees [grid, 16 pad tokens]; the two main blocks add the longer caption (64 tokens,
    # the shorter one's batch padding masked).
    assert sorted(spy.contexts) == [(GRID, 16), (GRID, 16 + 64), (GRID, 16 + 64)]


def test_the_stock_pipeline_is_reproduced_and_only_the_caption_refiner_keeps_its_processor():
    pipe = z_image.tiny_pipeline()

    def generate():
        return pipe(prompt=["a red cat", "a dog on a beach at sunset"], height=32, width=32, num_inference_steps=2,
                    output_type="pt", generator=torch.Generator().manual_seed(0), **z_image.tiny_call_kwargs()).images

    stock = generate()
    with enabled(pipe, GNAConfig(family="z-image", window=-1)) as handle:
        assert (generate() - stock).abs().max().item() <= 1e-5
        assert handle.runtime.grid == (8, 8)
        transformer = pipe.transformer
        assert all(isinstance(b.attention.processor, z_image.GNAZSingleStreamAttnProcessor)
                   for b in [*transformer.noise_refiner, *transformer.layers])
        assert all(type(b.attention.processor) is ZSingleStreamAttnProcessor for b in transformer.context_refiner)


def test_samples_of_different_sizes_run_dense_with_a_warning():
    transformer = z_image.tiny_transformer()
    inputs = z_image.transformer_inputs(transformer, GRID, valid_text=(5, 5))
    inputs["x"][1] = torch.randn(4, 1, 8, 8)  # a 4 x 4 grid beside the 6 x 8 one
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="z-image", window=3)):
            with pytest.warns(UserWarning,
                              match=r"runs its stock attention for this call: the samples of this call have different"):
                out = transformer(**inputs)[0]
    assert max_diff(out, stock) == 0


def test_omni_mode_is_not_placed_on_a_grid():
    transformer = z_image.tiny_transformer()
    with pytest.raises(LayoutError, match="omni mode"):
        z_image.layout_probe(transformer, (), {"x": [[torch.randn(4, 1, 8, 8)]]}, None)


def test_regional_compilation_runs_gna_like_eager():
    """The stock transformer does not compile whole with fullgraph=True (its RoPE enters a `with device`
    block); its blocks do, and GNA runs in them as in eager mode."""
    transformer = z_image.tiny_transformer()
    inputs = z_image.transformer_inputs(transformer, GRID, valid_text=(7, 40))
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="z-image", window=3)):
            eager = transformer(**inputs)[0]
        transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        with enabled(transformer, GNAConfig(family="z-image", window=3)):
            compiled = transformer(**inputs)[0]
    assert max_diff(compiled, eager) <= 1e-6


def test_controlnet_sharing_the_noise_refiner_gets_each_calls_own_grid(monkeypatch):
    """ZImageControlNetPipeline: the ControlNet runs the transformer's own noise-refiner layers (shared modules,
    routed by GNA) before the transformer in each step. Their grid must come from the ControlNet's call, not
    from the transformer's previous one: a second generation on the transposed grid (the same token count)
    routes every call on its own grid (the ControlNet's own blocks too)."""
    import warnings

    from diffusers import ZImageControlNetModel, ZImageControlNetPipeline
    from PIL import Image

    controlnet = ZImageControlNetModel(control_layers_places=[0], control_in_dim=4, dim=32, n_refiner_layers=1,
                                       n_heads=2, n_kv_heads=2).eval()
    pipe = ZImageControlNetPipeline(controlnet=controlnet, **z_image.tiny_pipeline().components)
    assert pipe.controlnet.noise_refiner is pipe.transformer.noise_refiner
    spy = OperatorSpy(monkeypatch)
    grids = []
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="z-image", window=2)):
            for height, width in ((64, 32), (32, 64)):
                spy.contexts.clear()
                pipe(prompt="a red cat", control_image=Image.new("RGB", (width, height), (90, 30, 200)),
                     height=height, width=width, num_inference_steps=2, output_type="pt",
                     generator=torch.Generator().manual_seed(0), **z_image.tiny_call_kwargs())
                grids.append({grid for grid, _ in spy.contexts})
    assert grids == [{(16, 8)}, {(8, 16)}]


@pytest.mark.parametrize("refiner", [None, "control_layers", "control_noise_refiner"])
def test_controlnets_own_blocks_run_gna_like_an_independent_masked_attention(monkeypatch, refiner):
    """ZImageControlNetPipeline with each of the ControlNet's refiner kinds (none of its own: its noise refiner
    blocks; its control layers run over the image alone first, as Union 2.1's; control noise-refiner blocks): the
    ControlNet's blocks carry diffusers' copy of the processor, calling the ControlNet module's own dispatch. Whole
    windows reproduce the pipeline; sparse windows equal the stock pipeline with every self-attention over the 8x8
    grid (the transformer's and the ControlNet's) masked independently, keeping its caption key mask."""
    from diffusers import ZImageControlNetModel, ZImageControlNetPipeline
    from diffusers.models.controlnets import controlnet_z_image
    from diffusers.models.transformers import transformer_z_image
    from PIL import Image

    from brute_force import joint_mask

    window, stride, grid = (3, 5), (1, 2), (8, 8)
    torch.manual_seed(1)
    controlnet = ZImageControlNetModel(
        control_layers_places=[0, 1], control_refiner_layers_places=[0] if refiner else None, control_in_dim=4,
        add_control_noise_refiner=refiner, dim=32, n_refiner_layers=1, n_heads=2, n_kv_heads=2).eval()
    pipe = ZImageControlNetPipeline(controlnet=controlnet, **z_image.tiny_pipeline().components)
    own = [*(pipe.controlnet.control_noise_refiner or []), *pipe.controlnet.control_layers]

    def generate():
        return pipe(prompt="a red cat", control_image=Image.new("RGB", (32, 32), (90, 30, 200)), height=32, width=32,
                    num_inference_steps=2, guidance_scale=3.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **z_image.tiny_call_kwargs()).images

    stock = generate()
    assert_whole_windows_reproduce(pipe, "z-image", generate, stock)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="z-image", base_grid=list(grid), window=list(window), stride=list(stride))):
            sparse = generate()
            assert {type(block.attention.processor) for block in own} == {z_image.GNAControlZSingleStreamAttnProcessor}
    # per step: the ControlNet's own blocks (control layers twice where they also refine), the shared noise refiner
    # in both models, the transformer's 2 main layers
    own_calls = len(own) + (2 if refiner == "control_layers" else 0)
    assert len(spy.contexts) == 2 * (own_calls + 2 + 2)
    assert {context_grid for context_grid, _ in spy.contexts} == {grid}
    assert max_diff(sparse, stock) > 1e-3

    def masked(dispatch):
        def call(query, key, value, attn_mask=None, **kwargs):
            tokens = query.shape[1]
            if tokens == key.shape[1] >= 64:  # [grid, caption (32 tokens)] or the grid alone; not the caption alone
                mask = joint_mask(grid, window, stride, 0, tokens - 64)
                attn_mask = mask if attn_mask is None else attn_mask & mask
            return dispatch(query, key, value, attn_mask=attn_mask, **kwargs)
        return call

    for module in (transformer_z_image, controlnet_z_image):
        monkeypatch.setattr(module, "dispatch_attention_fn", masked(module.dispatch_attention_fn))
    assert max_diff(sparse, generate()) <= 1e-5
