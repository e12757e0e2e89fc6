"""Ovis-Image (OvisImageTransformer2DModel, AIDC-AI's 7B text-to-image model): FLUX's architecture (double- and
single-stream blocks, joint sequence [text, image], ``img_ids`` for the grid) with its own attention module and
processor (``OvisImageAttnProcessor``) and a Qwen3 text encoder.

Layout: FLUX's probe (``img_ids``; the pipeline's ``prepare_latents`` returns them, so a compiled transformer needs
no host sync). The FLUX VAE and 2x2 packing: 1024x1024 (the pipeline's default) -> 64x64, 2048x2048 -> 128x128.
"""

from __future__ import annotations

import torch
from diffusers import OvisImageTransformer2DModel
from diffusers.models.transformers import transformer_ovis_image
from diffusers.models.transformers.transformer_ovis_image import OvisImageAttnProcessor

from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn


class GNAOvisImageAttnProcessor(RoutedProcessorMixin, OvisImageAttnProcessor):
    """OvisImageAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


PATCH = flux.architecture_patch(
    "ovis-image", OvisImageTransformer2DModel,
    GNAOvisImageAttnProcessor, OvisImageAttnProcessor, transformer_ovis_image,
)

TEXT_WIDTH = 16  # the tiny Qwen3's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> OvisImageTransformer2DModel:
    """A randomly initialised Ovis-Image transformer for CPU tests (2 heads x 16; FLUX's tiny VAE's 1 latent channel
    packed 2x2)."""
    torch.manual_seed(seed)
    return OvisImageTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, axes_dims_rope=(4, 4, 8),
    ).eval()


latent_grid = flux.latent_grid  # the FLUX VAE and 2x2 packing


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` Qwen3 tokens, as the pipeline passes them."""
    rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    return dict(hidden_states=randn(batch, rows * cols, transformer.config.in_channels),
                encoder_hidden_states=randn(batch, text, transformer.config.joint_attention_dim),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                img_ids=flux.image_ids(grid, device, dtype), txt_ids=torch.zeros(text, 3, device=device, dtype=dtype),
                return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults: Ovis-Image-7B (6 double + 27 single blocks, 24 heads x 128)


DEFAULT_PRESET = "ovis-image-2k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 256  # the pipeline's max_sequence_length
NAME_PATTERN = r"ovis-?image"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline OvisImagePipeline with random weights (a byte-level tokenizer, a 2-layer 16-wide Qwen3, FLUX's tiny
    VAE): 32x32 pixels -> an 8x8 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, OvisImagePipeline
    from transformers import Qwen3Model

    from ._tiny import byte_level_tokenizer, qwen3_config

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(qwen3_config(len(tokenizer), num_hidden_layers=2)).eval()
    return OvisImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux.tiny_vae(),
                             text_encoder=text_encoder, tokenizer=tokenizer, transformer=tiny_transformer(seed))


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=64)


TINY_NAME = "tiny-ovis-image"
