"""HunyuanVideo 1.5 (tiny offline models, fp32, CPU): [video, LLM text, ByT5, SigLIP] with a (B, 1, S, S)
query-and-key-valid mask; padded text never reaches a window, the token refiner is untouched."""

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from helpers import max_diff

import gna_diffusers
from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import hunyuan_video15

GRID = (3, 8, 8)  # the tiny pipeline's token grid at 32x32 pixels, 5 frames


def generate(pipe, steps=2):
    # One prompt: diffusers' HunyuanVideo 1.5 VAE decoder cannot broadcast its causal mask over a batch of 2.
    return pipe(["a red cat on a sofa"], height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **hunyuan_video15.tiny_call_kwargs()).frames


def test_padded_batch_whole_extent_equals_stock_and_context_validity_is_right(monkeypatch):
    transformer = hunyuan_video15.tiny_transformer()
    inputs = hunyuan_video15.transformer_inputs(transformer, (2, 4, 6), text=7, valid_text=(3, 7), image_tokens=4)
    masks = []
    real = gna_diffusers.route.gna_attention

    def spy(*args, **kwargs):
        masks.append(kwargs["extra_kv_mask"].clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(gna_diffusers.route, "gna_attention", spy)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="hunyuan-video-1.5", window=-1)):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="hunyuan-video-1.5", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
    # Context = 7 LLM + 8 ByT5 + 4 SigLIP tokens, valid ones first: 8 ByT5 + 3 or 7 LLM (SigLIP masked: t2v).
    assert [mask.sum(1).tolist() for mask in masks[:1]] == [[11, 15]] and masks[0].shape == (2, 19)


def test_pipeline_whole_extent_sparse_and_remove():
    pipe = hunyuan_video15.tiny_pipeline()
    refiner = {n: m.processor for n, m in pipe.transformer.context_embedder.named_modules() if hasattr(m, "processor")}
    stock = generate(pipe)
    with enabled(pipe, GNAConfig(family="hunyuan-video-1.5", window=-1)) as handle:
        assert max_diff(generate(pipe), stock) <= 1e-5
        assert handle.runtime.grid == GRID
        assert all(isinstance(p, AttnProcessor2_0) for p in refiner.values())
    with enabled(pipe, GNAConfig(family="hunyuan-video-1.5", base_grid=list(GRID), window=[2, 4, 4])):
        assert max_diff(generate(pipe), stock) > 1e-3
    assert torch.equal(generate(pipe), stock)


def test_image_to_video_pipeline_runs_gna_with_the_image_tokens_as_context(monkeypatch):
    """HunyuanVideo15ImageToVideoPipeline: SigLIP image tokens join the context (valid, unlike text-to-video's
    zeroed ones) and the first frame rides in the condition channels. Whole windows reproduce the stock
    pipeline; a sparse preset routes every call after the warm-up step on the video grid, with no notice."""
    import warnings

    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from PIL import Image
    from test_apply import OperatorSpy
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    parts = hunyuan_video15.tiny_pipeline().components
    config = dict(parts["transformer"].config)
    torch.manual_seed(0)
    parts["transformer"] = type(parts["transformer"]).from_config({**config, "task_type": "i2v"}).eval()
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=config["image_embed_dim"], intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8)).eval()
    pipe = HunyuanVideo15ImageToVideoPipeline(image_encoder=image_encoder, **parts,
                                              feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}))
    image = Image.fromarray((torch.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).to(torch.uint8).numpy())

    def generate():
        return pipe(image=image, prompt="a red cat", num_frames=5, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="hunyuan-video-1.5", window=-1)):
            assert (generate() - stock).abs().max().item() <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="hunyuan-video-1.5", window=2, dense_steps=1)):
            sparse = generate()
    assert (sparse - stock).abs().max().item() > 1e-4
    assert spy.contexts and {grid for grid, _ in spy.contexts} == {(3, 8, 8)}
