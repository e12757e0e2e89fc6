"""Chroma (ChromaTransformer2DModel): the FLUX architecture with its attention module and processor
(``FluxAttnProcessor``, dispatched from diffusers' FLUX module), joint sequence [text, image], plus a
(B, 1, S, S) mask built as the outer product of the token mask. ChromaPipeline's token mask is float
(1 = real, 0 = T5 padding), so SDPA *adds* it: every real key gets +1 against a padded one. The route
reproduces that bias exactly (``extra_kv_bias``); a boolean mask would hide the padding instead.

Layout: FLUX's probe (``img_ids``).
"""

from __future__ import annotations

import torch
from diffusers import ChromaTransformer2DModel
from diffusers.models.transformers import transformer_flux
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor


from . import flux
from ._inputs import seeded_randn

PATCH = flux.architecture_patch(
    "chroma", ChromaTransformer2DModel,
    flux.GNAFluxAttnProcessor, FluxAttnProcessor, transformer_flux,
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> ChromaTransformer2DModel:
    """A randomly initialised Chroma transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8),
        approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1,
    ).eval()


latent_grid = flux.latent_grid  # the FLUX VAE and 2x2 packing


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1,
                       valid_text: tuple[int, ...] | None = None, device="cpu", dtype=torch.float32,
                       seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` T5 tokens; ``valid_text`` gives each
    sample's unpadded length. The mask covers text + image tokens in ``dtype``, as ChromaPipeline builds it."""
    rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    valid = torch.tensor(valid_text if valid_text is not None else (text,) * batch, device=device)
    mask = torch.cat([torch.arange(text, device=device)[None, :] < valid[:, None],
                      torch.ones(len(valid), rows * cols, dtype=torch.bool, device=device)], dim=1)

    return dict(
        hidden_states=randn(len(valid), rows * cols, transformer.config.in_channels),
        encoder_hidden_states=randn(len(valid), text, transformer.config.joint_attention_dim),
        timestep=torch.full((len(valid),), 0.5, device=device, dtype=dtype),
        img_ids=flux.image_ids(grid, device, dtype),
        txt_ids=torch.zeros(text, 3, device=device, dtype=dtype),
        attention_mask=mask.to(dtype),
        return_dict=False,
    )


# Chroma1-HD (the class defaults): 19 double + 38 single blocks, 24 heads x 128.
FULL_CONFIG = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56), approximator_num_channels=64,
    approximator_hidden_dim=5120, approximator_layers=5,
)
DEFAULT_PRESET = "chroma-1k"  # what `gna-diffusers compare` uses when no preset is given
DEFAULT_STEPS = 35  # ChromaPipeline's default num_inference_steps
TEXT_TOKENS = 512
NAME_PATTERN = r"chroma"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline ChromaPipeline with random weights: 32x32 images -> an 8x8 latent token grid."""
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    tokenizer, text_encoder = flux.tiny_t5(seed)
    return ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux.tiny_vae(), text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=tiny_transformer(seed))


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=48)


TINY_NAME = "tiny-chroma"
