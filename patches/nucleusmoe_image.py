"""NucleusMoE-Image (NucleusMoEImageTransformer2DModel): a single-stream text-to-image model with mixture-of-experts
feed-forwards (expert choice). Each block's ``attn`` (``NucleusMoEAttnProcessor2_0``, through diffusers' dispatch)
takes its queries from the image tokens alone and its keys from [image, text] (the text keys and values projected per
block, or cached ones the call passes), grouped-query heads repeated to the query heads before the call; a prompt's
padding is masked by a (B, S) key mask. The grid's queries come with the text as context keys after their own.

Layout: Qwen-Image's probe (the ``img_shapes`` keyword: per sample, the (frames, rows, cols) token shape; plain
ints, no host sync). The Qwen-Image VAE (8x) and 2x2 packing: 1024x1024 -> a 64x64 grid.
"""

from __future__ import annotations

import torch
from diffusers import NucleusMoEImageTransformer2DModel
from diffusers.models.transformers import transformer_nucleusmoe_image
from diffusers.models.transformers.transformer_nucleusmoe_image import NucleusMoEAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux, qwen_image
from ._inputs import seeded_randn


class GNANucleusMoEAttnProcessor2_0(RoutedProcessorMixin, NucleusMoEAttnProcessor2_0):
    """NucleusMoEAttnProcessor2_0 whose attention call runs GNA over the image grid; everything else is stock."""


PATCH = ModelPatch(
    family="nucleusmoe-image",
    transformer_class=NucleusMoEImageTransformer2DModel,
    processor_class=GNANucleusMoEAttnProcessor2_0,
    stock_processor_class=NucleusMoEAttnProcessor2_0,
    dispatch_module=transformer_nucleusmoe_image,
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # keys: [image, text]
    layout_probe=qwen_image.layout_probe,
    video=False,
    adoptable_processors=(NucleusMoEAttnProcessor2_0,),
    cached_context_keys=True,  # queries: the image; keys: [image, text]
)

TEXT_WIDTH = 16  # the tiny Qwen3-VL's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> NucleusMoEImageTransformer2DModel:
    """A randomly initialised NucleusMoE-Image transformer for CPU tests (2 query heads x 16 sharing one key/value head,
    Qwen-Image's tiny VAE's 4 latent channels packed 2x2; the blocks after the first have 4 experts). The dense
    blocks' feed-forward width is rounded down to a multiple of 128 (mlp_ratio 6: 128); the experts' weights are
    allocated uninitialised (checkpoints fill them): they get random values."""
    torch.manual_seed(seed)
    transformer = NucleusMoEImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, num_key_value_heads=1, joint_attention_dim=TEXT_WIDTH, axes_dims_rope=(4, 6, 6),
        mlp_ratio=6.0, dense_moe_strategy="leave_first_block_dense", num_experts=4, moe_intermediate_dim=16,
        capacity_factors=2.0,
    ).eval()
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if ".experts." in name:
                parameter.normal_(0.0, parameter.shape[-2] ** -0.5)  # (experts, fan-in, fan-out)
    return transformer


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 packing: 16 pixels per token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, valid_text: tuple[int, ...] | None = None) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt tokens per sample, the first
    ``valid_text[b]`` of sample b valid (all by default: the pipeline then passes no mask), as the pipeline passes
    them."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    lengths = valid_text if valid_text is not None else (text,) * batch
    mask = torch.arange(text, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    return dict(hidden_states=randn(len(lengths), grid[0] * grid[1], config.in_channels),
                encoder_hidden_states=randn(len(lengths), text, config.joint_attention_dim),
                encoder_hidden_states_mask=None if valid_text is None else mask,
                timestep=torch.full((len(lengths),), 0.5, device=device, dtype=dtype),
                img_shapes=[(1, *grid)] * len(lengths), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults: 24 blocks, 16 heads x 128, 128 experts, Qwen3-VL features of 3584

DEFAULT_PRESET = "nucleusmoe-image-1k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 256  # the Qwen3-VL prompt with its system prompt, padded to a multiple of 8
NAME_PATTERN = r"nucleus-?moe"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline NucleusMoEImagePipeline with random weights (a tiny Qwen3-VL and its processor, Qwen-Image's tiny
    VAE: 4x): 32x32 pixels -> 8x8 latents -> a 4x4 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, NucleusMoEImagePipeline

    from ._tiny import qwen3_vl_parts

    processor, text_encoder = qwen3_vl_parts(seed, num_hidden_layers=3)
    return NucleusMoEImagePipeline(transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(),
                                   vae=qwen_image.tiny_vae(), text_encoder=text_encoder, processor=processor)


def tiny_call_kwargs() -> dict:
    # The released pipeline reads the encoder's 8th-last layer; the tiny one has 3.
    return dict(return_index=-2, max_sequence_length=256)


TINY_SIZE = {"height": 64, "width": 64}  # an 8x8 grid (the tiny VAE compresses 4x)
TINY_NAME = "tiny-nucleusmoe-image"
