"""NVIDIA AnyFlow (AnyFlowTransformer3DModel): Wan 2.1's architecture distilled into a flow map that samples in any
number of steps (the hub's example: 4). Each block's ``attn1`` is bidirectional self-attention over the video tokens
alone; ``attn2``, the text cross-attention, has its own processor class and stays stock. Conditioning video frames
(video continuation) are part of the grid. The frame-autoregressive FAR variant (AnyFlowFARTransformer3DModel, a
causal processor with a KV cache) is not routed.

Layout: the pipeline prepares latents (B, C, F, H, W) and hands the transformer (B, F, C, H, W); either over the
patch (1, 2, 2) gives (F, H / 2, W / 2). The Wan VAE: 832x480, 81 frames -> a 21x30x52 grid.
"""

from __future__ import annotations

import torch
from diffusers import AnyFlowTransformer3DModel
from diffusers.models.transformers import transformer_anyflow
from diffusers.models.transformers.transformer_anyflow import AnyFlowAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import wan
from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNAAnyFlowAttnProcessor(RoutedProcessorMixin, AnyFlowAttnProcessor):
    """AnyFlowAttnProcessor whose self-attention call runs GNA over the video grid; everything else is stock."""


def _patch_sizes(transformer) -> tuple[int, int, int]:
    return tuple(transformer.config.patch_size)


CALL_LAYOUT = VideoLatentLayout(_patch_sizes, frames_first=True)  # the transformer's (B, F, C, H, W) input
PREPARED_LAYOUT = VideoLatentLayout(_patch_sizes)  # prepare_latents' (B, C, F, H, W)

PATCH = ModelPatch(
    family="anyflow",
    transformer_class=AnyFlowTransformer3DModel,
    processor_class=GNAAnyFlowAttnProcessor,
    stock_processor_class=AnyFlowAttnProcessor,
    dispatch_module=transformer_anyflow,
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=CALL_LAYOUT.probe,
    layout_from_prepared=PREPARED_LAYOUT.from_prepared,
    video=True,
    attention="attn1",
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> AnyFlowTransformer3DModel:
    """A randomly initialised AnyFlow transformer for CPU tests (2 heads x 12: its RoPE splits a head's dimensions
    over the three axes), taking the tiny UMT5's 16-wide text."""
    torch.manual_seed(seed)
    return AnyFlowTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=16,
        ffn_dim=32, num_layers=num_layers, rope_max_seq_len=32,
    ).eval()


latent_grid = wan.latent_grid  # the Wan VAE (4x in time, 8x in space) and 1x2x2 patches


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) grid with ``text`` prompt tokens, as the pipeline
    passes them: latents (B, F, C, H, W), the per-frame source and target timesteps, UMT5 features."""
    config = transformer.config
    p_t, p_h, p_w = config.patch_size
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    latent_frames = frames * p_t
    return dict(hidden_states=randn(batch, latent_frames, config.in_channels, rows * p_h, cols * p_w),
                timestep=torch.full((batch, latent_frames), 750.0, device=device),
                r_timestep=torch.full((batch, latent_frames), 500.0, device=device),
                encoder_hidden_states=randn(batch, text, config.text_dim), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults: AnyFlow-Wan2.1-T2V-14B's shape (Wan 2.1 14B)


DEFAULT_PRESET = "anyflow-480p"
DEFAULT_STEPS = 4  # the hub example's num_inference_steps (the pipeline's default is 50)
TEXT_TOKENS = 512  # the pipeline's max_sequence_length (cross-attention only)
NAME_PATTERN = r"anyflow(?!.*far)"  # hub names of this family (not the causal FAR models), for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline AnyFlowPipeline with random weights (Wan's tiny VAE and text parts, the flow-map Euler
    scheduler): 32x32 pixels x 9 frames -> a 5x4x4 token grid."""
    from diffusers import AnyFlowPipeline, FlowMapEulerDiscreteScheduler

    parts = wan.tiny_parts(seed)
    return AnyFlowPipeline(transformer=tiny_transformer(seed), vae=parts["vae"], text_encoder=parts["text_encoder"],
                           tokenizer=parts["tokenizer"], scheduler=FlowMapEulerDiscreteScheduler(shift=5.0))


def tiny_call_kwargs() -> dict:
    return dict(num_frames=9, max_sequence_length=48)


TINY_NAME = "tiny-anyflow"
