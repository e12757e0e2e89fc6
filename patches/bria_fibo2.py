"""Bria Fibo 2.0 (BriaFibo2Transformer2DModel): text-to-image from structured JSON captions, and editing of up to
five images. Z-Image's blocks in one stream; every block's ``attention`` uses ``BriaFibo2AttnProcessor``:

- ``noise_refiner`` (block type ``refiner``): [image grid, the edited images' tokens];
- ``layers`` (block type ``main``): the prompt's gist tokens (a Perceiver's summary of the Qwen3-VL features, 256
  to 512 of them by prompt length), then [image grid, the edited images' tokens]. When a batch's prompts get
  different gist counts, the transformer puts the gist last instead, padded, with a (B, S) key mask.
- The injection blocks' ``cross_attention`` (to the text features) and the Perceiver keep the stock processor.

The image stream is [grid, edited images] (each edited image its own size, on RoPE planes of its own): the edited
images and the gist are context keys of every grid query. Layout probe: the grid is hidden_states (B, C, H, W) over
the 2x2 patch, the context the ``context_latents``' patches, from shapes; where the gist lies is read as the
transformer reads it, from the prompt mask's lengths (a host sync the stock forward makes too, and only when the
pipeline passes a mask: a batch of prompts of different lengths).
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import BriaFibo2Transformer2DModel
from diffusers.models.transformers import transformer_bria_fibo2
from diffusers.models.transformers.transformer_bria_fibo2 import BriaFibo2AttnProcessor, compute_gist_count

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux, flux2
from ._forward import ReadOncePerTensor, forward_argument
from ._inputs import seeded_randn


class GNABriaFibo2AttnProcessor(RoutedProcessorMixin, BriaFibo2AttnProcessor):
    """BriaFibo2AttnProcessor whose self-attention call runs GNA over the image grid; everything else is stock."""


# Each sample's prompt length, read from a prompt mask once (the pipeline passes the same mask every step, the prompt's
# and the negative prompt's in turn): the probe's host sync is not repeated in the denoising loop.
_text_lengths = ReadOncePerTensor(lambda text_mask: text_mask.sum(dim=1).tolist(), keep=2)


def gist_counts(transformer, text_mask: torch.Tensor | None, text_tokens: int, batch: int) -> list[int]:
    """Each sample's gist-token count, as the transformer computes it from its prompt's length."""
    config = transformer.config
    lengths = _text_lengths(text_mask) if text_mask is not None else [text_tokens] * batch
    return compute_gist_count(lengths, min_gist=config.min_num_gist_tokens, max_gist=config.max_num_gist_tokens,
                              gist_step=config.gist_step, min_text_len=config.gist_min_text_len,
                              max_text_len=config.gist_max_text_len)


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The image stream [grid, edited images' patches]; the gist comes before it unless the batch pads it."""
    latents = forward_argument(module, args, kwargs, "hidden_states")
    if latents.ndim != 4:
        raise LayoutError(f"hidden_states of shape {tuple(latents.shape)} are not (B, C, H, W) latents")
    patch = module.config.patch_size
    grid = (latents.shape[2] // patch, latents.shape[3] // patch)
    edited = forward_argument(module, args, kwargs, "context_latents") or []
    context = sum((image.shape[2] // patch) * (image.shape[3] // patch) for image in edited)
    text = forward_argument(module, args, kwargs, "encoder_hidden_states")
    text_mask = forward_argument(module, args, kwargs, "encoder_attention_mask")
    counts = gist_counts(module, text_mask, text.shape[2], latents.shape[0]) if text_mask is not None else [0]
    return token_layout(grid, prod(grid) + context, text_first=min(counts) == max(counts))


PATCH = ModelPatch(
    family="bria-fibo2",
    transformer_class=BriaFibo2Transformer2DModel,
    processor_class=GNABriaFibo2AttnProcessor,
    stock_processor_class=BriaFibo2AttnProcessor,
    dispatch_module=transformer_bria_fibo2,
    blocks={"refiner": "noise_refiner", "main": "layers"},
    text_first=True,  # [gist, image stream]; a probe's layout says when the batch moves the gist after it
    layout_probe=layout_probe,
    video=False,
    attention="attention",
)

TEXT_WIDTH = 16  # the tiny Qwen3-VL's hidden size: each text bundle concatenates three of its layers
TEXT_BUNDLE_LAYERS = (1, 2, 3)  # the tiny Qwen3-VL's layers behind each bundle (the real pipeline's: 6 triples)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> BriaFibo2Transformer2DModel:
    """A randomly initialised Fibo 2.0 transformer for CPU tests (2 heads x 16, 4 latent channels, 2x2 patches; the
    last block injects text; 4 to 8 gist tokens for prompts of 8 to 64 tokens, in steps of 2)."""
    from ._tiny import randomize_modulation

    torch.manual_seed(seed)
    transformer = BriaFibo2Transformer2DModel(
        in_channels=4, patch_size=2, dim=32, n_layers=num_layers, n_refiner_layers=1, n_heads=2,
        cap_feat_dim=3 * TEXT_WIDTH, injection_layer_ids=(num_layers - 1,), perceiver_num_layers=1,
        min_num_gist_tokens=4, max_num_gist_tokens=8, gist_step=2, gist_min_text_len=8, gist_max_text_len=64,
        axes_dims=(4, 6, 6), axes_lens=(32, 32, 32),
    ).eval()
    # The cross-attention gate starts at zero (no text through the injection blocks): random, as trained.
    return randomize_modulation(transformer, std=0.5, part="cross_attn_gate")


latent_grid = flux.latent_grid  # the Flux 2 VAE's 8x and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 1024, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, valid_text: tuple[int, ...] | None = None,
                       edited: tuple[tuple[int, int], ...] = ()) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt tokens, as the pipeline passes them:
    latents (B, C, H, W), the text bundles (B, 1 + injections, text, cap_feat_dim), the noise level in [0, 1];
    ``valid_text``: each sample's prompt length (a mask, as for a batch of prompts); ``edited``: the (rows, cols)
    grids of the images to edit."""
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    inputs = dict(hidden_states=randn(batch, config.in_channels, grid[0] * p, grid[1] * p),
                  timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                  encoder_hidden_states=randn(batch, 1 + len(config.injection_layer_ids), text, config.cap_feat_dim),
                  return_dict=False)
    if valid_text is not None:
        inputs["encoder_attention_mask"] = torch.arange(text, device=device) < torch.tensor(valid_text, device=device)[
            :, None]
    if edited:
        inputs["context_latents"] = [randn(batch, config.in_channels, rows * p, cols * p) for rows, cols in edited]
    return inputs


# Fibo 2.0 (briaai/Fibo-2.0-dev): diffusers' class defaults (44 blocks + 2 refiner blocks, 28 heads x 128).
FULL_CONFIG: dict = {}

DEFAULT_PRESET = "bria-fibo2-1k"
DEFAULT_STEPS = 30  # the pipeline's default num_inference_steps
TEXT_TOKENS = 1024  # a structured JSON caption: 384 gist tokens in the main blocks
NAME_PATTERN = r"fibo-?2"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline BriaFibo2Pipeline with random weights (the tiny Qwen3-VL and its processor, FLUX.2's tiny VAE, which
    downsamples 2x): 32x32 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import BriaFibo2Pipeline, FlowMatchEulerDiscreteScheduler

    from ._tiny import qwen3_vl_parts

    processor, text_encoder = qwen3_vl_parts(seed, num_hidden_layers=max(TEXT_BUNDLE_LAYERS))
    torch.manual_seed(seed)
    transformer = tiny_transformer(seed)
    pipe = BriaFibo2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                             vae=flux2.tiny_vae(), text_encoder=text_encoder, processor=processor)
    pipe.text_encoder_out_layers = (TEXT_BUNDLE_LAYERS,) * (1 + len(transformer.config.injection_layer_ids))
    return pipe


def tiny_call_kwargs() -> dict:
    return {}


TINY_NAME = "tiny-bria-fibo2"
