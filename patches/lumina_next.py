"""Lumina-Next (LuminaNextDiT2DModel): Lumina-Next-SFT text-to-image (Next-DiT, Gemma 2B prompts), 1024x1024 by
default and larger with its scaled RoPE. Each block's ``attn1`` is a self-attention over the image tokens alone;
``attn2``, the gated cross-attention to the Gemma prompt, stays stock. Both use LuminaAttnProcessor2_0, which calls
``F.scaled_dot_product_attention`` itself (GNA's subclass is routed through diffusers' attention_processor module, as
CogVideoX's), with the image's all-valid mask expanded over the heads and queries, and, with the pipeline's
``proportional_attn``, a softmax scale grown with the sequence length (log base 4,096 tokens): GNA keeps that scale.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major: 1024x1024 -> 128x128 latents -> 64x64 (4,096
image tokens).
"""

from __future__ import annotations

import torch
from diffusers import LuminaNextDiT2DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import LuminaAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux, lumina2
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNALuminaAttnProcessor(RoutedProcessorMixin, LuminaAttnProcessor2_0):
    """LuminaAttnProcessor2_0 whose self-attention runs GNA over the image grid; everything else is stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="lumina-next",
    transformer_class=LuminaNextDiT2DModel,
    processor_class=GNALuminaAttnProcessor,
    stock_processor_class=LuminaAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "layers"},
    text_first=False,  # no text in the self-attention
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    attention="attn1",
)

TEXT_WIDTH = lumina2.TEXT_WIDTH  # the tiny Gemma 2's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> LuminaNextDiT2DModel:
    """A randomly initialised Lumina-Next transformer for CPU tests (2 query heads and 1 key/value head of 16, 2x2
    patches, 4 latent channels)."""
    torch.manual_seed(seed)
    transformer = LuminaNextDiT2DModel(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=num_layers, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, cross_attention_dim=TEXT_WIDTH,
    ).eval()
    with torch.no_grad():  # left uninitialised (torch.empty) by the constructor; unused by the forward
        transformer.pad_token.zero_()
    return transformer


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 128, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` Gemma tokens (all valid), as the pipeline
    passes them: latents (B, C, H, W), the prompt features and mask, the timestep in [0, 1], the 2-D RoPE and the
    proportional-attention base length."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    rope = get_2d_rotary_pos_embed_lumina(config.hidden_size // config.num_attention_heads, 384, 384)
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                encoder_hidden_states=randn(batch, text, config.cross_attention_dim),
                encoder_mask=torch.ones(batch, text, device=device, dtype=torch.long),
                image_rotary_emb=rope.to(device), cross_attention_kwargs={"base_sequence_length": 64 * 64},
                return_dict=False)


# Lumina-Next-SFT (Alpha-VLLM/Lumina-Next-SFT-diffusers): diffusers' class defaults (32 blocks, 32 heads x 72, Gemma
# 2B prompts) with 8 key/value heads.
FULL_CONFIG = dict(num_kv_heads=8)

DEFAULT_PRESET = "lumina-next-1k"
DEFAULT_STEPS = 30  # the pipeline's default num_inference_steps
TEXT_TOKENS = 128  # the cross-attention's prompt; not in the self-attention GNA routes
NAME_PATTERN = r"lumina-next"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline LuminaPipeline with random weights (Lumina 2's tiny Gemma 2 and tokenizer, starting prompts with
    <bos> as Gemma's does, so the empty negative prompt is one token; FLUX's tiny VAE downsampling 8x as the pipeline
    assumes): 128x128 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LuminaPipeline

    tokenizer = lumina2.tiny_tokenizer(add_bos_token=True)
    return LuminaPipeline(transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(),
                          vae=flux.tiny_vae(latent_channels=4, blocks=4),
                          text_encoder=lumina2.tiny_text_encoder(seed, len(tokenizer)), tokenizer=tokenizer)


def tiny_call_kwargs() -> dict:
    return dict(clean_caption=False)  # cleaning needs beautifulsoup4 and ftfy


TINY_SIZE = {"height": 128, "width": 128}  # the pipeline assumes an 8x VAE: 128 pixels -> an 8x8 grid
TINY_NAME = "tiny-lumina-next"
