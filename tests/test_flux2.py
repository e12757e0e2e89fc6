"""FLUX.2 (tiny offline models, fp32, CPU): two processor classes (double and single blocks), 4-axis ids,
reference images as context."""

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor
from helpers import max_diff
from PIL import Image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, apply, enabled
from gna_diffusers.patches import flux2

GRID = (8, 8)  # the tiny pipeline's token grid at 32x32 pixels


def generate(pipe, steps=2, **extra):
    return pipe(prompt=["a red cat", "a dog on a beach"], height=32, width=32, num_inference_steps=steps,
                output_type="pt", generator=torch.Generator().manual_seed(0), **flux2.tiny_call_kwargs(),
                **extra).images


def test_each_block_type_gets_its_own_gna_processor_and_remove_restores(monkeypatch):
    pipe = flux2.tiny_pipeline()
    stock = generate(pipe)
    handle = apply(pipe, GNAConfig(family="flux2", base_grid=list(GRID), window=[2, 2]))
    transformer = pipe.transformer
    assert isinstance(transformer.transformer_blocks[0].attn.processor, flux2.GNAFlux2AttnProcessor)
    assert isinstance(transformer.single_transformer_blocks[0].attn.processor, flux2.GNAFlux2ParallelSelfAttnProcessor)
    spy = OperatorSpy(monkeypatch)
    generate(pipe, steps=1)
    handle.remove()
    assert len(spy.windows) == 8  # two double and two single blocks; conditional and unconditional calls
    assert type(transformer.transformer_blocks[0].attn.processor) is Flux2AttnProcessor
    assert type(transformer.single_transformer_blocks[0].attn.processor) is Flux2ParallelSelfAttnProcessor
    assert torch.equal(generate(pipe), stock)


def test_whole_extent_windows_reproduce_the_stock_pipeline_with_and_without_references():
    pipe = flux2.tiny_pipeline()
    reference = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    for extra in ({}, {"image": [reference]}):
        stock = generate(pipe, **extra)
        with enabled(pipe, GNAConfig(family="flux2", window=-1)) as handle:
            assert max_diff(generate(pipe, **extra), stock) <= 1e-5
            assert handle.runtime.layout.grid == GRID
            assert handle.runtime.layout.stream_tokens == 64 + (256 if extra else 0)  # 64x64 px reference


def test_reference_tokens_are_context_keys(monkeypatch):
    transformer = flux2.tiny_transformer()
    inputs = flux2.transformer_inputs(transformer, (4, 6), text=5, references=((3, 3), (2, 4)))
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad(), enabled(transformer, GNAConfig(family="flux2", window=2)):
        transformer(**inputs)
    assert set(spy.contexts) == {((4, 6), 5 + 9 + 8)}


@pytest.mark.slow
def test_fullgraph_compile_with_reference_images():
    """Under torch.compile the grid comes from prepare_latents; the reference tokens appended after it
    (prepared by another method) are context, with no host sync and no graph break."""
    from torch._dynamo.utils import counters

    pipe = flux2.tiny_pipeline()
    reference = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    eager = generate(pipe, image=[reference])
    with enabled(pipe, GNAConfig(family="flux2", window=-1)):
        torch._dynamo.reset()
        counters.clear()
        pipe.transformer.compile(fullgraph=True, backend="eager")
        compiled = generate(pipe, image=[reference])
    torch._dynamo.reset()
    assert sum(counters["graph_break"].values()) == 0
    assert max_diff(compiled, eager) <= 1e-5


def kv_pipeline():
    """FLUX.2 klein's KV-cache pipeline on the tiny components: its own processors (Flux2KV*)."""
    from diffusers import Flux2KleinKVPipeline

    return Flux2KleinKVPipeline(**flux2.tiny_pipeline().components)


def reference_image():
    return Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))


@pytest.mark.slow
def test_kv_cache_pipeline_keeps_its_processors_semantics(monkeypatch, recwarn):
    """Step 0 runs [text, reference, image] with the references attending among themselves and caches
    their keys; later steps attend to the cache. GNA's KV subclasses keep all of it: whole-extent windows
    equal stock, the target image's queries see text + reference keys at every step, and the references'
    own attention stays dense without a warning. (The plain GNA processors would drop the cache arguments.)"""
    pipe = kv_pipeline()
    kv_classes = {type(pipe.transformer.transformer_blocks[0].attn.processor),
                  type(pipe.transformer.single_transformer_blocks[0].attn.processor)}
    assert kv_classes == set(flux2.KV_VARIANTS)
    extra = {"image": [reference_image()]}
    stock = generate(pipe, steps=3, **extra)
    with enabled(pipe, GNAConfig(family="flux2", window=-1)) as handle:
        assert {type(b.attn.processor) for b in pipe.transformer.transformer_blocks} == {
            flux2.KV_VARIANTS[flux2.Flux2KVAttnProcessor]}
        assert max_diff(generate(pipe, steps=3, **extra), stock) <= 1e-5
        assert handle.runtime.layout.grid == GRID
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, GNAConfig(family="flux2", window=2)):
        sparse = generate(pipe, steps=3, **extra)
    assert max_diff(sparse, stock) > 1e-3
    text = 32  # tiny_call_kwargs' max_sequence_length
    assert spy.contexts == [(GRID, text + 256)] * (4 * 3)  # 4 layers x 3 steps, 256 reference tokens
    assert not [w for w in recwarn if "gna" in str(w.message)]
    assert type(pipe.transformer.transformer_blocks[0].attn.processor) is flux2.Flux2KVAttnProcessor
    assert torch.equal(generate(pipe, steps=3, **extra), stock)  # removed: bit for bit


@pytest.mark.slow
def test_calibration_probes_the_kv_cached_steps_too():
    """Calibration's observer sees every call the route takes, the cached steps' (the target image's queries
    against text + cached reference keys + its own) included, not only the first step's joint call."""
    from gna_diffusers import apply, remove

    pipe = kv_pipeline()
    handle = apply(pipe, GNAConfig(family="flux2", window=-1))
    seen = []
    handle.set_observer(lambda route, query, key, attn_mask: seen.append((handle.runtime.step, query.shape[1],
                                                                         key.shape[1])))
    try:
        generate(pipe, steps=3, image=[reference_image()])
    finally:
        remove(pipe)
    steps = {step for step, _, _ in seen}
    assert steps == {0, 1, 2} and all(keys > queries for step, queries, keys in seen if step > 0)


@pytest.mark.slow
def test_kv_cache_pipeline_compiles_fullgraph():
    """Step 0's grid (after the reference tokens) comes from the call's num_ref_tokens, not a host sync."""
    from torch._dynamo.utils import counters

    pipe = kv_pipeline()
    extra = {"image": [reference_image()]}
    eager = generate(pipe, steps=3, **extra)
    with enabled(pipe, GNAConfig(family="flux2", window=-1)):
        torch._dynamo.reset()
        counters.clear()
        pipe.transformer.compile(fullgraph=True, backend="eager")
        compiled = generate(pipe, steps=3, **extra)
    torch._dynamo.reset()
    assert sum(counters["graph_break"].values()) == 0
    assert max_diff(compiled, eager) <= 1e-5
