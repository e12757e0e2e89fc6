"""Qwen-Image 2.1 (QwenImage21Transformer2DModel): single-stream blocks over one joint sequence, block-causal.

The joint sequence is the Qwen3-VL encoder's tokens, each of its image slots expanded into the 2x2 latent tokens
it stands for (condition images sit where the encoder put them, between text), then the generated image's
tokens, row-major, last. Attention is block-causal: text is causal, each image block attends to everything before
it and to itself. So the generated image (the grid) attends to everything, and nothing attends to it: it is the
only part GNA changes (its queries get their window over the grid plus every valid key before it).

How the stock processor (``QwenImage21AttnProcessor``) calls attention:
- prefill (every step without the KV cache, the first step with it): one call per context segment (queries
  against the keys up to the segment's end), then one for the grid's queries against every key. These calls
  pass ``backend=None``, so the GNA processor hands them to the route while it runs; the route takes only the
  last (the grid's queries against the whole sequence, ``grid_queries_alone``), the rest run as they come.
- cached steps (the pipeline's default after the first): only the grid's queries, against the cached context
  keys and the grid's own.
Padded prompt keys are hidden by a (B, 1, 1, S) boolean key mask.

``QwenImage21FlexAttnProcessor`` (diffusers' faster path when compiled) gets GNA's subclass too: its cached steps
are routed the same way; its prefill is one flex call over the block-causal mask, which a window cannot join:
those calls run dense, with a warning once when a sparse step meets one.

Layout probe, from shapes and ``img_shapes`` (Python ints): the grid is ``img_shapes[0][-1]``; the joint sequence
is the encoder's tokens plus three more per image slot (one slot per 2x2 latent tokens of every image, the
generated one's included). No host sync.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers.models.transformers import transformer_qwenimage21
from diffusers.models.transformers.transformer_qwenimage21 import (
    QwenImage21AttnProcessor,
    QwenImage21FlexAttnProcessor,
    QwenImage21Transformer2DModel,
)

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import forward_argument
from ._inputs import seeded_randn

LATENTS_PER_SLOT = 4  # one vision-language image slot stands for 2x2 latent tokens


class GNAQwenImage21AttnProcessor(RoutedProcessorMixin, QwenImage21AttnProcessor):
    """QwenImage21AttnProcessor whose grid-query attention runs GNA; the context segments run stock."""

    routes_unnamed_calls_of = transformer_qwenimage21  # the prefill's calls name no backend


class GNAQwenImage21FlexAttnProcessor(RoutedProcessorMixin, QwenImage21FlexAttnProcessor):
    """QwenImage21FlexAttnProcessor whose cached steps run GNA; its prefill (one flex call) stays dense."""

    def __call__(self, attn, hidden_states, attention_mask=None, **kwargs):
        route = self.route
        # A prefill's mask is a flex BlockMask (a cached step's, a tensor or None).
        if route is not None and route.pattern is not None and attention_mask is not None \
                and not isinstance(attention_mask, torch.Tensor):
            route.warn_once("runs dense on prefill calls: QwenImage21FlexAttnProcessor attends over the "
                            "block-causal mask in one call; the pipeline's KV cache (use_kv_cache=True, the "
                            "default) makes the later steps sparse, or set QwenImage21AttnProcessor for sparse "
                            "prefills")
        return super().__call__(attn, hidden_states, attention_mask=attention_mask, **kwargs)


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The generated image's (rows, cols) grid, last in the joint sequence, which is the layout's stream."""
    shapes = forward_argument(module, args, kwargs, "img_shapes")
    text = forward_argument(module, args, kwargs, "encoder_hidden_states")
    hidden_states = args[0] if args else kwargs["hidden_states"]
    if not shapes or text is None:
        raise LayoutError("Qwen-Image 2.1 needs img_shapes and encoder_hidden_states in the transformer call")
    images = list(shapes[0])  # the model reads the first sample's: samples share a layout
    frames, rows, cols = images[-1]
    image_tokens = sum(prod(shape) for shape in images)
    if frames != 1 or hidden_states.shape[1] != image_tokens or any(prod(shape) % LATENTS_PER_SLOT
                                                                    for shape in images):
        raise LayoutError(f"img_shapes {images} do not describe the {hidden_states.shape[1]} image tokens of the "
                          f"call as whole 2x2 slots ending with one generated frame")
    # The encoder's sequence holds one slot per 2x2 latent tokens of the condition images, each expanded to
    # 4 tokens in the joint sequence; the generated image's tokens are appended.
    generated = rows * cols
    condition = image_tokens - generated
    total = text.shape[1] + (LATENTS_PER_SLOT - 1) * condition // LATENTS_PER_SLOT + generated
    return token_layout((rows, cols), total, total - generated)


