"""AuraFlow (AuraFlowTransformer2DModel): fal's AuraFlow v0.1-v0.3 text-to-image (6.8B), 1024x1024 by default and
other sizes inside its learned positional table. Its MMDiT blocks (``joint_transformer_blocks``) attend over
[context, image] jointly; its single DiT blocks (``single_transformer_blocks``) over the same tokens concatenated
into one stream. The context is the model's 8 learned register tokens, then the prompt's 256 UMT5 tokens (padding
zeroed by the pipeline, unmasked: attended, as stock). Both kinds of block use AuraFlowAttnProcessor2_0, which
calls ``F.scaled_dot_product_attention`` itself: GNA's subclass is routed through diffusers' attention_processor
module (as CogVideoX's). Head dimension 256.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major: 1024x1024 -> 128x128 latents -> 64x64
(4,096 image tokens). The positional table is a centred crop of a square grid (v0.3: 96x96, e.g. 1536x768).
"""

from __future__ import annotations

import torch
from diffusers import AuraFlowTransformer2DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import AuraFlowAttnProcessor2_0, FusedAuraFlowAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNAAuraFlowAttnProcessor(RoutedProcessorMixin, AuraFlowAttnProcessor2_0):
    """AuraFlowAttnProcessor2_0 whose attention runs GNA over the image grid; everything else is stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


class GNAFusedAuraFlowAttnProcessor(RoutedProcessorMixin, FusedAuraFlowAttnProcessor2_0):
    """The fused-QKV processor ``fuse_qkv_projections()`` installs, with GNA as above."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="auraflow",
    transformer_class=AuraFlowTransformer2DModel,
    processor_class=GNAAuraFlowAttnProcessor,
    stock_processor_class=AuraFlowAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"joint": "joint_transformer_blocks", "single": "single_transformer_blocks"},
    text_first=True,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    processor_variants={FusedAuraFlowAttnProcessor2_0: GNAFusedAuraFlowAttnProcessor},
)

REGISTER_TOKENS = 8  # learned tokens the transformer puts before the prompt
TEXT_WIDTH = 16  # the tiny UMT5's d_model (Wan's tiny text parts)


def tiny_transformer(seed: int = 0, num_mmdit_layers: int = 1, num_single_dit_layers: int = 1
                     ) -> AuraFlowTransformer2DModel:
    """A randomly initialised AuraFlow transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels,
    positions for up to 16x16 tokens)."""
    from ._tiny import randomize_modulation

    torch.manual_seed(seed)
    transformer = AuraFlowTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_mmdit_layers=num_mmdit_layers,
        num_single_dit_layers=num_single_dit_layers, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH, caption_projection_dim=32, pos_embed_max_size=256,
    ).eval()
    # The default init leaves a 32-wide model's adaLN gates (the blocks' norm1) near 0.01: attention would hardly
    # reach the output.
    return randomize_modulation(transformer, std=0.5, part=".norm1")


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` UMT5 tokens, as the pipeline passes them:
    latents (B, C, H, W), the prompt features and the timestep (the pipeline's, divided by 1000)."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                encoder_hidden_states=randn(batch, text, config.joint_attention_dim),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype), return_dict=False)


# AuraFlow v0.3 (fal/AuraFlow-v0.3): diffusers' class defaults (4 MMDiT + 32 single blocks, 12 heads x 256, UMT5-XL
# text) with a 96x96 positional table (the size its diffusers pull request generates 1536x768 with; the exact table
# of each release is not known offline).
FULL_CONFIG = dict(pos_embed_max_size=96 * 96)

DEFAULT_PRESET = "auraflow-1k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 256  # the pipeline's max_sequence_length (prompts padded to it); the transformer adds its registers
NAME_PATTERN = r"auraflow"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline AuraFlowPipeline with random weights (Wan's tiny UMT5, FLUX's tiny VAE with 4 latent channels):
    32x32 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import AuraFlowPipeline, FlowMatchEulerDiscreteScheduler

    from . import wan

    parts = wan.tiny_parts(seed)
    return AuraFlowPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                            vae=flux.tiny_vae(latent_channels=4), transformer=tiny_transformer(seed),
                            scheduler=FlowMatchEulerDiscreteScheduler())


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=48)


TINY_NAME = "tiny-auraflow"
