"""Stable Diffusion 3 / 3.5 (SD3Transformer2DModel): SD3 Medium, SD3.5 Large (and Turbo) and SD3.5 Medium;
text-to-image, image-to-image and inpainting (the same grid), ControlNets (SD3ControlNetModel beside the
transformer: SD3's joint blocks over the same tokens, or SD3.5 Large's blocks over the image tokens alone), and
IP-Adapters (their processors, which hold the adapter's weights, get a GNA subclass sharing them, whether loaded
before or after apply). Each joint block's ``attn`` runs over [image, text]: the image grid, then the CLIP (77) and
T5 prompt tokens, unmasked. SD3.5 Medium's first 13 blocks also hold ``attn2``, a self-attention over the image
tokens alone that shares ``attn``'s processor in stock: GNA routes it with the block's pattern.

The stock processor (JointAttnProcessor2_0) calls ``F.scaled_dot_product_attention`` itself: while GNA is installed,
the ``F`` of diffusers' attention_processor module is a stand-in whose SDPA hands a GNA processor's calls to its
route (as CogVideoX's).

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major (the positional table is cropped around its
centre): 1024x1024 -> 64x64, 2048x2048 -> 128x128.
"""

from __future__ import annotations

import torch
from diffusers import SD3ControlNetModel, SD3Transformer2DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import (
    FusedJointAttnProcessor2_0,
    JointAttnProcessor2_0,
    SD3IPAdapterJointAttnProcessor2_0,
)

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNAJointAttnProcessor2_0(RoutedProcessorMixin, JointAttnProcessor2_0):
    """JointAttnProcessor2_0 whose attention runs GNA over the image grid; everything else is stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


class GNAFusedJointAttnProcessor2_0(RoutedProcessorMixin, FusedJointAttnProcessor2_0):
    """The fused-QKV processor ``fuse_qkv_projections()`` installs, with GNA as above."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


class GNASD3IPAdapterJointAttnProcessor2_0(RoutedProcessorMixin, SD3IPAdapterJointAttnProcessor2_0):
    """An IP-Adapter's processor (``load_ip_adapter``, before or after apply), with GNA on its joint attention; it
    shares the adapter's weights, and its attention from the image tokens to the image prompt stays stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="sd3",
    transformer_class=SD3Transformer2DModel,
    processor_class=GNAJointAttnProcessor2_0,
    stock_processor_class=JointAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"joint": "transformer_blocks"},
    text_first=False,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    processor_variants={FusedJointAttnProcessor2_0: GNAFusedJointAttnProcessor2_0,
                        SD3IPAdapterJointAttnProcessor2_0: GNASD3IPAdapterJointAttnProcessor2_0},
    other_transformer_classes=(SD3ControlNetModel,),
    extra_attention=("attn2",),  # SD3.5 Medium's image-only self-attention
)

TEXT_WIDTH = 16  # each tiny CLIP's width: the two side by side are the tiny T5's 32


def tiny_transformer(seed: int = 0, num_layers: int = 2, dual_attention_layers: tuple[int, ...] = ()
                     ) -> SD3Transformer2DModel:
    """A randomly initialised SD3 transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels, QK
    RMS norms as SD3.5's); ``dual_attention_layers``: the blocks with SD3.5 Medium's ``attn2``."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=2 * TEXT_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_WIDTH, pos_embed_max_size=32, qk_norm="rms_norm",
        dual_attention_layers=dual_attention_layers,
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 77 + 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt tokens (CLIP's 77 and T5's), as the
    pipelines pass them: latents (B, C, H, W), the prompt features, the pooled CLIP features and the timestep."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                encoder_hidden_states=randn(batch, text, config.joint_attention_dim),
                pooled_projections=randn(batch, config.pooled_projection_dim),
                timestep=torch.full((batch,), 500.0, device=device, dtype=dtype), return_dict=False)


# stabilityai/stable-diffusion-3-medium-diffusers: 24 blocks, 24 heads x 64. SD3.5 Large: 38 blocks, 38 heads, QK
# norms, a larger positional table. SD3.5 Medium: SD3 Medium's width with QK norms, attn2 in blocks 0-12 and a
# 384x384 positional table.
FULL_CONFIG = dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192)
FULL_CONFIG_3_5_LARGE = dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                             pos_embed_max_size=192, qk_norm="rms_norm")
FULL_CONFIG_3_5_MEDIUM = dict(FULL_CONFIG, pos_embed_max_size=384, qk_norm="rms_norm",
                              dual_attention_layers=tuple(range(13)))


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: SD3.5 Large (and Turbo), SD3.5
    Medium, or SD3 Medium."""
    name = model_name.lower().replace("_", ".")
    if "3.5" in name:
        return (FULL_CONFIG_3_5_MEDIUM if "medium" in name else FULL_CONFIG_3_5_LARGE), latent_grid
    return FULL_CONFIG, latent_grid


DEFAULT_PRESET = "sd3-1k"
DEFAULT_STEPS = 28  # the pipeline's default num_inference_steps
TEXT_TOKENS = 77 + 256  # CLIP's 77 and the pipeline's default max_sequence_length of T5 tokens
NAME_PATTERN = r"stable-diffusion-3|sd-?3"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline StableDiffusion3Pipeline with random weights: two 16-wide CLIPs (with projections), the tiny
    32-wide T5, FLUX's tiny VAE with 4 latent channels: 32x32 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from ._tiny import clip_text_encoder, clip_tokenizer

    tokenizer = clip_tokenizer()
    tokenizer_3, text_encoder_3 = flux.tiny_t5(seed)
    text_encoder, text_encoder_2 = (clip_text_encoder(TEXT_WIDTH, len(tokenizer), seed + i, with_projection=True)
                                    for i in range(2))
    return StableDiffusion3Pipeline(
        transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=flux.tiny_vae(latent_channels=4), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(), text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3)


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=48)


TINY_NAME = "tiny-sd3"
