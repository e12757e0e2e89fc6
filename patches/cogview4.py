"""CogView4 (CogView4Transformer2DModel): CogView4-6B text-to-image, up to 2048x2048, and CogView4-6B-Control
(the control image's latents are channels of the same grid). Each block's ``attn1`` is joint attention over
[text, image]: the GLM-4 prompt first (padded on the left to a multiple of 16 with pad tokens, which the pipeline
passes no mask for: attended, as stock), then the image grid. RoPE is applied to the image tokens inside the
processor, so GNA's subclass keeps the stock ``__call__`` whole.

The stock processor calls ``F.scaled_dot_product_attention`` itself (no diffusers dispatch, no backend): while GNA
is installed, the ``F`` of the transformer's module is a stand-in whose SDPA hands the calls a GNA processor makes
to its route (as CogVideoX's). A bare transformer called with a text ``attention_mask`` gets the stock (B, 1, S, S)
float mask, 1 where query and key are both valid: an additive bias that is uniform over the image keys, which GNA
reproduces exactly.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major: 2048x2048 -> 256x256 latents -> 128x128
(16,384 image tokens).
"""

from __future__ import annotations

import torch
from diffusers import CogView4Transformer2DModel
from diffusers.models.transformers import transformer_cogview4
from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNACogView4AttnProcessor(RoutedProcessorMixin, CogView4AttnProcessor):
    """CogView4AttnProcessor whose joint attention runs GNA over the image grid; everything else is stock."""

    routes_sdpa_calls_of = transformer_cogview4  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="cogview4",
    transformer_class=CogView4Transformer2DModel,
    processor_class=GNACogView4AttnProcessor,
    stock_processor_class=CogView4AttnProcessor,
    dispatch_module=transformer_cogview4,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "transformer_blocks"},
    text_first=True,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    attention="attn1",
)

TEXT_WIDTH = 16  # the tiny GLM's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> CogView4Transformer2DModel:
    """A randomly initialised CogView4 transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels)."""
    torch.manual_seed(seed)
    return CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, text_embed_dim=TEXT_WIDTH, time_embed_dim=8, condition_dim=4, pos_embed_max_size=32,
        sample_size=16, rope_axes_dim=(8, 8),
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 224, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` GLM-4 tokens, as the pipeline passes them:
    latents (B, C, H, W), the prompt features, the timestep and the SDXL-style size conditions."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    size = torch.tensor([[rows * p * 8, cols * p * 8]], device=device, dtype=dtype).repeat(batch, 1)
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                encoder_hidden_states=randn(batch, text, config.text_embed_dim),
                timestep=torch.full((batch,), 500.0, device=device, dtype=dtype), original_size=size,
                target_size=size, crop_coords=torch.zeros_like(size), return_dict=False)


# CogView4-6B (THUDM/CogView4-6B): 28 blocks, 32 heads x 128, GLM-4 text (4096); positions up to 128x128 tokens.
FULL_CONFIG = dict(num_layers=28, attention_head_dim=128, num_attention_heads=32)

DEFAULT_PRESET = "cogview4-2k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 224  # a typical prompt: the pipeline pads to the longest prompt (a multiple of 16), not a fixed length
NAME_PATTERN = r"cogview-?4"  # hub names of this family, for --random-weights


def tiny_parts(seed: int = 0) -> dict:
    """A byte-level tokenizer that starts every prompt with a special token (GLM-4's starts with "[gMASK]<sop>", so
    the pipeline's empty negative prompt is not an empty sequence), a 2-layer 16-wide GLM, a 4-channel AutoencoderKL
    that downsamples 2x, and CogView4's flow-matching scheduler (dynamic shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tokenizers.processors import TemplateProcessing
    from transformers import GlmConfig, GlmModel

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    start = "<|im_start|>"
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{start} $A", special_tokens=[(start, tokenizer.convert_tokens_to_ids(start))])
    torch.manual_seed(seed)
    text_encoder = GlmModel(GlmConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=512)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.25, max_shift=0.75,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=flux.tiny_vae(latent_channels=4),
                scheduler=scheduler)


def tiny_pipeline(seed: int = 0):
    """An offline CogView4Pipeline with random weights: 32x32 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import CogView4Pipeline

    return CogView4Pipeline(transformer=tiny_transformer(seed), **tiny_parts(seed))


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=64)


TINY_NAME = "tiny-cogview4"
