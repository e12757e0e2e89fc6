"""LTX-2 (LTX2VideoTransformer3DModel): a video stream and an audio stream in every block. Each block's
``attn1`` is self-attention over the video tokens alone (RoPE inside the processor, no text in the
sequence): routed. The audio self-attention, the text cross-attentions and the audio <-> video
cross-attentions keep their stock processors (one class, ``LTX2AudioVideoAttnProcessor``, serves all six;
LTX-2.3's ``perturbed_attn`` blocks use ``LTX2PerturbedAttnProcessor``, routed the same way).

Layout probe: the call's ``num_frames``, ``height`` and ``width`` (latent units; plain ints, so no host
sync) over the patch sizes give the (frames, rows, cols) grid of the first tokens of ``hidden_states``
(B, N, C). Conditioning tokens the pipelines append after the grid (keyframes, IC-LoRA reference videos)
are context. A video self-attention mask (``video_self_attention_mask``, per query and head) is not a
window: those calls run dense with a warning.

The VAE compresses 8x in time and 32x in space, patch 1x1x1: 1920x1088, 121 frames -> 16x34x60 = 32,640
video tokens; 3840x2176 -> 16x68x120 = 130,560.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.models.transformers import transformer_ltx2
from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor, LTX2PerturbedAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import forward_argument


class GNALTX2AttnProcessor(RoutedProcessorMixin, LTX2AudioVideoAttnProcessor):
    """LTX2AudioVideoAttnProcessor whose video self-attention call runs GNA over the video grid; all else stock."""


class GNALTX2PerturbedAttnProcessor(RoutedProcessorMixin, LTX2PerturbedAttnProcessor):
    """LTX2PerturbedAttnProcessor (LTX-2.3) whose attention call runs GNA; perturbation and gates stock."""


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The (frames, rows, cols) video grid from the call's latent sizes; appended tokens are context."""
    sizes = [forward_argument(module, args, kwargs, name) for name in ("num_frames", "height", "width")]
    if any(size is None for size in sizes):
        raise LayoutError("LTX-2 needs num_frames, height and width in the transformer call to know the video grid")
    config = module.config
    frames, height, width = sizes
    grid = (frames // config.patch_size_t, height // config.patch_size, width // config.patch_size)
    tokens = forward_argument(module, args, kwargs, "hidden_states").shape[1]
    if tokens < prod(grid):
        raise LayoutError(f"{tokens} video tokens are fewer than the {grid} grid of num_frames, height and width")
    return token_layout(grid, tokens)


PATCH = ModelPatch(
    family="ltx2",
    transformer_class=LTX2VideoTransformer3DModel,
    processor_class=GNALTX2AttnProcessor,
    stock_processor_class=LTX2AudioVideoAttnProcessor,
    dispatch_module=transformer_ltx2,
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # no text in the video self-attention sequence
    layout_probe=layout_probe,
    video=True,
    adoptable_processors=(LTX2AudioVideoAttnProcessor, LTX2PerturbedAttnProcessor),
    attention="attn1",
    processor_variants={LTX2PerturbedAttnProcessor: GNALTX2PerturbedAttnProcessor},
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, perturbed_attn: bool = False) -> LTX2VideoTransformer3DModel:
    """A randomly initialised LTX-2 transformer for CPU tests (video 2 heads x 16, audio 2 heads x 8)."""
    torch.manual_seed(seed)
    return LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
        audio_cross_attention_dim=16, num_layers=num_layers, caption_channels=16, rope_double_precision=False,
        perturbed_attn=perturbed_attn,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 8x in time (frames = 8k + 1) and 32x in space, patch 1x1x1."""
    if frames is None or (frames - 1) % 8:
        raise ValueError(f"LTX-2 needs a frame count of the form 8k + 1 (e.g. 121), got {frames}")
    if height % 32 or width % 32:
        raise ValueError(f"LTX-2 needs height and width divisible by 32, got {height}x{width}")
    return (frames - 1) // 8 + 1, height // 32, width // 32


FRAME_RATE = 24.0  # the pipelines' default frame_rate
AUDIO_LATENTS_PER_SECOND = 25  # the audio VAE: 16 kHz, hop 160, 4x temporal compression


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 1024, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) token grid with ``text`` tokens per stream and
    the audio latents of the video's duration (as the pipeline sizes them)."""
    config = transformer.config
    frames, rows, cols = grid
    seconds = ((frames - 1) * 8 + 1) / FRAME_RATE
    audio = max(1, round(seconds * AUDIO_LATENTS_PER_SECOND))
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    return dict(
        hidden_states=randn(batch, frames * rows * cols, config.in_channels),
        audio_hidden_states=randn(batch, audio, config.audio_in_channels),
        encoder_hidden_states=randn(batch, text, config.caption_channels),
        audio_encoder_hidden_states=randn(batch, text, config.caption_channels),
        timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
        encoder_attention_mask=torch.ones(batch, text, device=device, dtype=torch.bool),
        audio_encoder_attention_mask=torch.ones(batch, text, device=device, dtype=torch.bool),
        num_frames=frames * config.patch_size_t, height=rows * config.patch_size, width=cols * config.patch_size,
        audio_num_frames=audio, fps=FRAME_RATE, return_dict=False,
    )


# diffusers' LTX2VideoTransformer3DModel defaults: LTX-2 19B (video 32 heads x 128, audio 32 x 64, 48
# blocks, Gemma 3 text features of width 3840); for timing with random weights.
FULL_CONFIG: dict = {}
DEFAULT_PRESET = "ltx2-1080p"
DEFAULT_STEPS = 30  # LTX2Pipeline's default num_inference_steps
TEXT_TOKENS = 1024  # the pipeline's max_sequence_length (Gemma 3): cross-attention only, not in attn1
NAME_PATTERN = r"ltx-?2"  # hub names of this family, for --random-weights
# Why compare and sweep do not run it with weights (they time it with --random-weights).
WEIGHTS_GAP = "pipelines generate video with audio, which compare does not score yet"
