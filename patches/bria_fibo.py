"""Bria FIBO (BriaFiboTransformer2DModel): Bria's 8B text-to-image model prompted with structured (JSON) captions.
FLUX's architecture (double- and single-stream blocks over [text, image], ``img_ids`` for the grid) with its own
attention module and processor in the double blocks and Bria 3's in the single ones, every block reading its own
layer of the SmolLM3 prompt; a batch's prompt padding is
masked by a (B, 1, 1, S) boolean key mask the pipeline passes in ``joint_attention_kwargs``. FIBO Edit puts each
reference image's tokens after the generated image's (ids with time index 1, 2, ...), as FLUX.1 Kontext: context.

Layout: FLUX's probe (``img_ids``; the pipeline's ``prepare_latents`` returns them, so a compiled transformer needs no
host sync). Wan 2.2's VAE (16x) and one latent per token: 1024x1024 (the pipeline's default) -> a 64x64 grid.
"""

from __future__ import annotations

import torch
from diffusers import BriaFiboTransformer2DModel
from diffusers.models.transformers import transformer_bria, transformer_bria_fibo
from diffusers.models.transformers.transformer_bria import BriaAttnProcessor
from diffusers.models.transformers.transformer_bria_fibo import BriaFiboAttnProcessor

from gna_diffusers.route import RoutedProcessorMixin

from . import bria, flux
from ._inputs import seeded_randn


class GNABriaFiboAttnProcessor(RoutedProcessorMixin, BriaFiboAttnProcessor):
    """BriaFiboAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


# The single blocks run Bria 3's processor, which calls transformer_bria's dispatch: Bria's GNA processor, and that
# module routed too.
PATCH = flux.architecture_patch(
    "bria-fibo", BriaFiboTransformer2DModel,
    GNABriaFiboAttnProcessor, BriaFiboAttnProcessor, transformer_bria_fibo,
    block_processors={"single": bria.GNABriaAttnProcessor},
    adoptable_processors=(BriaFiboAttnProcessor, BriaAttnProcessor),
    more_dispatch_modules=(transformer_bria,),
)

TEXT_WIDTH = 16  # the tiny SmolLM3's hidden size (the prompt: its last two layers, 32 wide)


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> BriaFiboTransformer2DModel:
    """A randomly initialised Bria FIBO transformer for CPU tests (2 heads x 16, the tiny Wan 2.2 VAE's 4 latent
    channels, one per token)."""
    torch.manual_seed(seed)
    return BriaFiboTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=2 * TEXT_WIDTH, axes_dims_rope=[4, 4, 8],
        text_encoder_dim=TEXT_WIDTH,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int]:
    """Image-token grid: Wan 2.2's VAE compresses 16x, one latent per token."""
    if height % 16 or width % 16:
        raise ValueError(f"Bria FIBO needs height and width divisible by 16, got {height}x{width}")
    return height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt tokens (all valid), as the pipeline
    passes them: the prompt and one prompt layer per block."""
    rows, cols = grid
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    blocks = config.num_layers + config.num_single_layers
    return dict(hidden_states=randn(batch, rows * cols, config.in_channels),
                encoder_hidden_states=randn(batch, text, config.joint_attention_dim),
                text_encoder_layers=[randn(batch, text, config.text_encoder_dim) for _ in range(blocks)],
                timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
                img_ids=flux.image_ids(grid, device, dtype), txt_ids=torch.zeros(text, 3, device=device, dtype=dtype),
                return_dict=False)


def full_size(model_name: str):
    """No full-size shape: diffusers' class defaults are FLUX-sized (12B), not FIBO's 8B, whose config is not known
    offline."""
    raise ValueError(f"{model_name}: Bria FIBO's full-size shape is not known offline (diffusers' class defaults are a "
                     f"FLUX-sized 12B, not its 8B); time it with its weights: gna-diffusers compare --model "
                     f"briaai/FIBO")


DEFAULT_PRESET = "bria-fibo-1k"
DEFAULT_STEPS = 50  # the model card's num_inference_steps (the pipeline's default is 30)
TEXT_TOKENS = 512  # a structured JSON caption
NAME_PATTERN = r"fibo(?![-_.]?2)"  # hub names of this family (not Fibo 2.0), for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline BriaFiboPipeline with random weights (a byte-level tokenizer, a 2-layer 16-wide SmolLM3 whose
    vocabulary covers the pipeline's empty-prompt token 128000, a Wan 2.2-style VAE compressing 16x as the pipeline
    assumes): 128x128 pixels -> an 8x8 grid."""
    from diffusers import AutoencoderKLWan, BriaFiboPipeline, FlowMatchEulerDiscreteScheduler
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = SmolLM3ForCausalLM(SmolLM3Config(
        vocab_size=128256, hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)).eval()
    vae = AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()
    return BriaFiboPipeline(transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                            text_encoder=text_encoder, tokenizer=tokenizer)


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=128)


TINY_SIZE = {"height": 128, "width": 128}  # the pipeline assumes a 16x VAE: an 8x8 grid
TINY_NAME = "tiny-bria-fibo"
