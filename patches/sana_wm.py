"""Sana-WM (SanaWMTransformer3DModel): NVIDIA's camera-controlled world model, a hybrid DiT over the video's latent
grid (LTX-2's VAE: 32x in space, 8x in time; 1x1x1 patches). Most blocks attend linearly (a bidirectional gated
delta rule); every ``softmax_every_n``-th block (4 in the release: 5 of 20) runs softmax attention twice over the
same tokens, the main branch (RoPE) and the camera branch (in UCPE ray space, always in bf16), each a
``F.scaled_dot_product_attention`` call from a parameter-free module (``_SoftmaxUCPESinglePathLiteLA.attn`` and
``.cam_attn``), with no attention processor. GNA's subclasses of those two modules take their place
(``processor_slots``) and their SDPA calls, through the module's ``F``, go to the layer's route: every video token
attends to its window. There is no text in the self-attention (the prompt is a cross-attention); the linear blocks
are left as they are. A camera call with padded frames (a -1e9 bias on their keys) runs dense with a warning.

Layout probe: hidden_states (B, C, T, H, W) over the patch: 704x1280 (its canvas), 161 frames (the pipeline's
default): 21x22x40 = 18,480 tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import SanaWMTransformer3DModel
from diffusers.models.transformers import transformer_sana_wm
from diffusers.models.transformers.transformer_sana_wm import (
    SanaWMBidirectionalGDNAttention,
    SanaWMBidirectionalGDNCamAttention,
    SanaWMSoftmaxAttention,
    SanaWMSoftmaxCamAttention,
)

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import lumina2
from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNASanaWMSoftmaxAttention(RoutedProcessorMixin, SanaWMSoftmaxAttention):
    """A softmax block's main-branch attention whose SDPA call runs GNA over the video grid."""

    routes_sdpa_calls_of = transformer_sana_wm  # the stock module calls its F.scaled_dot_product_attention


class GNASanaWMSoftmaxCamAttention(RoutedProcessorMixin, SanaWMSoftmaxCamAttention):
    """A softmax block's camera-branch attention (UCPE ray space) whose SDPA call runs GNA over the video grid."""

    routes_sdpa_calls_of = transformer_sana_wm


LAYOUT = VideoLatentLayout(lambda transformer: tuple(transformer.config.patch_size))

PATCH = ModelPatch(
    family="sana-wm",
    transformer_class=SanaWMTransformer3DModel,
    processor_class=GNASanaWMSoftmaxAttention,
    stock_processor_class=SanaWMSoftmaxAttention,
    dispatch_module=transformer_sana_wm,
    calls_sdpa=True,  # the compute modules call F.scaled_dot_product_attention themselves: that F is routed
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    processor_slots=("attn", "cam_attn"),
    processor_variants={SanaWMSoftmaxCamAttention: GNASanaWMSoftmaxCamAttention},
    dense_processors=(SanaWMBidirectionalGDNAttention, SanaWMBidirectionalGDNCamAttention),
)

CAPTION_WIDTH = lumina2.TEXT_WIDTH  # the tiny pipeline's text encoder is Lumina 2's tiny Gemma 2


def tiny_transformer(seed: int = 0, num_layers: int = 2, in_channels: int = 8, vae_time_stride: int = 8
                     ) -> SanaWMTransformer3DModel:
    """A randomly initialised Sana-WM transformer for CPU tests: 2 heads x 32, a linear block then a softmax block
    (``softmax_every_n=2``), the camera branch on; its Plucker input packs ``vae_time_stride`` frames a latent."""
    torch.manual_seed(seed)
    return SanaWMTransformer3DModel(
        in_channels=in_channels, num_layers=num_layers, hidden_size=64, num_attention_heads=2, softmax_every_n=2,
        linear_head_dim=32, caption_channels=CAPTION_WIDTH, image_size=64, chunk_plucker_post_attn_blocks=num_layers,
        chunk_plucker_channels=6 * vae_time_stride,
    ).eval()


