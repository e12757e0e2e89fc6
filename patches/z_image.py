"""Z-Image (ZImageTransformer2DModel): the transformer takes lists (one latent (C, F, H, W) and one caption
per sample) and builds padded sequences itself. Every block's ``attention`` uses ``ZSingleStreamAttnProcessor``.

- ``noise_refiner`` (block type ``refiner``): the image tokens alone, [grid, x pad tokens];
- ``layers`` (block type ``main``): [grid, x pad tokens, caption tokens (padded to a multiple of 32 with
  a pad token), batch padding], with a (B, S) key mask when the samples' lengths differ (classifier-free
  guidance: the captions differ);
- ``context_refiner`` (the caption alone) keeps the stock processor.

ZImageControlNetModel (ZImageControlNetPipeline, Z-Image-Turbo-Fun-Controlnet-Union) runs the transformer's own
noise refiner and context refiner (shared modules), then blocks of its own over the control image's tokens, patched
with the transformer: ``control_noise_refiner`` (block type ``refiner``: the image tokens alone) and
``control_layers`` (block type ``main``: [grid, pad, caption]; where it has no control noise refiner, Union 2.1's
control layers first run over the image tokens alone too). Control layer k takes main layer k's pattern. Its blocks
carry diffusers' copy of the processor, which calls the ControlNet module's own dispatch.

The image's tokens are padded to a multiple of 32 with a learnt pad token that every token attends to:
those are context keys, like the caption. Layout probe: the grid is each latent's (H / p, W / p) (F / pf
in front when F > 1), from shapes (no sync); every sample of a call must share it, else the call runs
dense with a warning. Omni mode (several images per sample, nested lists) runs dense with a warning.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import ZImageControlNetModel, ZImageTransformer2DModel
from diffusers.models.controlnets import controlnet_z_image
from diffusers.models.transformers import transformer_z_image
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF, ZSingleStreamAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._forward import forward_argument
from ._inputs import seeded_randn


class GNAZSingleStreamAttnProcessor(RoutedProcessorMixin, ZSingleStreamAttnProcessor):
    """ZSingleStreamAttnProcessor whose attention call runs GNA over the image grid; everything else stock."""


class GNAControlZSingleStreamAttnProcessor(RoutedProcessorMixin, controlnet_z_image.ZSingleStreamAttnProcessor):
    """The same, for the ControlNet's blocks (diffusers' copy of the processor, in the ControlNet's module)."""


def grid_of(latent: torch.Tensor, patch: int, frame_patch: int) -> tuple[int, ...]:
    """The token grid of one (C, F, H, W) latent: (H / p, W / p), with F / pf in front for F > 1."""
    _, frames, height, width = latent.shape
    grid = (frames // frame_patch, height // patch, width // patch)
    return grid[1:] if grid[0] == 1 else grid


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The grid shared by the call's latents; the image stream is it padded to a multiple of 32 tokens."""
    latents = forward_argument(module, args, kwargs, "x")
    if not isinstance(latents, (list, tuple)) or not latents or not isinstance(latents[0], torch.Tensor):
        raise LayoutError("Z-Image omni mode (several images per sample) is not supported")
    patch = forward_argument(module, args, kwargs, "patch_size") or 2
    frame_patch = forward_argument(module, args, kwargs, "f_patch_size") or 1
    grids = {grid_of(latent, patch, frame_patch) for latent in latents}
    if len(grids) != 1:
        raise LayoutError(f"the samples of this call have different token grids {sorted(grids)}")
    grid = grids.pop()
    tokens = prod(grid)
    return token_layout(grid, tokens + (-tokens) % SEQ_MULTI_OF)


PATCH = ModelPatch(
    family="z-image",
    transformer_class=ZImageTransformer2DModel,
    processor_class=GNAZSingleStreamAttnProcessor,
    stock_processor_class=ZSingleStreamAttnProcessor,
    dispatch_module=transformer_z_image,
    blocks={"refiner": "noise_refiner", "main": "layers"},
    text_first=False,  # [image stream, caption]
    layout_probe=layout_probe,
    video=False,
    adoptable_processors=(ZSingleStreamAttnProcessor, controlnet_z_image.ZSingleStreamAttnProcessor),
    attention="attention",
    processor_variants={controlnet_z_image.ZSingleStreamAttnProcessor: GNAControlZSingleStreamAttnProcessor},
    more_dispatch_modules=(controlnet_z_image,),
    other_transformer_classes=(ZImageControlNetModel,),
    other_class_blocks={ZImageControlNetModel: {"refiner": "control_noise_refiner", "main": "control_layers"}},
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> ZImageTransformer2DModel:
    """A randomly initialised Z-Image transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return ZImageTransformer2DModel(
        in_channels=4, dim=32, n_layers=num_layers, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
        axes_dims=[4, 6, 6], axes_lens=[256, 64, 64],
    ).eval()


latent_grid = flux.latent_grid  # the FLUX VAE (8x) and 2x2 patches: 16 pixels per token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1,
                       valid_text: tuple[int, ...] | None = None, device="cpu", dtype=torch.float32,
                       seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid: one latent and one caption of ``valid_text[i]``
    (default ``text``) tokens per sample."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    lengths = valid_text if valid_text is not None else (text,) * batch

    return dict(
        x=[randn(config.in_channels, 1, 2 * grid[0], 2 * grid[1]) for _ in lengths],
        t=torch.full((len(lengths),), 0.5, device=device, dtype=dtype),
        cap_feats=[randn(length, config.cap_feat_dim) for length in lengths],
        return_dict=False,
    )


# Z-Image (Turbo) 6B: diffusers' ZImageTransformer2DModel defaults (30 main + 2 + 2 refiner blocks,
# 30 heads x 128, Qwen3-4B caption features of width 2560); for timing with random weights.
FULL_CONFIG = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
    n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
    axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512],
)
DEFAULT_PRESET = "z-image-2k"
DEFAULT_STEPS = 9  # Z-Image-Turbo's model card: 9 steps (8 transformer evaluations with guidance off)
TEXT_TOKENS = 128  # prompt tokens kept (the pipeline drops padding); a typical prompt
NAME_PATTERN = r"z-?image"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline ZImagePipeline (Qwen3 text encoder) with random weights: 32x32 images -> an 8x8 grid (the
    tiny VAE downsamples 2x, the transformer patches 2x2)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import Qwen3Model

    from ._tiny import byte_level_tokenizer, qwen3_config

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(qwen3_config(len(tokenizer), num_hidden_layers=2)).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
        norm_num_groups=4, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
    ).eval()
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=tiny_transformer(seed))


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=48)


TINY_NAME = "tiny-z-image"
