"""Allegro (AllegroTransformer3DModel, Rhymes AI's 2.8B text-to-video model). Each block's ``attn1`` is
self-attention over the video tokens alone (RoPE inside the processor); ``attn2``, the text cross-attention,
keeps the stock processor (``AllegroAttnProcessor2_0`` serves both; only ``attn1`` is routed).

The stock processor calls ``F.scaled_dot_product_attention`` itself: GNA routes that call as CogVideoX's
(``calls_sdpa``).

Layout probe: hidden_states (B, C, F, H, W) over the patch size (1, 2, 2) -> (F, H / 2, W / 2), from shapes.
The VAE compresses 4x in time and 8x in space: 1280x720, 88 frames -> a 22x45x80 grid (79,200 video tokens).
"""

from __future__ import annotations

import torch
from diffusers import AllegroTransformer3DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import AllegroAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNAAllegroAttnProcessor(RoutedProcessorMixin, AllegroAttnProcessor2_0):
    """AllegroAttnProcessor2_0 whose self-attention call runs GNA over the video grid; everything else is stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = VideoLatentLayout(lambda transformer: (transformer.config.patch_size_t, transformer.config.patch_size,
                                                transformer.config.patch_size))

PATCH = ModelPatch(
    family="allegro",
    transformer_class=AllegroTransformer3DModel,
    processor_class=GNAAllegroAttnProcessor,
    stock_processor_class=AllegroAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    attention="attn1",
)

TEXT_WIDTH = 16  # the tiny UMT5's d_model (Wan's tiny text parts)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> AllegroTransformer3DModel:
    """A randomly initialised Allegro transformer for CPU tests (2 heads x 24: its 3-D RoPE splits a head in
    three even parts)."""
    torch.manual_seed(seed)
    return AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4, num_layers=num_layers,
        cross_attention_dim=48, caption_channels=TEXT_WIDTH, sample_height=16, sample_width=16, sample_frames=6,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 4x in time (an even frame count, e.g. 88) and 8x in space, patches
    are 1x2x2."""
    if frames is None or frames % 2:
        raise ValueError(f"Allegro takes an even frame count (its default 88), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"Allegro needs height and width divisible by 16, got {height}x{width}")
    return -(-frames // 4), height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) grid with ``text`` prompt tokens, as the pipeline
    passes them: latents, T5 features and their mask, the timestep and the 3-D RoPE (the pipeline's form:
    per-axis frequencies and every token's (t, h, w) position)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    config = transformer.config
    p_t, p = config.patch_size_t, config.patch_size
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    *freqs, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        embed_dim=config.attention_head_dim, crops_coords=((0, 0), (rows, cols)), grid_size=(rows, cols),
        temporal_size=frames, interpolation_scale=(config.interpolation_scale_t, config.interpolation_scale_h,
                                                   config.interpolation_scale_w), device=device)
    positions = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long())
    positions = positions.reshape(-1, 3).transpose(0, 1).reshape(3, 1, -1).contiguous()
    return dict(hidden_states=randn(batch, config.in_channels, frames * p_t, rows * p, cols * p),
                encoder_hidden_states=randn(batch, text, config.caption_channels),
                encoder_attention_mask=torch.ones(batch, text, device=device, dtype=dtype),
                timestep=torch.full((batch,), 500, device=device, dtype=torch.long),
                image_rotary_emb=(tuple(freqs), tuple(positions)), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults are Allegro's 2.8B shape


DEFAULT_PRESET = "allegro-720p"
DEFAULT_STEPS = 100  # AllegroPipeline's default num_inference_steps
TEXT_TOKENS = 512  # the pipeline's max_sequence_length (cross-attention only)
NAME_PATTERN = r"allegro"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline AllegroPipeline with random weights (Wan's tiny text parts, a tiny Allegro VAE: 4x in time, 8x
    in space). Allegro's VAE decodes only in tiles of 24 frames x 128 pixels, overlapping by 8 x 120 / 80: hence
    128x128 pixels x 24 frames (TINY_SIZE, tiny_call_kwargs) -> a 6x8x8 token grid."""
    from diffusers import AllegroPipeline, AutoencoderKLAllegro, DDIMScheduler

    from . import wan

    parts = wan.tiny_parts(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLAllegro(block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=2,
                               sample_size=128).eval()
    vae.enable_tiling()
    return AllegroPipeline(transformer=tiny_transformer(seed), vae=vae, text_encoder=parts["text_encoder"],
                           tokenizer=parts["tokenizer"], scheduler=DDIMScheduler())


TINY_SIZE = {"height": 128, "width": 128, "frames": 24}  # the harness's size for the tiny model: one VAE tile
# Said by compare when a dense output is one constant colour (below one tile the VAE decodes zeros).
DECODE_LIMIT = "Allegro's VAE decodes only whole tiles: 24 frames x 320 pixels, 128 for its tiny model"


def tiny_call_kwargs() -> dict:
    return dict(num_frames=24, max_sequence_length=48, clean_caption=False)


TINY_NAME = "tiny-allegro"