def tiny_pipeline(seed: int = 0):
    """An offline SanaWMPipeline with random weights: a 2-layer Gemma 2 behind a per-character tokenizer, LTX-2's
    tiny video VAE (2x in space and time), so 32x32 pixels x 5 frames give a 3x16x16 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaWMPipeline

    from .ltx2 import tiny_video_vae

    tokenizer = lumina2.tiny_tokenizer(add_bos_token=True)
    return SanaWMPipeline(tokenizer=tokenizer, text_encoder=lumina2.tiny_text_encoder(seed, len(tokenizer)),
                          vae=tiny_video_vae(), transformer=tiny_transformer(seed, in_channels=4, vae_time_stride=2),
                          scheduler=FlowMatchEulerDiscreteScheduler())


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Token grid of ``frames`` frames (8k+1) of height x width: LTX-2's VAE (32x in space, 8x in time after the
    first frame), 1x1x1 patches."""
    if height % 32 or width % 32:
        raise ValueError(f"height and width must be multiples of 32 (Sana-WM's VAE), got {height}x{width}")
    frames = 161 if frames is None else frames
    if (frames - 1) % 8:
        raise ValueError(f"Sana-WM generates 8k+1 frames (its VAE compresses time 8x after the first), got {frames}")
    return (frames - 1) // 8 + 1, height // 32, width // 32


def camera_inputs(grid: tuple[int, int, int], batch: int = 1, device="cpu", dtype=torch.float32) -> dict:
    """``camera_conditions`` and ``chunk_plucker`` for a camera moving forward a little each frame (the pipeline's
    own ``prepare_camera`` on (8k+1) poses and pinhole intrinsics of the canvas)."""
    from diffusers.pipelines.sana_wm.cam_utils import prepare_camera

    frames, rows, cols = grid
    height, width, pixel_frames = rows * 32, cols * 32, (frames - 1) * 8 + 1
    poses = np.tile(np.eye(4, dtype=np.float32), (pixel_frames, 1, 1))
    poses[:, 2, 3] = np.linspace(0.0, 0.5, pixel_frames)
    intrinsics = np.tile(np.array([[width, width, width / 2, height / 2]], dtype=np.float32), (pixel_frames, 1))
    camera = prepare_camera(poses, intrinsics, target_size=(height, width), vae_stride=(8, 32, 32))
    return {"camera_conditions": camera["raymap"].expand(batch, -1, -1).to(device, dtype),
            "chunk_plucker": camera["chunk_plucker"].expand(batch, -1, -1, -1, -1).to(device, dtype)}


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 300, batch: int = 1, camera: bool = True,
                       device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (T, H, W) grid: latents, a per-frame timestep (the first frame clean, as the
    pipeline conditions on it), ``text`` prompt tokens (all valid) and, with ``camera``, the camera tensors."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    frames = grid[0]
    timestep = torch.full((batch, 1, frames), 600.0, device=device)
    timestep[..., 0] = 0.0
    inputs = dict(
        hidden_states=randn(batch, config.in_channels, *(e * p for e, p in zip(grid, config.patch_size))),
        timestep=timestep, encoder_hidden_states=randn(batch, 1, text, config.caption_channels),
        mask=torch.ones(batch, text, device=device), return_dict=False,
    )
    return inputs | (camera_inputs(grid, batch, device, dtype) if camera else {})


# diffusers' class defaults, the released SANA-WM_bidirectional (1.6B: 20 blocks of 2,240 channels, 20 heads).
FULL_CONFIG: dict = {}
DEFAULT_PRESET = "sana-wm-720p"
DEFAULT_STEPS = 60  # the pipeline's default num_inference_steps
TEXT_TOKENS = 300  # the pipeline's max_sequence_length with its complex human instruction
NAME_PATTERN = r"sana[-_]?wm"  # hub names of this family, for --random-weights
WEIGHTS_GAP = None  # compare runs it with weights: --image, and the camera below or --call-arg's


def pipeline_output(result):
    """The generated video (F, H, W, C) of a SanaWMPipeline call: its output holds one sample, unbatched."""
    return result.frames


def default_call_kwargs(kwargs: dict) -> dict:
    """The camera compare gives SanaWMPipeline unless ``--call-arg`` sets one: walking forward for the whole clip
    (``action="w-<frames>"``) through a centred pinhole camera with a 60-degree horizontal field of view, in the
    input image's pixels (``intrinsics=[fx, fy, cx, cy]``)."""
    defaults = {}
    if "c2w" not in kwargs and "action" not in kwargs:
        defaults["action"] = f"w-{kwargs.get('num_frames', 161)}"
    image = kwargs.get("image")
    if "intrinsics" not in kwargs and image is not None:
        width, height = image.size
        focal = width / (2 * math.tan(math.radians(30)))
        defaults["intrinsics"] = [focal, focal, width / 2, height / 2]
    return defaults