PATCH = ModelPatch(
    family="qwen-image-2.1",
    transformer_class=QwenImage21Transformer2DModel,
    processor_class=GNAQwenImage21AttnProcessor,
    stock_processor_class=QwenImage21AttnProcessor,
    dispatch_module=transformer_qwenimage21,
    blocks={"blocks": "transformer_blocks"},
    text_first=True,  # context (text, condition images) before the grid
    layout_probe=layout_probe,
    video=False,
    adoptable_processors=(QwenImage21AttnProcessor,),
    processor_variants={QwenImage21FlexAttnProcessor: GNAQwenImage21FlexAttnProcessor},
    grid_queries_alone=True,
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> QwenImage21Transformer2DModel:
    """A randomly initialised Qwen-Image 2.1 transformer for CPU tests (2 heads x 16, 8 latent channels)."""
    torch.manual_seed(seed)
    return QwenImage21Transformer2DModel(
        patch_size=1, in_channels=8, out_channels=8, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, context_in_dim=16, mlp_ratio=2, axes_dims_rope=(4, 6, 6),
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int]:
    """Image-token grid of a height x width image: the VAE downsamples 16x and the latents are not patched; the
    pipeline rounds sizes down to multiples of 32 (whole 2x2 slots)."""
    if height % 32 or width % 32:
        raise ValueError(f"height and width must be divisible by 32 (Qwen-Image 2.1's 2x2 slots of 16-pixel "
                         f"tokens), got {height}x{width}")
    return height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1,
                       valid_text: tuple[int, ...] | None = None, references: tuple[tuple[int, int], ...] = (),
                       device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid: ``text`` prompt tokens (``valid_text``: each sample's
    unpadded count, right-padded) with the slots of condition images of the given (rows, cols) token shapes after
    the first text token, as the pipeline's template puts them."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    valid = torch.tensor(valid_text if valid_text is not None else (text,) * batch, device=device)
    shapes = [*((1, *shape) for shape in references), (1, *grid)]
    slots = [prod(shape) // LATENTS_PER_SLOT for shape in shapes]
    encoder = text + sum(slots[:-1])  # the encoder's sequence: text and the condition images' slots
    is_slot = torch.zeros(encoder + slots[-1], dtype=torch.bool, device=device)
    is_slot[1:1 + sum(slots[:-1])] = True
    is_slot[encoder:] = True
    # Text positions, counted in order: a sample's text beyond its valid count is padding.
    text_index = torch.cumsum(~is_slot[:encoder], 0) - 1
    text_valid = is_slot[:encoder] | (text_index[None, :] < valid[:, None])

    return dict(
        hidden_states=randn(len(valid), sum(prod(shape) for shape in shapes), config.in_channels),
        encoder_hidden_states=randn(len(valid), encoder, config.context_in_dim),
        encoder_hidden_states_mask=None if bool(text_valid.all()) else text_valid,
        timestep=torch.full((len(valid),), 0.5, device=device, dtype=dtype),
        img_shapes=[shapes] * len(valid),
        img_mask=is_slot[None].expand(len(valid), -1),
        return_dict=False,
    )


# diffusers' defaults for the class (the released Qwen/Qwen-Image-2.1 config was not checked offline): 32
# single-stream blocks, 32 heads x 128, Qwen3-VL features of width 4096, 64 latent channels unpatched.
FULL_CONFIG = dict(
    patch_size=1, in_channels=64, out_channels=64, num_layers=32, attention_head_dim=128, num_attention_heads=32,
    context_in_dim=4096, mlp_ratio=3, axes_dims_rope=(16, 56, 56),
)
DEFAULT_PRESET = "qwen-image-2.1-2k"
DEFAULT_STEPS = 40  # QwenImage21Pipeline's default num_inference_steps
TEXT_TOKENS = 256  # prompts vary in length (the pipeline trims padding and the system prompt); a long prompt
NAME_PATTERN = r"qwen-?image[-_.]?2[._]1"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline QwenImage21Pipeline with random weights: the VAE downsamples 16x as the real one, so a 64x96
    image is a 4x6 token grid."""
    from diffusers import AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline

    from ._tiny import qwen3_vl_parts

    processor, text_encoder = qwen3_vl_parts(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage21(
        base_dim=4, decoder_base_dim=4, z_dim=8, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True, True], latents_mean=[0.0] * 8, latents_std=[1.0] * 8,
    ).eval()
    return QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                               processor=processor, transformer=tiny_transformer(seed))


def tiny_call_kwargs() -> dict:
    return {}


TINY_NAME = "tiny-qwen-image-2.1"
# The tiny VAE downsamples 16x, as the real one (the pipeline assumes it): 256 px make a 16x16 token grid, on
# which the presets' windows stay smaller than the grid.
TINY_SIZE = dict(height=256, width=256)
