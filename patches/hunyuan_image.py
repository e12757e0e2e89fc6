"""HunyuanImage 2.1 (HunyuanImageTransformer2DModel): the 17B text-to-image model (2048x2048 natively), its
distilled variant, and the refiner (HunyuanImageRefinerPipeline: the same transformer class at another shape,
which sharpens a 2K image). HunyuanVideo's layout: dual- and single-stream blocks whose ``attn`` runs over
[image, text], RoPE on the image tokens, and a (B, 1, 1, S) boolean key mask: the Qwen2.5-VL prompt (up to 1000
tokens, right-padded) and, for quoted text, ByT5's glyph tokens (128, reordered by the forward: valid tokens
first). The token refiner (``context_embedder``) is left alone. Context parallelism takes HunyuanVideo's plan.

Layout probe: hidden_states (B, C, H, W) over the patch (1x1): the base model's VAE compresses 32x, so
2048x2048 -> a 64x64 grid; the refiner's latents are a one-frame video (B, C, 1, H, W) from a 16x VAE, so
2048x2048 -> 128x128.
"""

from __future__ import annotations

import torch
from diffusers import HunyuanImageTransformer2DModel
from diffusers.models.transformers import transformer_hunyuanimage
from diffusers.models.transformers.transformer_hunyuanimage import HunyuanImageAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from ._inputs import seeded_randn
from .hunyuan_video import parallel_plan
from ._latents import ImageLatentLayout


