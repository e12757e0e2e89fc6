"""Bria Fibo 2.0 (tiny offline transformer and pipeline, fp32, CPU): GNA on the noise refiner's [grid, edited
images] attention and the main blocks' [gist, grid, edited images], or [grid, edited images, gist] with a key mask
when a batch pads its gist tokens; the text cross-attention and the Perceiver stay stock."""

import pytest
import torch
from brute_force import joint_mask
from helpers import assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import bria_fibo2

GRID = (4, 6)
TEXT = 64
EDITED = ((4, 4), (2, 6))  # two images to edit, of their own sizes: 28 context tokens
# case -> transformer_inputs arguments: one prompt length (gist first), two whose gist counts differ (gist last,
# padded), and images to edit (context in the image stream)
CASES = {
    "gist-first": dict(),
    "gist-padded": dict(valid_text=(10, 60)),
    "edit": dict(edited=EDITED),
    "edit-gist-padded": dict(valid_text=(10, 60), edited=EDITED),
}


def inputs_of(transformer, case: str) -> dict:
    return bria_fibo2.transformer_inputs(transformer, GRID, text=TEXT, batch=2, **CASES[case])


def context_tokens(case: str) -> int:
    return sum(rows * cols for rows, cols in CASES[case].get("edited", ()))


@pytest.mark.parametrize("case", CASES)
def test_whole_extent_reproduces_stock_and_removal_is_exact(case, monkeypatch):
    transformer = bria_fibo2.tiny_transformer()
    inputs = inputs_of(transformer, case)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert handle.runtime.grid == GRID

    assert_round_trip(transformer, "bria-fibo2", inputs, installed)
    gist = max(bria_fibo2.gist_counts(transformer, inputs.get("encoder_attention_mask"), TEXT, 2))
    context = context_tokens(case)
    # per run: the refiner block (the edited images' tokens), then the 2 main blocks (those and the gist)
    assert spy.contexts == [(GRID, context), (GRID, context + gist), (GRID, context + gist)] * 2


@pytest.mark.parametrize("case", CASES)
def test_sparse_windows_equal_an_independent_masked_attention(case, monkeypatch):
    """Each grid query attends to its window, every edited image's token and its sample's valid gist tokens."""
    window, stride = (2, 4), (1, 2)
    transformer = bria_fibo2.tiny_transformer()
    inputs = inputs_of(transformer, case)
    counts = bria_fibo2.gist_counts(transformer, inputs.get("encoder_attention_mask"), TEXT, 2)
    gist, context = max(counts), context_tokens(case)
    padded = min(counts) < gist
    n = GRID[0] * GRID[1]
    masks = {  # self-attention length -> the GNA mask of that sequence
        n + context: joint_mask(GRID, window, stride, 0, context),  # the refiner
        n + context + gist: (joint_mask(GRID, window, stride, 0, context + gist) if padded
                             else joint_mask(GRID, window, stride, gist, context)),
    }
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="bria-fibo2", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        module = bria_fibo2.PATCH.dispatch_module
        real = module.dispatch_attention_fn

        def masked(query, key, value, attn_mask=None, **kwargs):
            if query.shape[1] == key.shape[1] in masks:
                mask = masks[query.shape[1]]
                attn_mask = mask if attn_mask is None else attn_mask & mask  # the stock key mask of padded gists
            return real(query, key, value, attn_mask=attn_mask, **kwargs)

        monkeypatch.setattr(module, "dispatch_attention_fn", masked)
        expected = transformer(**inputs)[0]
    assert padded == ("padded" in case)
    assert max_diff(routed, expected) <= 1e-5


@pytest.mark.parametrize("case", ["gist-first", "edit-gist-padded"])
def test_blocks_compile_with_fullgraph(case):
    """The stock transformer does not compile whole with fullgraph=True (its RoPE enters a `with device` block, as
    Z-Image's); its blocks do, and GNA runs in them as in eager mode, the gist on either side."""
    transformer = bria_fibo2.tiny_transformer()
    inputs = inputs_of(transformer, case)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="bria-fibo2", window=2)):
            eager = transformer(**inputs)[0]
        transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        with enabled(transformer, GNAConfig(family="bria-fibo2", window=2)):
            compiled = transformer(**inputs)[0]
    assert max_diff(compiled, eager) <= 1e-6


def generate(pipe, prompt="a red cat", steps=3, **kwargs):
    return pipe(prompt=prompt, height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **bria_fibo2.tiny_call_kwargs(), **kwargs).images


@pytest.mark.parametrize("mode", ["text-to-image", "edit", "two-prompts"])
def test_pipeline_runs_gna_after_the_warm_up(mode, monkeypatch):
    """BriaFibo2Pipeline at 32x32 pixels (an 8x8 grid), guidance as a second call: text-to-image, editing an image
    (its 8x8 latent patches are context) and a batch of two prompts of different lengths (the gist goes last, padded).
    Whole windows reproduce it; a sparse preset routes the steps after the dense one."""
    from PIL import Image

    pipe = bria_fibo2.tiny_pipeline()
    kwargs = {"text-to-image": {}, "edit": dict(image=[Image.new("RGB", (32, 48), (200, 30, 30))]),
              "two-prompts": dict(prompt=["a red cat", "a red cat on a blue mat, seen from above, in the sun"])}[mode]
    stock = generate(pipe, **kwargs)
    spy = OperatorSpy(monkeypatch)
    reads = []  # the probe's host syncs: one per prompt mask, not one per step
    read = bria_fibo2._text_lengths.read
    monkeypatch.setattr(bria_fibo2._text_lengths, "read", lambda mask: reads.append(mask) or read(mask))
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="bria-fibo2", window=-1)) as handle:
            assert max_diff(generate(pipe, **kwargs), stock) <= 1e-5
            assert handle.runtime.grid == (8, 8)
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="bria-fibo2", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe, **kwargs)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3
    assert len(spy.contexts) == 2 * 2 * 3  # 2 sparse steps x 2 guidance calls x 3 blocks
    edited = 64 if mode == "edit" else 0
    assert {context for _, context in spy.contexts[::3]} == {edited}  # the refiner: the edited image alone
    # two generations, each passing one prompt mask (its prompts differ in length; the negatives' do not: no mask)
    assert len(reads) == (2 if mode == "two-prompts" else 0)


def test_full_size_and_preset_grid():
    from gna_diffusers.harness.models import on_meta

    config = on_meta(bria_fibo2.PATCH.transformer_class, bria_fibo2.FULL_CONFIG).config
    assert config.dim // config.n_heads == 128
    assert bria_fibo2.latent_grid(1024, 1024) == tuple(load_preset("bria-fibo2-1k").base_grid)
