"""Motif-Video (tiny offline transformer and pipelines, fp32, CPU): GNA in the dual- and single-stream blocks over
[video, text]; decoder layers' encoder tokens are context; the text cross-attentions stay stock; text-to-video and
image-to-video pipelines (the guider's two calls per step counted as one step)."""

import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_motif_video
from helpers import assert_round_trip, max_diff
from PIL import Image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import motif_video

GRID = (3, 4, 6)
N = 3 * 4 * 6
TEXT = 7


def test_whole_extent_reproduces_stock_on_a_padded_batch_and_only_joint_attention_is_routed(monkeypatch):
    transformer = motif_video.tiny_transformer()
    inputs = motif_video.transformer_inputs(transformer, GRID, text=TEXT, batch=2, valid_text=(4, TEXT))
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        routed = {name for name, p in transformer.attn_processors.items()
                  if type(p) is motif_video.GNAMotifVideoAttnProcessor}
        assert routed == {f"{blocks}.{i}.attn.processor" for blocks in ("transformer_blocks",
                                                                        "single_transformer_blocks")
                          for i in range(2)}  # not the text cross-attentions

    assert_round_trip(transformer, "motif-video", inputs, installed)
    assert spy.contexts == [(GRID, TEXT)] * 8


def test_sparse_windows_equal_an_independent_masked_attention_decoder_layers_included(monkeypatch):
    """Video queries see their window plus every context key: the text, and in the decoder layers the encoder's
    video tokens; context queries see everything. Checked against the stock model masked that way (the decoder
    layers' sequence, 2 x 72 tokens, and the others', 72 + 7, have different lengths)."""
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = motif_video.tiny_transformer(num_single_layers=3, num_decoder_layers=1)
    inputs = motif_video.transformer_inputs(transformer, GRID, text=TEXT)
    with torch.no_grad():
        with enabled(transformer, GNAConfig(family="motif-video", base_grid=list(GRID), window=list(window),
                                            stride=list(stride))):
            routed = transformer(**inputs)[0]
        masked_self_attention(transformer_motif_video, joint_mask(GRID, window, stride, 0, TEXT), monkeypatch)
        masked_self_attention(transformer_motif_video, joint_mask(GRID, window, stride, 0, N), monkeypatch)
        expected = transformer(**inputs)[0]
    assert max_diff(routed, expected) <= 1e-5


def image_to_video_pipeline():
    from diffusers import MotifVideoImage2VideoPipeline
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    components = {k: v for k, v in motif_video.tiny_pipeline().components.items() if k != "feature_extractor"}
    return MotifVideoImage2VideoPipeline(feature_extractor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                                         **components)


@pytest.mark.parametrize("image", [False, True], ids=["text-to-video", "image-to-video"])
def test_pipelines_run_gna_after_the_warm_up(image, monkeypatch):
    """MotifVideoPipeline and MotifVideoImage2VideoPipeline at 32x32 pixels x 9 frames (a 5x4x4 grid), with
    classifier-free guidance through the guider (two transformer calls per step); image-to-video puts 16 SigLIP
    tokens before the text, which are context like it."""
    pipe = image_to_video_pipeline() if image else motif_video.tiny_pipeline()
    kwargs = {"image": Image.new("RGB", (32, 32), (200, 40, 90))} if image else {}

    def generate():
        return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **motif_video.tiny_call_kwargs(), **kwargs).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="motif-video", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="motif-video", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    # 2 sparse steps x 2 guidance calls x 4 layers, each over the 5x4x4 grid with the text (and image) context
    grids = {grid for grid, _ in spy.contexts}
    contexts = [context for _, context in spy.contexts]
    assert grids == {(5, 4, 4)} and len(contexts) == 2 * 2 * 4
    assert min(contexts) > (16 if image else 0)


def test_preset_grid():
    assert motif_video.latent_grid(736, 1280, 121) == tuple(load_preset("motif-video-720p").base_grid)
