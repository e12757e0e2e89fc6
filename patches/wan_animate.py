"""Wan 2.2 Animate (WanAnimateTransformer3DModel, 14B): character animation and replacement on Wan 2.1's
architecture, with its own copy of the processor (``transformer_wan_animate.WanAttnProcessor``). Each
block's ``attn1`` is self-attention over the video tokens alone: routed. ``attn2`` (text and CLIP image
cross-attention) and the face adapter's cross-attention to the motion features keep their stock processors.

Layout probe: hidden_states (B, C, 1 + T, H, W) with patch (1, 2, 2). The first latent frame is the
character's reference image, the other T frames the video segment being generated. The reference frame is
context: every video token attends to all of it (the character's identity) plus its window over the
segment's (T, H / 2, W / 2) grid, and its own tokens attend densely. From shapes (no host sync).
The pipeline generates a long video in segments, each with its own schedule and so its own dense warm-up.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import WanAnimateTransformer3DModel
from diffusers.models.transformers import transformer_wan_animate
from diffusers.models.transformers.transformer_wan_animate import WanAttnProcessor as WanAnimateAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import wan
from ._inputs import seeded_randn
from ._latents import leading_frames_as_context


class GNAWanAnimateAttnProcessor(RoutedProcessorMixin, WanAnimateAttnProcessor):
    """Wan Animate's WanAttnProcessor whose self-attention call runs GNA over the video grid; all else stock."""


def _layout(latents: torch.Tensor, transformer) -> TokenLayout:
    """The segment's grid after the reference frame's tokens, from the (B, C, 1 + T, H, W) latents."""
    grid = wan.LAYOUT.grid(latents, transformer)
    if grid[0] < 2:
        raise LayoutError(f"{grid[0]} latent frames hold the reference frame and no video to generate")
    return leading_frames_as_context(token_layout(grid, prod(grid)), frames=1)


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    return _layout(args[0] if args else kwargs["hidden_states"], module)


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_latents``' result: the noise latents (B, C, 1 + T, H, W) of one segment."""
    if not isinstance(result, torch.Tensor) or result.ndim != 5:
        return None
    try:
        return _layout(result, transformer)
    except LayoutError:
        return None  # the transformer call's own probe reports it


PATCH = ModelPatch(
    family="wan-animate",
    transformer_class=WanAnimateTransformer3DModel,
    processor_class=GNAWanAnimateAttnProcessor,
    stock_processor_class=WanAnimateAttnProcessor,
    dispatch_module=transformer_wan_animate,
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=layout_probe,
    layout_from_prepared=layout_from_prepared,
    video=True,
    adoptable_processors=(WanAnimateAttnProcessor,),
    attention="attn1",
    parallel_plan=wan.parallel_plan,  # diffusers 0.42 has none for it
)

CLIP_WIDTH = 16  # the tiny CLIP vision encoder's hidden size
FACE_SIZE = 16  # the tiny motion encoder's face crops: 16x16 pixels


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> WanAnimateTransformer3DModel:
    """A randomly initialised Wan Animate transformer for CPU tests (2 heads x 16, 4 latent channels, a face
    adapter after every block, 16x16 face crops)."""
    torch.manual_seed(seed)
    config = dict(wan.TINY_CONFIG, in_channels=2 * 4 + 4, latent_channels=4, image_dim=CLIP_WIDTH, added_kv_proj_dim=32,
                  motion_encoder_size=FACE_SIZE, motion_encoder_channel_sizes={"4": 8, "8": 8, "16": 8},
                  motion_style_dim=8, motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=16,
                  face_encoder_num_heads=2, inject_face_latents_blocks=1)
    return WanAnimateTransformer3DModel(**config, num_layers=num_layers).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """The generated segment's grid: Wan's (frames of the segment, e.g. 77 -> 20 latent frames); the
    reference frame the transformer also receives is context."""
    return wan.latent_grid(height, width, frames)


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call generating a (frames, rows, cols) segment: Wan's, on the latents with the
    reference frame first, plus pose latents, 257 CLIP image tokens and one face crop per pixel frame."""
    frames, rows, cols = grid
    inputs = wan.transformer_inputs(transformer, (frames + 1, rows, cols), text=text, batch=batch, device=device,
                                    dtype=dtype, seed=seed)
    config = transformer.config
    p_t, p_h, p_w = config.patch_size
    size = config.motion_encoder_size
    randn = seeded_randn(seed + 1, device, dtype)

    return inputs | dict(
        encoder_hidden_states_image=randn(batch, 257, config.image_dim),
        pose_hidden_states=randn(batch, config.latent_channels, frames * p_t, rows * p_h, cols * p_w),
        face_pixel_values=randn(batch, 3, (frames - 1) * 4 + 1, size, size),
    )


# Wan2.2-Animate-14B: Wan 2.1 I2V 14B's shape plus the motion and face encoders and face adapters.
FULL_CONFIG = dict(
    wan.FULL_CONFIG, in_channels=36, latent_channels=16, image_dim=1280, added_kv_proj_dim=5120,
)
DEFAULT_PRESET = "wan-animate-720p"
DEFAULT_STEPS = 20  # WanAnimatePipeline's default num_inference_steps
TEXT_TOKENS = 512  # UMT5, as Wan
NAME_PATTERN = r"wan.*animate(?!.?2)"  # hub names of this family (not Wan Animate 2's), for --random-weights
# compare runs it with weights: the character image from --image, the pose and face videos from
# --call-arg pose_video=@PATH / face_video=@PATH (and background_video / mask_video with mode=replace).
WEIGHTS_GAP = None


def tiny_pipeline(seed: int = 0):
    """An offline WanAnimatePipeline: Wan's tiny parts with a VAE that compresses 4x in time (the pipeline's
    masks assume it), a tiny CLIP vision encoder: 32x32 pixels, 9-frame segments -> a 2x4x4 segment grid
    after the 4x4 reference frame."""
    from diffusers import AutoencoderKLWan, WanAnimatePipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    parts = wan.tiny_parts(seed)
    torch.manual_seed(seed)
    z_dim = 4
    parts["vae"] = AutoencoderKLWan(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim, scale_factor_temporal=4, scale_factor_spatial=4,
    ).eval()
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=CLIP_WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=CLIP_WIDTH,
    )).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return WanAnimatePipeline(transformer=tiny_transformer(seed), image_encoder=image_encoder,
                              image_processor=image_processor, **parts)


def tiny_call_kwargs() -> dict:
    """Call arguments for the tiny pipeline: the character image, pose and face videos (13 frames: two
    9-frame segments overlapping by one frame) and Wan's short UMT5 sequence."""
    from PIL import Image

    def frame(offset: int, size: int) -> Image.Image:
        pixels = ((torch.arange(size * size * 3) + offset) % 251).reshape(size, size, 3).to(torch.uint8).numpy()
        return Image.fromarray(pixels)

    return dict(image=frame(0, 32), pose_video=[frame(7 * i, 32) for i in range(13)],
                face_video=[frame(11 * i, FACE_SIZE) for i in range(13)], segment_frame_length=9,
                max_sequence_length=48)

