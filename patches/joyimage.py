"""JoyImage-Edit (JoyImageEditTransformer3DModel): JD's image-editing and text-to-image model. Each double-stream
block's ``attn`` (``JoyImageAttnProcessor``, through diffusers' dispatch) runs over [image stream, text]. The pipeline
passes its items as (B, items, C, T, H, W) latents, the reference images first and the generated image last; the
transformer moves the generated one to the front and lays the items out as frames of one stream, so the grid is the
stream's first frame and the reference frames after it are context, as the text.

Layout probe: hidden_states over the (1, 2, 2) patch, from shapes (no host sync): Wan's VAE (8x), so 1024x1024 -> a
64x64 grid.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import JoyImageEditTransformer3DModel
from diffusers.models.transformers import transformer_joyimage
from diffusers.models.transformers.transformer_joyimage import JoyImageAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._forward import forward_argument
from ._inputs import seeded_randn
from ._tiny import randomize_modulation


class GNAJoyImageAttnProcessor(RoutedProcessorMixin, JoyImageAttnProcessor):
    """JoyImageAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The generated item's grid, first in a stream of ``items`` equal ones: (B, items, C, T, H, W) latents, or
    (B, C, T, H, W) for one item."""
    latents = forward_argument(module, args, kwargs, "hidden_states")
    if latents.ndim not in (5, 6):
        raise LayoutError(f"JoyImage-Edit latents of shape {tuple(latents.shape)} are neither (B, C, T, H, W) nor "
                          f"(B, items, C, T, H, W)")
    items = latents.shape[1] if latents.ndim == 6 else 1
    p_t, p_h, p_w = module.config.patch_size
    frames, height, width = latents.shape[-3:]
    grid = (frames // p_t, height // p_h, width // p_w)
    return token_layout(grid[1:] if grid[0] == 1 else grid, items * prod(grid))


PATCH = ModelPatch(
    family="joyimage",
    transformer_class=JoyImageEditTransformer3DModel,
    processor_class=GNAJoyImageAttnProcessor,
    stock_processor_class=JoyImageAttnProcessor,
    dispatch_module=transformer_joyimage,
    blocks={"blocks": "double_blocks"},
    text_first=False,  # [image stream, text]
    layout_probe=layout_probe,
    video=False,
    adoptable_processors=(JoyImageAttnProcessor,),
)

TEXT_WIDTH = 16  # the tiny Qwen3-VL's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> JoyImageEditTransformer3DModel:
    """A randomly initialised JoyImage-Edit transformer for CPU tests (2 heads x 16, Wan's tiny VAE's 4 latent
    channels). Its blocks' modulation tables start at zero: they get random values."""
    torch.manual_seed(seed)
    return randomize_modulation(JoyImageEditTransformer3DModel(
        in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=TEXT_WIDTH, mlp_width_ratio=2.0,
        num_layers=num_layers, rope_dim_list=[4, 6, 6],
    ).eval())


latent_grid = flux.latent_grid  # Wan's VAE (8x) and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, references: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt tokens and ``references`` reference
    images of the same size before the generated one, as the pipeline passes them."""
    config = transformer.config
    _, p_h, p_w = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    return dict(hidden_states=randn(batch, references + 1, config.in_channels, 1, grid[0] * p_h, grid[1] * p_w),
                timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
                encoder_hidden_states=randn(batch, text, config.text_dim), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults: 20 double-stream blocks, 24 heads x 128, text features of 4096

DEFAULT_PRESET = "joyimage-1k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 256  # the Qwen3-VL prompt, its system prompt dropped
NAME_PATTERN = r"joy-?image(?!.*plus)"  # hub names of this family (not JoyImage-Edit Plus), for --random-weights


def keep_sizes(image_processor) -> None:
    """Make a JoyImage pipeline's image processor keep the sizes asked for, or an image's own size, where the released
    one snaps every size to a 1-megapixel bucket (the tiny pipelines' images are a few dozen pixels)."""
    def own_size(image, height=None, width=None):
        if height and width:
            return height, width
        first = image[0] if isinstance(image, list) else image
        if first is None:
            return type(image_processor).get_default_height_width(image_processor, image)
        return first.size[1], first.size[0]

    image_processor.get_default_height_width = own_size


def tiny_components(seed: int = 0) -> dict:
    """The tiny JoyImage pipelines' components but the transformer: a tiny Qwen3-VL and its processor, Wan's tiny
    VAE (4x), a flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from . import wan
    from ._tiny import qwen3_vl_parts

    processor, text_encoder = qwen3_vl_parts(seed, num_hidden_layers=2)
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=wan.tiny_parts(seed)["vae"],
                text_encoder=text_encoder, tokenizer=processor.tokenizer, processor=processor)


def tiny_pipeline(seed: int = 0):
    """An offline JoyImageEditPipeline with random weights (``tiny_components``; sizes kept, ``keep_sizes``): 64x64
    pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import JoyImageEditPipeline

    pipe = JoyImageEditPipeline(transformer=tiny_transformer(seed), **tiny_components(seed))
    keep_sizes(pipe.vae_image_processor)
    return pipe


def tiny_call_kwargs() -> dict:
    return {}


TINY_SIZE = {"height": 64, "width": 64}  # an 8x8 grid (the tiny VAE compresses 4x)
TINY_NAME = "tiny-joyimage"
