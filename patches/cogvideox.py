"""CogVideoX (CogVideoXTransformer3DModel): CogVideoX 2B / 5B, CogVideoX 1.5 5B and their image-to-video,
video-to-video and CogVideoX-Fun control pipelines; ConsisID (ConsisIDTransformer3DModel, CogVideoX blocks with
face-identity cross-attention between them, which stays stock). Each block's ``attn1`` is joint attention over
[text, video]: the prompt's 226 T5 tokens first, then the video grid. RoPE (5B, 1.5) is applied to the video tokens
inside the processor, so GNA's subclass keeps the stock ``__call__`` whole.

The stock processor calls ``F.scaled_dot_product_attention`` itself (no diffusers dispatch, no backend): while GNA
is installed, the ``F`` of diffusers' attention_processor module is a stand-in whose SDPA hands the calls a GNA
processor makes to its route (``calls_sdpa``, ``routes_sdpa_calls_of``); every other processor's calls pass.

Layout probe: hidden_states (B, F, C, H, W) (frames before channels) over the patch size: (F / patch_size_t,
H / 2, W / 2); 1.0 models have no temporal patch. Image-to-video and Fun control concatenate their conditions
along channels, so the grid is the latents'. 1360x768, 81 frames on CogVideoX 1.5 -> 21 latent frames, padded by
the pipeline to 22 -> an 11x48x85 grid (44,880 video tokens).
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel, ConsisIDTransformer3DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNACogVideoXAttnProcessor(RoutedProcessorMixin, CogVideoXAttnProcessor2_0):
    """CogVideoXAttnProcessor2_0 whose joint attention runs GNA over the video grid; everything else is stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


class GNAFusedCogVideoXAttnProcessor(RoutedProcessorMixin, FusedCogVideoXAttnProcessor2_0):
    """The fused-QKV processor ``fuse_qkv_projections()`` installs, with GNA as above."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


def _patch_sizes(transformer) -> tuple[int, int, int]:
    config = transformer.config
    return config.get("patch_size_t") or 1, config.patch_size, config.patch_size  # ConsisID has no temporal patch


LAYOUT = VideoLatentLayout(_patch_sizes, frames_first=True)

PATCH = ModelPatch(
    family="cogvideox",
    transformer_class=CogVideoXTransformer3DModel,
    processor_class=GNACogVideoXAttnProcessor,
    stock_processor_class=CogVideoXAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "transformer_blocks"},
    text_first=True,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    attention="attn1",
    processor_variants={FusedCogVideoXAttnProcessor2_0: GNAFusedCogVideoXAttnProcessor},
    other_transformer_classes=(ConsisIDTransformer3DModel,),
)

TEXT_WIDTH = 16  # the tiny UMT5's d_model (Wan's tiny text parts)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> CogVideoXTransformer3DModel:
    """A randomly initialised CogVideoX 1.5-style transformer for CPU tests (2 heads x 16, RoPE, 2x2x2 patches)."""
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=TEXT_WIDTH, num_layers=num_layers, sample_width=8, sample_height=8, sample_frames=9,
        patch_size=2, patch_size_t=2, temporal_compression_ratio=2, max_text_seq_length=48,
        use_rotary_positional_embeddings=True,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None, patch_t: int = 1) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 4x in time (frames = 4k + 1) and 8x in space, patches are 2x2 in
    space and ``patch_t`` in time (CogVideoX 1.5: 2, the pipeline padding the latent frames to a multiple)."""
    if frames is None or (frames - 1) % 4:
        raise ValueError(f"CogVideoX needs a frame count of the form 4k + 1 (e.g. 49, 81), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"CogVideoX needs height and width divisible by 16, got {height}x{width}")
    latent_frames = (frames - 1) // 4 + 1
    return -(-latent_frames // patch_t), height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 226, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) token grid with ``text`` prompt tokens, as the
    pipelines pass them: latents (B, F, C, H, W), T5 features, the timestep and (5B, 1.5) the 3-D RoPE."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    config = transformer.config
    p_t, p, _ = _patch_sizes(transformer)
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    inputs = dict(hidden_states=randn(batch, frames * p_t, config.in_channels, rows * p, cols * p),
                  encoder_hidden_states=randn(batch, text, config.text_embed_dim),
                  timestep=torch.full((batch,), 500, device=device, dtype=torch.long), return_dict=False)
    if config.use_rotary_positional_embeddings:
        inputs["image_rotary_emb"] = get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim, crops_coords=((0, 0), (rows, cols)), grid_size=(rows, cols),
            temporal_size=frames, device=device)
    return inputs


# CogVideoX-5b (THUDM/CogVideoX-5b): 42 blocks, 48 heads x 64, RoPE, T5-XXL text (4096). The 2B has diffusers'
# class defaults (30 blocks, 30 heads, learned sin-cos positions); 1.5 adds 2x temporal patches and drops the
# patch embedding's bias.
FULL_CONFIG = dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
FULL_CONFIG_1_5 = dict(FULL_CONFIG, patch_size_t=2, patch_bias=False, sample_height=300, sample_width=300,
                       sample_frames=81)


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: CogVideoX 1.5 5B, the 2B or
    the 5B."""
    name = model_name.lower()
    if "1.5" in name or "1_5" in name:
        return FULL_CONFIG_1_5, lambda height, width, frames=None: latent_grid(height, width, frames, patch_t=2)
    if "2b" in name:
        return {}, latent_grid
    return FULL_CONFIG, latent_grid


DEFAULT_PRESET = "cogvideox-1.5-768p"
DEFAULT_STEPS = 50  # the pipelines' default num_inference_steps
TEXT_TOKENS = 226  # the pipelines' max_sequence_length (T5), in the joint sequence
NAME_PATTERN = r"cogvideo"  # hub names of this family, for --random-weights


def tiny_parts(seed: int = 0) -> dict:
    """Wan's tiny text parts with a tiny CogVideoX VAE (2x in time, 4x in space) and CogVideoX's DDIM scheduler."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler

    from . import wan

    parts = wan.tiny_parts(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=2, sample_height=32, sample_width=32,
    ).eval()
    return dict(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], vae=vae,
                scheduler=CogVideoXDDIMScheduler())


def tiny_pipeline(seed: int = 0):
    """An offline CogVideoXPipeline with random weights: 32x32 pixels x 9 frames -> 5 latent frames, padded to
    6 -> a 3x4x4 token grid."""
    from diffusers import CogVideoXPipeline

    return CogVideoXPipeline(transformer=tiny_transformer(seed), **tiny_parts(seed))


def tiny_call_kwargs() -> dict:
    return dict(num_frames=9, max_sequence_length=48)


TINY_NAME = "tiny-cogvideox"
