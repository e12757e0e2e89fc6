"""FLUX.3 (tiny offline transformer, fp32, CPU): per-mode image blocks whose sequence is the grid alone,
single blocks over [text, image, references], ids scaled by the image RoPE scale, modular pipelines."""

import pytest
import torch
from diffusers.models.transformers.transformer_flux3 import Flux3AttnProcessor
from helpers import assert_round_trip, max_diff
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, apply, enabled
from gna_diffusers.patches import flux, flux3

GRID = (6, 8)


def processors(transformer) -> dict[str, list[type]]:
    return {
        "image": [type(b.attn.processor) for b in transformer.mode_blocks["image"]],
        "image_cond": [type(b.attn.processor) for b in transformer.mode_blocks["image_cond"]],
        "txt": [type(b.attn.processor) for b in transformer.txt_mode_blocks],
        "single": [type(b.attn.processor) for b in transformer.single_transformer_blocks],
    }


@pytest.mark.parametrize("references", [None, (3, 4)], ids=["text-to-image", "with-reference"])
def test_whole_extent_reproduces_stock_and_sparse_windows_route_both_block_types(references, monkeypatch):
    transformer = flux3.tiny_transformer()
    inputs = flux3.transformer_inputs(transformer, GRID, text=7, batch=2, references=references)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert handle.runtime.layout.grid == GRID

    assert_round_trip(transformer, "flux3", inputs, installed, sparse_window=3)
    # Two image mode blocks see the grid alone; two single blocks add the text and the reference as context.
    context = 7 + (0 if references is None else references[0] * references[1])
    assert sorted(spy.contexts) == [(GRID, 0)] * 4 + [(GRID, context)] * 4  # 2 runs


def test_only_the_image_and_single_blocks_get_gna_processors():
    transformer = flux3.tiny_transformer()
    stock = processors(transformer)
    handle = apply(transformer, GNAConfig(family="flux3", window=3))
    patched = processors(transformer)
    assert patched["image"] == patched["single"] == [flux3.GNAFlux3AttnProcessor] * 2
    assert patched["image_cond"] == patched["txt"] == [Flux3AttnProcessor] * 2  # the references' and text's own
    handle.remove()
    assert processors(transformer) == stock


def test_img_ids_are_read_at_any_rope_scale_and_a_non_grid_runs_dense_with_a_warning():
    for scale in (0.5, 1.0, 0.25):
        assert flux.layout_from_ids(flux3.image_ids(*GRID, rope_scale=scale)).grid == GRID
    transformer = flux3.tiny_transformer()
    inputs = flux3.transformer_inputs(transformer, GRID, text=7)
    inputs["img_ids"] = inputs["img_ids"].flip(0)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="flux3", window=3)):
            with pytest.warns(UserWarning,
                              match="every layer runs its stock attention for this call: the first 48 image tokens"):
                out = transformer(**inputs)[0]
    assert torch.equal(out, stock)


def modular_pipeline():
    """FLUX.3's core denoise blocks as a modular pipeline with the tiny transformer, and a call of it on
    prompt embeddings at 128 x 128 pixels (an 8 x 8 token grid; classifier-free guidance: two calls a step)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines import Flux3AutoBlocks

    pipe = Flux3AutoBlocks().sub_blocks["denoise"].init_pipeline()
    pipe.update_components(transformer=flux3.tiny_transformer(), scheduler=FlowMatchEulerDiscreteScheduler())
    gen = torch.Generator().manual_seed(1)
    prompt = dict(prompt_embeds=torch.randn(1, 7, 32, generator=gen),
                  negative_prompt_embeds=torch.randn(1, 7, 32, generator=gen))

    def run(steps: int = 3):
        return pipe(**prompt, height=128, width=128, num_inference_steps=steps, output="latents",
                    generator=torch.Generator().manual_seed(0))

    return pipe, run


def test_modular_pipeline_counts_its_steps(monkeypatch):
    """diffusers ships FLUX.3 as modular pipelines: apply() takes one, reads the grid from the 0.5-scaled
    ids and keeps the first step dense."""
    pipe, run = modular_pipeline()
    stock = run()
    with enabled(pipe, GNAConfig(family="flux3", window=-1)):
        assert max_diff(run(), stock) <= 1e-5
    spy = OperatorSpy(monkeypatch)
    per_call = []
    pipe.transformer.register_forward_hook(lambda *_: per_call.append(len(spy.windows)))
    with enabled(pipe, GNAConfig(family="flux3", window=3, dense_steps=1)) as handle:
        sparse = run()
        assert handle.runtime.layout.grid == (8, 8)
    assert [b - a for a, b in zip([0] + per_call, per_call)] == [0, 0, 4, 4, 4, 4]
    assert max_diff(sparse, stock) > 1e-3


@pytest.mark.parametrize("preset", ["flux3-1k", "flux3-2k"])
def test_shipped_presets_run_on_the_modular_pipeline(preset, monkeypatch):
    pipe, run = modular_pipeline()
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, preset) as handle:
        out = run(steps=4)
        assert handle.runtime.grid == (8, 8)
    assert spy.windows and torch.isfinite(out).all()


def test_regional_compilation_runs_gna_like_eager():
    transformer = flux3.tiny_transformer()
    inputs = flux3.transformer_inputs(transformer, GRID, text=7)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="flux3", window=3)):
            eager = transformer(**inputs)[0]
        transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        with enabled(transformer, GNAConfig(family="flux3", window=3)):
            compiled = transformer(**flux3.transformer_inputs(transformer, GRID, text=7))[0]
    assert max_diff(compiled, eager) <= 1e-6


def test_whole_model_compile_runs_dense_and_says_so_after_the_step():
    """Under torch.compile of the whole transformer the grid cannot be read from img_ids (a host sync): the
    layers run dense, and the notice, raised inside the compiled forward where a warning would vanish, is
    given at the next scheduler call."""
    pipe, run = modular_pipeline()
    stock = run()
    pipe.transformer.compile(backend="eager", fullgraph=True)
    with enabled(pipe, GNAConfig(family="flux3", window=3)):
        message = r"runs its stock attention for this call: under torch.compile .*compile_repeated_blocks"
        with pytest.warns(UserWarning, match=message):
            out = run()
    assert torch.equal(out, stock)


def test_a_modular_pipeline_whose_transformer_is_not_loaded_is_refused_with_the_fix():
    from diffusers.modular_pipelines import Flux3AutoBlocks

    from gna_diffusers import UnsupportedModelError

    pipe = Flux3AutoBlocks().sub_blocks["denoise"].init_pipeline()  # components not loaded yet
    with pytest.raises(UnsupportedModelError, match=r"has no transformer loaded yet; load it first .*load_components"):
        apply(pipe, "flux3-1k")
