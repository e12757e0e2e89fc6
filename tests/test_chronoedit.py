"""ChronoEdit (tiny offline models, fp32, CPU): Wan's layout with a processor class of its own; the edit
is a short image-to-video generation whose condition is concatenated along channels."""

import torch
from diffusers.models.transformers.transformer_chronoedit import WanAttnProcessor as ChronoEditAttnProcessor
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import chronoedit

GRID = (3, 4, 6)


def test_whole_extent_reproduces_stock_and_only_attn1_is_routed(monkeypatch):
    transformer = chronoedit.tiny_transformer()
    inputs = chronoedit.transformer_inputs(transformer, GRID, text=7, batch=2)
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="chronoedit", window=-1)):
            assert (transformer(**inputs)[0] - stock).abs().max().item() <= 1e-5
            assert all(isinstance(b.attn1.processor, chronoedit.GNAChronoEditAttnProcessor) for b in transformer.blocks)
            assert all(type(b.attn2.processor) is ChronoEditAttnProcessor for b in transformer.blocks)
        spy.contexts.clear()
        with enabled(transformer, GNAConfig(family="chronoedit", window=2)):
            assert (transformer(**inputs)[0] - stock).abs().max().item() > 1e-3
        assert torch.equal(transformer(**inputs)[0], stock)
    assert spy.contexts == [(GRID, 0)] * 2  # the video tokens alone; text and image keys are cross-attention


def test_the_edit_pipeline_is_reproduced_at_whole_extent():
    pipe = chronoedit.tiny_pipeline()

    def edit():
        return pipe(prompt="make it red", height=32, width=32, num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **chronoedit.tiny_call_kwargs()).frames

    stock = edit()
    with enabled(pipe, GNAConfig(family="chronoedit", window=-1)) as handle:
        assert (edit() - stock).abs().max().item() <= 1e-5
        assert handle.runtime.grid == (3, 4, 4)
