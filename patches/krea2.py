"""Krea 2 (Krea2Transformer2DModel): a single-stream text-to-image model. Each main block's ``attn`` is joint
attention over [prompt, image] with a key-padding mask for the prompt; the text-fusion stage's own attention blocks
(over the prompt alone) keep their stock processor.

Layout: the image tokens follow the prompt, row-major over the packed latent grid. The pipeline's
``prepare_position_ids(text_len, grid_height, grid_width, device)`` names the grid (one read of its result, in the
pipeline, once per generation); a bare transformer's grid is read from ``position_ids`` (one host sync per ids
tensor). The VAE (Qwen-Image's) compresses 8x and the pipeline packs 2x2 patches: 2048x2048 -> 128x128.
"""

from __future__ import annotations

import torch
from diffusers import Krea2Transformer2DModel
from diffusers.models.transformers import transformer_krea2
from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._forward import ReadOncePerTensor, forward_argument
from ._inputs import seeded_randn


class GNAKrea2AttnProcessor(RoutedProcessorMixin, Krea2AttnProcessor):
    """Krea2AttnProcessor whose joint attention runs GNA over the image grid; everything else is stock."""


def _grid(position_ids: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of the image grid ending ``position_ids`` ((S, 3), text rows first): its last token holds
    (0, rows - 1, cols - 1). A host sync."""
    rows, cols = (position_ids[-1, 1:] + 1).tolist()
    return int(rows), int(cols)


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_position_ids``' (text + image, 3) ids: the image grid (read once per generation)."""
    if not isinstance(result, torch.Tensor) or result.ndim != 2 or result.shape[1] != 3:
        return None
    rows, cols = _grid(result)
    return token_layout((rows, cols), rows * cols)


_grid_from_ids = ReadOncePerTensor(_grid)  # a bare transformer's grid, read once per position_ids tensor


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The pipeline's prepared grid when the call's image tokens match it, else the grid read from
    ``position_ids`` (once per ids tensor)."""
    image_tokens = forward_argument(module, args, kwargs, "hidden_states").shape[1]
    if prepared is not None and prepared.stream_tokens == image_tokens:
        return prepared
    if torch.compiler.is_compiling():
        raise LayoutError("Krea 2: a compiled bare transformer cannot read its grid from position_ids without a host "
                          "sync; run it in its pipeline, which names the grid")
    rows, cols = _grid_from_ids(forward_argument(module, args, kwargs, "position_ids"))
    if rows * cols != image_tokens:
        raise LayoutError(f"Krea 2: position_ids end at grid ({rows}, {cols}), not the call's {image_tokens} image "
                          f"tokens")
    return token_layout((rows, cols), rows * cols)


PATCH = ModelPatch(
    family="krea2",
    transformer_class=Krea2Transformer2DModel,
    processor_class=GNAKrea2AttnProcessor,
    stock_processor_class=Krea2AttnProcessor,
    dispatch_module=transformer_krea2,
    blocks={"blocks": "transformer_blocks"},
    text_first=True,
    layout_probe=layout_probe,
    layout_from_prepared=layout_from_prepared,
    video=False,
    layout_method="prepare_position_ids",
)

TEXT_WIDTH = 16  # the tiny Qwen3-VL's hidden size
TEXT_LAYERS = (1, 2)  # the tiny pipeline's text_encoder_select_layers (Krea 2 taps 12 of Qwen3-VL-4B's)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> Krea2Transformer2DModel:
    """A randomly initialised Krea 2 transformer for CPU tests (4 query heads x 16 sharing 2 key/value heads,
    4-channel latents packed 2x2, two stacked 16-wide text layers fused by one block each)."""
    torch.manual_seed(seed)
    return Krea2Transformer2DModel(
        in_channels=16, num_layers=num_layers, attention_head_dim=16, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=32, timestep_embed_dim=16, text_hidden_dim=TEXT_WIDTH, num_text_layers=len(TEXT_LAYERS),
        text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=32,
        num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6),
    ).eval()


latent_grid = flux.latent_grid  # 8x VAE and 2x2 packing: (height / 16, width / 16)


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt tokens, as the pipeline passes them:
    packed latents, the stacked text-encoder layers and their mask (the last sample's final quarter padded, when
    batched), the timestep and the (text + image, 3) rotary ids."""
    from diffusers import Krea2Pipeline

    config = transformer.config
    rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    mask = torch.ones(batch, text, dtype=torch.bool, device=device)
    if batch > 1:
        mask[-1, text - text // 4:] = False
    return dict(hidden_states=randn(batch, rows * cols, config.in_channels),
                encoder_hidden_states=randn(batch, text, config.num_text_layers, config.text_hidden_dim),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                position_ids=Krea2Pipeline.prepare_position_ids(text, rows, cols, device),
                encoder_attention_mask=mask, return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults (28 blocks, 48 heads x 128 with 12 key/value heads)


DEFAULT_PRESET = "krea2-2k"
DEFAULT_STEPS = 28  # the pipeline's default num_inference_steps
TEXT_TOKENS = 512  # the pipeline's max_sequence_length
NAME_PATTERN = r"krea"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline Krea2Pipeline with random weights (a byte-level tokenizer, a 3-layer 16-wide Qwen3-VL, Qwen-Image's
    tiny VAE, 4x down, then 2x2 packing): 32x32 pixels -> a 4x4 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline
    from transformers import Qwen3VLConfig, Qwen3VLModel

    from . import qwen_image
    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=3,
                num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
                rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2], "mrope_interleaved": True})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_WIDTH,
                  deepstack_visual_indexes=[])
    text_encoder = Qwen3VLModel(Qwen3VLConfig(text_config=text, vision_config=vision)).eval()
    return Krea2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=qwen_image.tiny_vae(),
                         text_encoder=text_encoder, tokenizer=tokenizer, transformer=tiny_transformer(seed),
                         text_encoder_select_layers=TEXT_LAYERS)


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=64)


TINY_NAME = "tiny-krea2"
