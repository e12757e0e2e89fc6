"""CogView3-Plus (CogView3PlusTransformer2DModel): CogView3-Plus-3B text-to-image, up to 2048x2048. Each block's
``attn1`` is joint attention over [text, image]: the prompt's 224 T5 tokens first (padded to that length, no mask:
attended, as stock; an empty negative prompt is all-zero features of the same length), then the image grid. The
blocks use CogVideoX's processor, which calls ``F.scaled_dot_product_attention`` itself: GNA's subclass is
CogVideoX's (see patches/cogvideox.py), routed through diffusers' attention_processor module.

Head dimension 40: the triton kernel pads it to 64 (as GLM-Image's).

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major: 2048x2048 -> 256x256 latents -> 128x128
(16,384 image tokens), the largest grid the positional table (128x128) covers.
"""

from __future__ import annotations

import torch
from diffusers import CogView3PlusTransformer2DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from gna_diffusers.install import ModelPatch

from . import cogview4, flux
from .cogvideox import GNACogVideoXAttnProcessor
from ._latents import ImageLatentLayout

LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="cogview3plus",
    transformer_class=CogView3PlusTransformer2DModel,
    processor_class=GNACogVideoXAttnProcessor,
    stock_processor_class=CogVideoXAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "transformer_blocks"},
    text_first=True,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    attention="attn1",
)

TEXT_WIDTH = 32  # the tiny T5's d_model (FLUX's tiny T5)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> CogView3PlusTransformer2DModel:
    """A randomly initialised CogView3-Plus transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent
    channels, positions up to 32x32 tokens)."""
    torch.manual_seed(seed)
    return CogView3PlusTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, text_embed_dim=TEXT_WIDTH, time_embed_dim=8, condition_dim=4, pos_embed_max_size=32,
        sample_size=16,
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token
transformer_inputs = cogview4.transformer_inputs  # the same call: latents, prompt features, timestep, SDXL sizes

# CogView3-Plus-3B (THUDM/CogView3-Plus-3B): diffusers' class defaults, 30 blocks, 64 heads x 40, T5-XXL (4096).
FULL_CONFIG: dict = {}

DEFAULT_PRESET = "cogview3plus-2k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 224  # the pipeline's max_sequence_length: every prompt is padded to it
NAME_PATTERN = r"cogview-?3"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline CogView3PlusPipeline with random weights (the tiny T5, FLUX's tiny VAE with 4 latent channels,
    CogVideoX's DDIM scheduler): 32x32 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import CogVideoXDDIMScheduler, CogView3PlusPipeline

    tokenizer, text_encoder = flux.tiny_t5(seed)
    return CogView3PlusPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=flux.tiny_vae(latent_channels=4),
                                transformer=tiny_transformer(seed), scheduler=CogVideoXDDIMScheduler())


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=48)


TINY_NAME = "tiny-cogview3plus"
