"""LongCat-Image (LongCatImageTransformer2DModel, Meituan's text-to-image model): FLUX's architecture (double- and
single-stream blocks, joint sequence [text, image], ``img_ids`` for the grid) with its own attention module and
processor and a Qwen2.5-VL text encoder. The image ids start past the text's (modality 1, offset by the text length):
FLUX's probe reads them all the same.

Layout: FLUX's probe (``img_ids``; the pipeline's ``prepare_latents`` returns them). The FLUX VAE and 2x2 packing:
1024x1024 (the pipeline's default) -> 64x64, 2048x2048 -> 128x128. The text is always 512 tokens (padded; the
model attends to the padding, as stock).
"""

from __future__ import annotations

import torch
from diffusers import LongCatImageTransformer2DModel
from diffusers.models.transformers import transformer_longcat_image
from diffusers.models.transformers.transformer_longcat_image import LongCatImageAttnProcessor

from gna_diffusers.route import RoutedProcessorMixin

from . import flux, ovis_image


class GNALongCatImageAttnProcessor(RoutedProcessorMixin, LongCatImageAttnProcessor):
    """LongCatImageAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


PATCH = flux.architecture_patch(
    "longcat-image", LongCatImageTransformer2DModel,
    GNALongCatImageAttnProcessor, LongCatImageAttnProcessor, transformer_longcat_image,
)

TEXT_WIDTH = 16  # the tiny Qwen2.5-VL's hidden size
LATENT_CHANNELS = 16  # the pipeline packs 16 latent channels (fixed in its code), 64 per token


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> LongCatImageTransformer2DModel:
    """A randomly initialised LongCat-Image transformer for CPU tests (2 heads x 16)."""
    torch.manual_seed(seed)
    return LongCatImageTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH,
        axes_dims_rope=[4, 4, 8],
    ).eval()


latent_grid = flux.latent_grid  # the FLUX VAE and 2x2 packing
def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Ovis-Image's call (latents, text, timestep, img_ids, txt_ids) with the ids as LongCat's pipeline builds them:
    text ids (modality 0) counting up, image ids (modality 1) starting past the text."""
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import prepare_pos_ids

    rows, cols = grid
    inputs = ovis_image.transformer_inputs(transformer, grid, text, batch, device, dtype, seed)
    inputs["txt_ids"] = prepare_pos_ids(modality_id=0, type="text", num_token=text).to(device, dtype)
    inputs["img_ids"] = prepare_pos_ids(modality_id=1, type="image", start=(text, text), height=rows,
                                        width=cols).to(device, dtype)
    return inputs


def full_size(model_name: str):
    """No full-size shape: diffusers' class defaults are FLUX-sized (11.9B), not LongCat-Image's 6B, whose config is not
    known offline."""
    raise ValueError(f"{model_name}: LongCat-Image's full-size shape is not known offline (diffusers' class defaults "
                     f"are a FLUX-sized 11.9B, not its 6B); time it with its weights: gna-diffusers compare --model "
                     f"meituan-longcat/LongCat-Image")


DEFAULT_PRESET = "longcat-image-2k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 512  # the pipeline's fixed text length
NAME_PATTERN = r"longcat-?image"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline LongCatImagePipeline with random weights (Qwen-Image's tiny Qwen2.5-VL and byte-level tokenizer, a
    16-channel tiny AutoencoderKL that downsamples 2x): 32x32 pixels -> an 8x8 grid. No prompt rewriting (its
    ``text_processor`` is None: pass ``enable_prompt_rewrite=False``)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, LongCatImagePipeline

    from . import qwen_image

    tokenizer, text_encoder = qwen_image.tiny_text_parts(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0, sample_size=32,
    ).eval()
    return LongCatImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                tokenizer=tokenizer, text_processor=None, transformer=tiny_transformer(seed))


def tiny_call_kwargs() -> dict:
    return dict(enable_prompt_rewrite=False)


TINY_NAME = "tiny-longcat-image"
