"""Helios (HeliosTransformer3DModel): Wan 2.1's architecture generating long videos chunk by chunk. Each block's
``attn1`` is self-attention over [long-, mid- and short-term history tokens, the chunk's video tokens]: the
history (earlier frames, patched 4x, 2x and 1x coarser) is context before the grid. ``attn2``, the text
cross-attention, keeps the stock processor (``HeliosAttnProcessor`` serves both; only ``attn1`` is routed).

Layout probe, from shapes (no host sync): the chunk's grid is hidden_states (B, C, F, H, W) over the patch size;
each history term the call passes (its latents and its indices) adds its patch embedding's token count, the mid
and long terms padded up to their kernels as the model pads them. The self-attention sequence is the stream:
history first, the grid last; under diffusers' context-parallel plan (the whole sequence sharded) GNA gathers
it back in that order.

The Wan VAE and 1x2x2 patches: the pipeline's 384x640 chunks of 9 latent frames -> a 9x24x40 grid (8,640 tokens)
after 2,400 history tokens.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import HeliosTransformer3DModel
from diffusers.models.transformers import transformer_helios
from diffusers.models.transformers.transformer_helios import HeliosAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin, TokenLayout, token_layout

from . import wan
from ._forward import forward_argument
from ._inputs import seeded_randn

# History terms in sequence order (each is prepended, the last one first), with the kernel of its patch
# embedding in units of the patch size.
HISTORY_TERMS = (("long", 4), ("mid", 2), ("short", 1))


class GNAHeliosAttnProcessor(RoutedProcessorMixin, HeliosAttnProcessor):
    """HeliosAttnProcessor whose self-attention call runs GNA over the chunk's grid; everything else is stock."""


def _history_tokens(module, args, kwargs) -> int:
    """Tokens the call's history terms add before the grid (a term counts when both its latents and indices are
    given, as the model reads them); the mid and long terms are padded up to their kernels first."""
    patch = module.config.patch_size
    total = 0
    for term, scale in HISTORY_TERMS:
        latents = forward_argument(module, args, kwargs, f"latents_history_{term}")
        if latents is None or forward_argument(module, args, kwargs, f"indices_latents_history_{term}") is None:
            continue
        tokens = 1
        for extent, p in zip(latents.shape[2:], patch):  # plain loops: torch.compile traces this probe
            unit = scale * p
            tokens *= extent // unit if scale == 1 else -(-extent // unit)  # the padded terms round up
        total += tokens
    return total


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The chunk's (frames, rows, cols) grid after the history tokens."""
    grid = wan.LAYOUT.grid(forward_argument(module, args, kwargs, "hidden_states"), module)
    history = _history_tokens(module, args, kwargs)
    return token_layout(grid, history + prod(grid), history)


PATCH = ModelPatch(
    family="helios",
    transformer_class=HeliosTransformer3DModel,
    processor_class=GNAHeliosAttnProcessor,
    stock_processor_class=HeliosAttnProcessor,
    dispatch_module=transformer_helios,
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention sequence: [history, grid]
    layout_probe=layout_probe,
    video=True,
    adoptable_processors=(HeliosAttnProcessor,),
    attention="attn1",
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> HeliosTransformer3DModel:
    """A randomly initialised Helios transformer for CPU tests (2 heads x 16, 4 latent channels, Wan's tiny
    shape), with the multi-term memory patches."""
    torch.manual_seed(seed)
    config = {k: v for k, v in wan.TINY_CONFIG.items() if k != "rope_max_seq_len"}
    return HeliosTransformer3DModel(**config, rope_dim=(4, 6, 6), num_layers=num_layers).eval()


latent_grid = wan.latent_grid  # the Wan VAE (4x in time, 8x in space) and 1x2x2 patches


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1,
                       history: tuple[int, int, int] = (16, 2, 2), device="cpu", dtype=torch.float32,
                       seed: int = 0) -> dict:
    """Wan's inputs of one chunk's call on a (frames, rows, cols) grid, plus ``history`` latent frames (long, mid,
    short terms; 0 leaves a term out) and the frame indices, as the pipeline passes them (its defaults: 16, 2 and
    1 + the first frame)."""
    inputs = wan.transformer_inputs(transformer, grid, text=text, batch=batch, device=device, dtype=dtype, seed=seed)
    _, channels, _, height, width = inputs["hidden_states"].shape
    randn = seeded_randn(seed + 1, device, dtype)
    start = 0
    for (term, _), count in zip(HISTORY_TERMS, history):
        if count:
            inputs[f"latents_history_{term}"] = randn(batch, channels, count, height, width)
            inputs[f"indices_latents_history_{term}"] = torch.arange(start, start + count, device=device)[None]
            start += count
    inputs["indices_hidden_states"] = torch.arange(start, start + grid[0], device=device)[None]
    return inputs


# diffusers' defaults for the class: Wan 2.1 14B's shape (40 blocks of 40 heads x 128, UMT5 text of width 4096) with
# the multi-term memory patches; the released Helios config was not checked offline.
FULL_CONFIG: dict = {}
DEFAULT_PRESET = "helios-384p"
DEFAULT_STEPS = 50  # HeliosPipeline's default num_inference_steps (per chunk)
TEXT_TOKENS = 226  # the pipeline's max_sequence_length (cross-attention only)
NAME_PATTERN = r"helios"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline HeliosPipeline with random weights (Wan's tiny VAE, UMT5 and tokenizer): chunks of 3 latent
    frames at 32x32 pixels -> a 3x4x4 grid after 2 + 1 + 1 history latent frames."""
    from diffusers import HeliosPipeline, HeliosScheduler

    parts = wan.tiny_parts(seed)
    return HeliosPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], vae=parts["vae"],
                          scheduler=HeliosScheduler(stages=1), transformer=tiny_transformer(seed))


def tiny_call_kwargs() -> dict:
    """Two chunks of 3 latent frames (5 frames each with the tiny VAE's 2x in time) after small history terms."""
    return dict(num_frames=10, num_latent_frames_per_chunk=3, history_sizes=[2, 1, 1], max_sequence_length=32)


TINY_NAME = "tiny-helios"
