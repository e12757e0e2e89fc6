"""PRX (PRXTransformer2DModel): Photoroom's open text-to-image models, the latent 1.3B (PRXPipeline: FLUX's or a
deep-compression VAE, T5Gemma prompt) and PRXPixel, the 7B that denoises RGB pixels (PRXPixelPipeline, Qwen3-VL
prompt, 1024x1024 by default). Each block's ``attention`` (``PRXAttnProcessor2_0``, through diffusers' dispatch)
takes its queries from the image tokens alone and its keys from [text, image], the prompt's padding masked by a
(B, 1, 1, S) boolean key mask: the grid's queries come with the text as context keys before their own.

Layout probe: hidden_states (B, C, H, W) over the transformer's patch: latents (FLUX's VAE, 8x, and 2x2 patches:
1024x1024 -> 64x64) or pixels (PRXPixel's patch).
"""

from __future__ import annotations

import torch
from diffusers import PRXTransformer2DModel
from diffusers.models.transformers import transformer_prx
from diffusers.models.transformers.transformer_prx import PRXAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout
from ._tiny import randomize_modulation


class GNAPRXAttnProcessor2_0(RoutedProcessorMixin, PRXAttnProcessor2_0):
    """PRXAttnProcessor2_0 whose attention call runs GNA over the image grid; everything else is stock."""


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="prx",
    transformer_class=PRXTransformer2DModel,
    processor_class=GNAPRXAttnProcessor2_0,
    stock_processor_class=PRXAttnProcessor2_0,
    dispatch_module=transformer_prx,
    blocks={"blocks": "blocks"},
    text_first=True,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    adoptable_processors=(PRXAttnProcessor2_0,),
    attention="attention",
    cached_context_keys=True,  # queries: the image; keys: [text, image]
)

TEXT_WIDTH = 16  # the tiny text encoders' hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2, pixel: bool = False) -> PRXTransformer2DModel:
    """A randomly initialised PRX transformer for CPU tests (2 heads x 16, 4 latent channels in 2x2 patches);
    ``pixel``: PRXPixel's shape (3 RGB channels in 4x4 patches through a bottleneck, resolution embeddings). Its
    blocks' modulation starts at zero, which would gate every attention output away: it gets random values."""
    torch.manual_seed(seed)
    shape = (dict(in_channels=3, patch_size=4, bottleneck_size=8, resolution_embeds=True) if pixel else
             dict(in_channels=4, patch_size=2))
    return randomize_modulation(PRXTransformer2DModel(
        context_in_dim=TEXT_WIDTH, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=num_layers, axes_dim=[8, 8],
        **shape).eval())


latent_grid = flux.latent_grid  # FLUX's VAE (8x) and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, valid_text: tuple[int, ...] | None = None) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt tokens per sample, the first
    ``valid_text[b]`` of sample b valid (all by default), as the pipelines pass them."""
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    mask = torch.ones(batch, text, dtype=torch.bool, device=device)
    for sample, count in enumerate(valid_text or ()):
        mask[sample, count:] = False
    return dict(hidden_states=randn(batch, config.in_channels, grid[0] * p, grid[1] * p),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                encoder_hidden_states=randn(batch, text, config.context_in_dim), attention_mask=mask,
                return_dict=False)


def full_size(model_name: str):
    """(config, latent-grid function) of the latent PRX (diffusers' class defaults, 1.3B); PRXPixel's 7B shape is not
    known offline."""
    if "pixel" in model_name.lower():
        raise ValueError(f"{model_name}: PRXPixel's 7B shape (its pixel patch and bottleneck) is not known offline; "
                         f"time it with its weights: gna-diffusers compare --model Photoroom/prxpixel-t2i")
    return {}, latent_grid


DEFAULT_PRESET = "prx-1k"
DEFAULT_STEPS = 28  # the pipelines' default num_inference_steps
TEXT_TOKENS = 256  # the prompt, padded to the tokenizer's length (padding masked)
NAME_PATTERN = r"(^|[/_-])prx"  # hub names of this family (Photoroom/prx-..., Photoroom/prxpixel-...)


def tiny_pipeline(seed: int = 0):
    """An offline PRXPipeline with random weights (a tiny T5Gemma encoder and Gemma tokenizer, FLUX's tiny VAE):
    32x32 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, PRXPipeline
    from transformers import T5GemmaModuleConfig
    from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

    from .lumina2 import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 64  # the pipeline pads prompts to it (the released tokenizer: 256)
    torch.manual_seed(seed)
    text_encoder = T5GemmaEncoder(T5GemmaModuleConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512, dropout_rate=0.0,
        attention_dropout=0.0)).eval()
    return PRXPipeline(transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(),
                       text_encoder=text_encoder, tokenizer=tokenizer, vae=flux.tiny_vae(latent_channels=4))


def tiny_pixel_pipeline(seed: int = 0):
    """An offline PRXPixelPipeline with random weights (a byte-level tokenizer, a 2-layer 16-wide Qwen3): 32x32
    pixels in 4x4 patches -> an 8x8 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, PRXPixelPipeline
    from transformers import Qwen3Model

    from ._tiny import byte_level_tokenizer, qwen3_config

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(qwen3_config(len(tokenizer), num_hidden_layers=2)).eval()
    return PRXPixelPipeline(transformer=tiny_transformer(seed, pixel=True), scheduler=FlowMatchEulerDiscreteScheduler(),
                            text_encoder=text_encoder, tokenizer=tokenizer, prompt_max_tokens=32)


def tiny_call_kwargs() -> dict:
    # The pipelines bin sizes to their default resolution's aspect ratios, which the tiny sizes are not among.
    return dict(use_resolution_binning=False)


TINY_SIZE = {"height": 32, "width": 32}  # an 8x8 grid (the tiny VAE compresses 2x)
TINY_NAME = "tiny-prx"
