"""Mochi 1 (MochiTransformer3DModel, Genmo's 10B asymmetric-stream video model). Each block's ``attn1`` is joint
attention over [video, the sample's valid prompt tokens]: the stock processor drops each sample's padded text
tokens and calls ``F.scaled_dot_product_attention`` once per sample, so every call has its own text length. GNA
routes those calls as CogVideoX's (``calls_sdpa``); the text then is context of every video query, the video's
window its own.

The per-sample loop reads the prompt mask on the host (``torch.nonzero``), in stock Mochi too: a compiled
transformer breaks its graph there.

Layout probe: hidden_states (B, C, F, H, W) over the 2x2 spatial patch: (F, H / 2, W / 2) (no temporal patch).
The VAE compresses 6x in time and 8x in space: 848x480, 163 frames -> a 28x30x53 grid (44,520 video tokens).
"""

from __future__ import annotations

import torch
from diffusers import MochiTransformer3DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import MochiAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNAMochiAttnProcessor(RoutedProcessorMixin, MochiAttnProcessor2_0):
    """MochiAttnProcessor2_0 whose per-sample joint attention runs GNA over the video grid; everything else is
    stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = VideoLatentLayout(lambda transformer: (1, transformer.config.patch_size, transformer.config.patch_size))

PATCH = ModelPatch(
    family="mochi",
    transformer_class=MochiTransformer3DModel,
    processor_class=GNAMochiAttnProcessor,
    stock_processor_class=MochiAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # [video, valid text]
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    attention="attn1",
)

TEXT_WIDTH = 16  # the tiny UMT5's d_model (Wan's tiny text parts)
LATENT_CHANNELS = 12  # the pipeline de-normalises with the VAE's 12 latent means and stds


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> MochiTransformer3DModel:
    """A randomly initialised Mochi transformer for CPU tests (2 heads x 16; the last block, as in Mochi, updates
    only the video stream)."""
    torch.manual_seed(seed)
    return MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers, pooled_projection_dim=16,
        in_channels=LATENT_CHANNELS, text_embed_dim=TEXT_WIDTH, time_embed_dim=4, max_sequence_length=48,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 6x in time (frames = 6k + 1) and 8x in space, patches are 2x2."""
    if frames is None or (frames - 1) % 6:
        raise ValueError(f"Mochi needs a frame count of the form 6k + 1 (e.g. 163), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"Mochi needs height and width divisible by 16, got {height}x{width}")
    return (frames - 1) // 6 + 1, height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) grid with ``text`` prompt tokens, as the pipeline
    passes them: latents, T5 features and their mask (the last sample's final quarter padded, when batched)."""
    config = transformer.config
    p = config.patch_size
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    mask = torch.ones(batch, text, device=device, dtype=torch.long)
    if batch > 1:
        mask[-1, text - text // 4:] = 0
    return dict(hidden_states=randn(batch, config.in_channels, frames, rows * p, cols * p),
                encoder_hidden_states=randn(batch, text, config.text_embed_dim), encoder_attention_mask=mask,
                timestep=torch.full((batch,), 500, device=device, dtype=torch.long), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults are Mochi 1 preview's 10B shape


DEFAULT_PRESET = "mochi-480p"
DEFAULT_STEPS = 64  # MochiPipeline's default num_inference_steps
TEXT_TOKENS = 256  # the pipeline's max_sequence_length; only a prompt's valid tokens reach the attention
NAME_PATTERN = r"mochi"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline MochiPipeline with random weights (Wan's tiny text parts, a tiny Mochi VAE: 6x in time, 8x in
    space): 32x32 pixels x 7 frames -> a 2x2x2 token grid; 64x64 (TINY_SIZE) -> 2x4x4."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline

    from . import wan

    parts = wan.tiny_parts(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLMochi(latent_channels=LATENT_CHANNELS, out_channels=3, encoder_block_out_channels=(32,) * 4,
                             decoder_block_out_channels=(32,) * 4, layers_per_block=(1,) * 5).eval()
    return MochiPipeline(transformer=tiny_transformer(seed), vae=vae, text_encoder=parts["text_encoder"],
                         tokenizer=parts["tokenizer"], scheduler=FlowMatchEulerDiscreteScheduler())


TINY_SIZE = {"height": 64, "width": 64, "frames": 7}  # the harness's size: a 2x4x4 grid (frames of the form 6k + 1)


def tiny_call_kwargs() -> dict:
    return dict(num_frames=7, max_sequence_length=48)


TINY_NAME = "tiny-mochi"
