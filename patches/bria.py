"""Bria 3.1 / 3.2 (BriaTransformer2DModel, Bria's 4B text-to-image model trained on licensed data): FLUX's
architecture (double- and single-stream blocks, joint sequence [text, image], ``img_ids`` for the grid) with its own
attention module and processor (``BriaAttnProcessor``), no pooled prompt and no guidance embedding; the T5 prompt is
zero-padded to 128 tokens, unmasked.

Layout: FLUX's probe (``img_ids``, here (B, N, 3); the pipeline's ``prepare_latents`` returns them, so a compiled
transformer needs no host sync). The FLUX VAE and 2x2 packing: 1024x1024 (the pipeline's default) -> 64x64.
"""

from __future__ import annotations

import torch
from diffusers import BriaTransformer2DModel
from diffusers.models.transformers import transformer_bria
from diffusers.models.transformers.transformer_bria import BriaAttnProcessor

from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn


class GNABriaAttnProcessor(RoutedProcessorMixin, BriaAttnProcessor):
    """BriaAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


PATCH = flux.architecture_patch(
    "bria", BriaTransformer2DModel,
    GNABriaAttnProcessor, BriaAttnProcessor, transformer_bria,
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> BriaTransformer2DModel:
    """A randomly initialised Bria transformer for CPU tests (2 heads x 16; FLUX's tiny VAE's 1 latent channel packed
    2x2, the tiny T5's 32-wide prompt)."""
    torch.manual_seed(seed)
    return BriaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()


latent_grid = flux.latent_grid  # the FLUX VAE and 2x2 packing


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 128, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` T5 tokens, as the pipeline passes them (ids
    per sample: (B, N, 3))."""
    rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    return dict(hidden_states=randn(batch, rows * cols, transformer.config.in_channels),
                encoder_hidden_states=randn(batch, text, transformer.config.joint_attention_dim),
                timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
                img_ids=flux.image_ids(grid, device, dtype).expand(batch, -1, -1),
                txt_ids=torch.zeros(batch, text, 3, device=device, dtype=dtype), return_dict=False)


def full_size(model_name: str):
    """No full-size shape: diffusers' class defaults are FLUX-sized (12B), not Bria 3.2's 4B, whose config is not known
    offline."""
    raise ValueError(f"{model_name}: Bria 3.2's full-size shape is not known offline (diffusers' class defaults are a "
                     f"FLUX-sized 12B, not its 4B); time it with its weights: gna-diffusers compare --model "
                     f"briaai/BRIA-3.2")


DEFAULT_PRESET = "bria-1k"
DEFAULT_STEPS = 30  # the pipeline's default num_inference_steps
TEXT_TOKENS = 128  # the pipeline's max_sequence_length (zero-padded)
NAME_PATTERN = r"bria-?3"  # hub names of this family (not Bria FIBO), for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline BriaPipeline with random weights (the tiny T5, FLUX's tiny VAE): 32x32 pixels -> an 8x8 grid."""
    from diffusers import BriaPipeline, FlowMatchEulerDiscreteScheduler

    tokenizer, text_encoder = flux.tiny_t5(seed)
    return BriaPipeline(transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(),
                        vae=flux.tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer)


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=32)


TINY_NAME = "tiny-bria"
