"""OmniGen (tiny offline transformer, fp32, CPU; its pipeline needs torchvision): GNA for the output image's queries
in every block's self-attention, against [condition tokens (input images' patches among them), time token, image];
the condition rows keep the stock mask. The stock processor calls F.scaled_dot_product_attention itself with a
(B, 1, S, S) additive mask."""

import pytest
import torch
from diffusers.utils import is_torchvision_available
from brute_force import joint_mask
from helpers import assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import FAMILY_MODULES, SPEED_ONLY_MODULES, omnigen

GRID = (4, 6)
TEXT = 9


# (each sample's valid prompt tokens, an input image's patch grid in each prompt)
CASES = {"unpadded": (None, None), "left-padded": ((5, 9), None), "input image, left-padded": ((5, 9), (1, 3))}


@pytest.mark.parametrize("case", CASES)
def test_whole_extent_reproduces_stock_and_removal_is_exact(case, monkeypatch):
    valid, image = CASES[case]
    transformer = omnigen.tiny_transformer()
    inputs = omnigen.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=valid, input_image=image)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(block.self_attn.processor) for block in transformer.layers} == {
            omnigen.GNAOmniGenAttnProcessor}

    # a padding token leaking in would differ
    assert_round_trip(transformer, "omnigen", inputs, installed)
    assert spy.contexts == [(GRID, TEXT + 1)] * 4  # the prompt slots and the time token, 2 layers x 2 runs


@pytest.mark.parametrize("image", [None, (1, 3)], ids=["text", "input image"])
def test_sparse_windows_equal_an_independent_masked_attention(image, monkeypatch):
    """The output image's queries: their window, every valid prompt token (an input image's among them) and the time
    token; the prompt's rows: the stock mask (causal, an input image bidirectional within itself), untouched."""
    window, stride = (2, 4), (1, 2)
    transformer = omnigen.tiny_transformer()
    inputs = omnigen.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=(5, 9), input_image=image)
    allowed = joint_mask(GRID, window, stride, TEXT + 1)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="omnigen", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        real = torch.nn.functional.scaled_dot_product_attention

        def masked(query, key, value, attn_mask=None, *args, **kwargs):
            if query.shape[-2] == key.shape[-2] == allowed.shape[0]:
                attn_mask = attn_mask.masked_fill(~allowed, torch.finfo(attn_mask.dtype).min)
            return real(query, key, value, attn_mask, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", masked)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


@pytest.mark.parametrize("edit", [False, True], ids=["text-to-image", "editing"])
def test_pipeline_runs_gna_after_the_warm_up(edit, monkeypatch):
    """OmniGenPipeline on a 4x4 grid, guidance in one batch (text-to-image: prompt and negative prompt; editing:
    also the image-only prompt, whose input image's patches are condition tokens): whole windows reproduce it, a
    sparse preset routes the steps after the dense one."""
    pytest.importorskip("torchvision", reason="diffusers builds OmniGenPipeline's image processor from torchvision")
    from PIL import Image

    pipe = omnigen.tiny_pipeline()
    prompt, images = "a red cat", None
    if edit:  # a 32x48 input image: 2x3 patch tokens in the prompt
        prompt = "<img><|image_1|></img> make it blue"
        images = [Image.fromarray(torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8).numpy())]

    def generate():
        torch.manual_seed(0)  # the pipeline samples the input image's latents without the generator
        return pipe(prompt, input_images=images, height=64, width=64, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    batches = []
    pipe.transformer.register_forward_pre_hook(lambda _, args, kwargs: batches.append(len(kwargs["hidden_states"])),
                                               with_kwargs=True)
    stock = generate()
    assert set(batches) == {3 if edit else 2}
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="omnigen", window=-1)) as handle:
            assert max_diff(generate(), stock) <= 1e-5
            assert handle.runtime.grid == (4, 4)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="omnigen", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3
    assert len(spy.windows) == 2 * 2  # 2 sparse steps x 2 layers, the guidance branches in one batch


def test_layers_compiled_one_by_one_run_gna_like_eager():
    """The stock transformer does not compile whole with fullgraph=True (its RoPE branches on the largest position
    id) and names no repeated blocks: each layer compiled on its own runs GNA as eager does."""
    transformer = omnigen.tiny_transformer()
    inputs = omnigen.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=(5, 9), input_image=(1, 3))
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="omnigen", window=2)):
            eager = transformer(**inputs)[0]
        for layer in transformer.layers:
            layer.compile(fullgraph=True, backend="eager")
        with enabled(transformer, GNAConfig(family="omnigen", window=2)):
            compiled = transformer(**inputs)[0]
    assert max_diff(compiled, eager) <= 1e-6


def test_the_harness_runs_it_end_to_end_only_with_torchvision():
    """With torchvision OmniGen is a family like the others (test_families runs its tiny model through compare);
    without it, compare refuses its real weights before loading them and names the ways in."""
    from gna_diffusers.harness.models import HarnessError, load_pipeline

    if is_torchvision_available():
        assert "omnigen" in FAMILY_MODULES and omnigen.WEIGHTS_GAP is None
        return
    assert "omnigen" in SPEED_ONLY_MODULES
    with pytest.raises(HarnessError,
                       match=r"omnigen needs torchvision .*--random-weights, or call gna_diffusers\.apply"):
        load_pipeline("Shitao/OmniGen-v1-diffusers", torch.device("cpu"), torch.float32)


def test_full_size_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    billions = sum(p.numel() for p in on_meta(omnigen.PATCH.transformer_class, omnigen.FULL_CONFIG).parameters()) / 1e9
    assert billions == pytest.approx(3.8, rel=0.05)  # OmniGen v1: Phi-3 mini's 3.8B
    assert omnigen.latent_grid(1024, 1024) == tuple(load_preset("omnigen-1k").base_grid)
    with pytest.raises(ValueError, match=r"sample 0's 5 prompt tokens cannot hold a \(2, 3\) input image"):
        omnigen.transformer_inputs(omnigen.tiny_transformer(), GRID, text=TEXT, batch=2, valid_text=(5, 9),
                                   input_image=(2, 3))