class GNAHunyuanImageAttnProcessor(RoutedProcessorMixin, HunyuanImageAttnProcessor):
    """HunyuanImageAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


# The refiner's patch is (1, 1, 1): its last two entries are the grid's.
LAYOUT = ImageLatentLayout(lambda transformer: tuple(transformer.config.patch_size[-2:]))

PATCH = ModelPatch(
    family="hunyuan-image",
    transformer_class=HunyuanImageTransformer2DModel,
    processor_class=GNAHunyuanImageAttnProcessor,
    stock_processor_class=HunyuanImageAttnProcessor,
    dispatch_module=transformer_hunyuanimage,
    blocks={"double": "transformer_blocks", "single": "single_transformer_blocks"},
    text_first=False,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    adoptable_processors=(HunyuanImageAttnProcessor,),
    # diffusers ships no context-parallel plan for it; HunyuanVideo's fits (the same blocks, RoPE and key mask).
    parallel_plan=parallel_plan,
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2,
                     refiner: bool = False) -> HunyuanImageTransformer2DModel:
    """A randomly initialised HunyuanImage transformer for CPU tests (2 heads x 16, 4 latent channels, the tiny
    text encoders' widths); ``refiner``: the refiner's shape (1x1x1 patch, 3-axis RoPE, the condition's latents
    beside the noise's, guidance and MeanFlow embeddings)."""
    torch.manual_seed(seed)
    shape = (dict(in_channels=8, patch_size=(1, 1, 1), rope_axes_dim=(4, 4, 8), guidance_embeds=True,
                  use_meanflow=True) if refiner else
             dict(in_channels=4, patch_size=(1, 1), rope_axes_dim=(8, 8), text_embed_2_dim=8))
    return HunyuanImageTransformer2DModel(
        out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=1, text_embed_dim=16, **shape,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None, compression: int = 32) -> tuple[int, int]:
    """Image-token grid: the VAE compresses ``compression``x (the base model's 32x, the refiner's 16x), the patch
    is one latent."""
    if height % compression or width % compression:
        raise ValueError(f"HunyuanImage needs height and width divisible by {compression}, got {height}x{width}")
    return height // compression, width // compression


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 1000, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, valid_text: tuple[int, ...] | None = None) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` Qwen2.5-VL tokens (the first
    ``valid_text[b]`` of sample b valid, the rest padding; all valid by default), as the pipelines pass them; the
    base model also gets 128 ByT5 tokens, none valid (a prompt without quoted text)."""
    rows, cols = grid
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    refiner = len(config.patch_size) == 3
    latents = randn(batch, config.in_channels, *((1,) if refiner else ()), rows, cols)
    mask = torch.ones(batch, text, dtype=torch.long, device=device)
    for sample, count in enumerate(valid_text or ()):
        mask[sample, count:] = 0
    inputs = dict(hidden_states=latents, timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
                  encoder_hidden_states=randn(batch, text, config.text_embed_dim), encoder_attention_mask=mask,
                  return_dict=False)
    if config.text_embed_2_dim is not None:
        inputs.update(encoder_hidden_states_2=randn(batch, 128, config.text_embed_2_dim),
                      encoder_attention_mask_2=torch.zeros(batch, 128, dtype=torch.long, device=device))
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3250.0, device=device, dtype=dtype)
    if config.use_meanflow:
        inputs["timestep_r"] = torch.full((batch,), 250.0, device=device, dtype=dtype)
    return inputs


# HunyuanImage 2.1 (hunyuanvideo-community/HunyuanImage-2.1-Diffusers): diffusers' class defaults (20 double + 40
# single blocks, 28 heads x 128) with ByT5's 1472-wide glyph tokens; its distilled variant adds the guidance and
# MeanFlow embeddings. The refiner: 26 heads, a 1x1x1 patch over 128 input channels (noise and condition).
FULL_CONFIG = dict(text_embed_2_dim=1472)
FULL_CONFIG_DISTILLED = dict(FULL_CONFIG, guidance_embeds=True, use_meanflow=True)
FULL_CONFIG_REFINER = dict(in_channels=128, num_attention_heads=26, patch_size=(1, 1, 1), rope_axes_dim=(16, 56, 56),
                           guidance_embeds=True, use_meanflow=True)


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: the refiner, the distilled model
    or HunyuanImage 2.1."""
    name = model_name.lower()
    if "refiner" in name:
        return FULL_CONFIG_REFINER, lambda height, width, frames=None: latent_grid(height, width, compression=16)
    return (FULL_CONFIG_DISTILLED if "distill" in name else FULL_CONFIG), latent_grid


DEFAULT_PRESET = "hunyuan-image-2k"
PIPELINE_PRESETS = {"HunyuanImageRefinerPipeline": "hunyuan-image-refiner-2k"}  # compare's default for the refiner
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 1000  # the Qwen2.5-VL prompt, padded to 1000 (transformer_inputs adds the base model's 128 ByT5 tokens)


def text_tokens(model_name: str) -> int:
    """The prompt tokens of the model a hub name refers to: the refiner's pipeline pads its prompt to 256."""
    return 256 if "refiner" in model_name.lower() else TEXT_TOKENS
NAME_PATTERN = r"hunyuan-?image"  # hub names of this family, for --random-weights


def tiny_vae(seed: int = 0):
    """A 4-channel AutoencoderKLHunyuanImage that downsamples 2x (its group norms take 32 channels)."""
    from diffusers import AutoencoderKLHunyuanImage

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanImage(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32), layers_per_block=1,
        spatial_compression_ratio=2, sample_size=32, scaling_factor=1.0).eval()


def tiny_pipeline(seed: int = 0):
    """An offline HunyuanImagePipeline with random weights and classifier-free guidance (the released model's
    AdaptiveProjectedMixGuidance): 32x32 pixels -> a 16x16 grid; prompts padded to 64 Qwen2.5-VL tokens."""
    from diffusers import AdaptiveProjectedMixGuidance, FlowMatchEulerDiscreteScheduler, HunyuanImagePipeline

    from .hunyuan_video15 import tiny_text_parts

    pipe = HunyuanImagePipeline(
        transformer=tiny_transformer(seed), vae=tiny_vae(seed), scheduler=FlowMatchEulerDiscreteScheduler(shift=4.0),
        guider=AdaptiveProjectedMixGuidance(), **tiny_text_parts(seed))
    pipe.tokenizer_max_length = 64  # 1000 in the released pipeline: the tiny model needs no more
    return pipe


def tiny_call_kwargs() -> dict:
    return {}


TINY_NAME = "tiny-hunyuan-image"
# Pipelines whose ``image`` argument defaults to None but that need one (``compare`` then asks for ``--image``).
IMAGE_PIPELINES = ("HunyuanImageRefinerPipeline",)
