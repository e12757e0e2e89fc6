"""Chroma (tiny offline models, fp32, CPU): FLUX's processor with a float (B, 1, S, S) mask that SDPA adds
as a bias; GNA must add the same bias to the context keys of every grid query."""

import torch
from helpers import max_diff

import gna_diffusers
from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import chroma

GRID = (8, 8)


def generate(pipe, steps=2):
    return pipe(["a red cat", "a dog on a beach at sunset today"], negative_prompt=["", "blurry"], height=32, width=32,
                num_inference_steps=steps, guidance_scale=3.0, output_type="pt",
                generator=torch.Generator().manual_seed(0), **chroma.tiny_call_kwargs()).images


def test_padded_text_bias_reaches_the_grid_queries_exactly(monkeypatch):
    transformer = chroma.tiny_transformer()
    inputs = chroma.transformer_inputs(transformer, (4, 6), text=7, valid_text=(3, 7))
    biases = []
    real = gna_diffusers.route.gna_attention

    def spy(*args, **kwargs):
        biases.append(kwargs["extra_kv_bias"].clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(gna_diffusers.route, "gna_attention", spy)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="chroma", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="chroma", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
    expected = torch.zeros(2, 7)
    expected[0, 3:] = -1.0  # padded T5 tokens: +0 where real keys get +1
    assert torch.equal(biases[0], expected)


def test_pipeline_whole_extent_sparse_and_remove():
    pipe = chroma.tiny_pipeline()
    stock = generate(pipe)
    with enabled(pipe, GNAConfig(family="chroma", window=-1)) as handle:
        assert max_diff(generate(pipe), stock) <= 1e-5
        assert handle.runtime.grid == GRID
    with enabled(pipe, GNAConfig(family="chroma", base_grid=list(GRID), window=[2, 2])):
        assert max_diff(generate(pipe), stock) > 1e-3
    assert torch.equal(generate(pipe), stock)
