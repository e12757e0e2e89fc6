"""PixArt (PixArtTransformer2DModel): PixArt-Sigma at 256 to 2048 pixels (its 2K model: 2048x2048) and PixArt-Alpha,
text-to-image. Each block's ``attn1`` is a self-attention over the image tokens alone (the T5 prompt comes in
through ``attn2``, a cross-attention, which stays stock). With 0.6B parameters, attention over the 2K grid's
16,384 tokens is most of a step.

The stock processor (AttnProcessor2_0) calls ``F.scaled_dot_product_attention`` itself: while GNA is installed, the
``F`` of diffusers' attention_processor module is a stand-in whose SDPA hands a GNA processor's calls to its route
(as CogVideoX's); the cross-attention's processor is another instance, not GNA's, so its calls pass.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major: 2048x2048 -> 256x256 latents -> 128x128.
"""

from __future__ import annotations

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import AttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNAAttnProcessor2_0(RoutedProcessorMixin, AttnProcessor2_0):
    """AttnProcessor2_0 whose self-attention runs GNA over the image grid; everything else is stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="pixart",
    transformer_class=PixArtTransformer2DModel,
    processor_class=GNAAttnProcessor2_0,
    stock_processor_class=AttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # no text in the self-attention: the sequence is the grid
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    attention="attn1",
)

TEXT_WIDTH = 32  # the tiny T5's d_model


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> PixArtTransformer2DModel:
    """A randomly initialised PixArt transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels and
    the learned variance's 4 more out)."""
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=num_layers,
        norm_num_groups=4, cross_attention_dim=32, sample_size=16, patch_size=2, caption_channels=TEXT_WIDTH,
        use_additional_conditions=False,
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 300, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` T5 tokens (all valid), as the pipelines pass
    them: latents (B, C, H, W), the prompt features and its mask, the timestep."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    resolution = torch.tensor([[rows * p * 8, cols * p * 8]], device=device, dtype=dtype).repeat(batch, 1)
    conditions = ({"resolution": resolution,
                   "aspect_ratio": torch.full((batch, 1), cols / rows, device=device, dtype=dtype)}
                  if transformer.use_additional_conditions else {"resolution": None, "aspect_ratio": None})
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                encoder_hidden_states=randn(batch, text, config.caption_channels),
                encoder_attention_mask=torch.ones(batch, text, device=device, dtype=dtype),
                timestep=torch.full((batch,), 500.0, device=device, dtype=dtype), added_cond_kwargs=conditions,
                return_dict=False)


# PixArt-Sigma XL-2 at 2K (PixArt-alpha/PixArt-Sigma-XL-2-2K-MS): diffusers' class defaults (28 blocks, 16 heads x
# 72, T5-XXL captions) at a 256x256 latent sample (its positions interpolated 4x, no size conditions).
FULL_CONFIG = dict(sample_size=256, caption_channels=4096)

DEFAULT_PRESET = "pixart-2k"
DEFAULT_STEPS = 20  # the pipelines' default num_inference_steps
TEXT_TOKENS = 300  # PixArt-Sigma's max_sequence_length (cross-attention only: not in the self-attention)
NAME_PATTERN = r"pixart"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline PixArtSigmaPipeline with random weights (the tiny T5, FLUX's tiny VAE with 4 latent channels):
    32x32 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    tokenizer, text_encoder = flux.tiny_t5(seed)
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=flux.tiny_vae(latent_channels=4),
                               transformer=tiny_transformer(seed), scheduler=DPMSolverMultistepScheduler())


def tiny_call_kwargs() -> dict:
    # The pipeline bins sizes by the transformer's sample size, which the tiny one is not among; captions are
    # cleaned only with beautifulsoup4 and ftfy installed.
    return dict(use_resolution_binning=False, max_sequence_length=48, clean_caption=False)


TINY_NAME = "tiny-pixart"
