"""Qwen-Image and Qwen-Image-Edit (QwenImageTransformer2DModel, QwenDoubleStreamAttnProcessor2_0): every
block is dual-stream with joint sequence [text, image stream]; padded text is hidden by a boolean key
mask (B, 1, 1, S) built inside the processor; RoPE inside the processor.

Layout: the ``img_shapes`` keyword lists, per sample, the (frames, rows, cols) token shapes of the image
stream: the first is the generated image (the grid), the rest are reference images that Qwen-Image-Edit
appends (context). Qwen-Image-Layered (its calls pass ``additional_t_cond``) generates several layers of one
image, one plane each, then appends its condition image: the layers form a 3-D (layers, rows, cols) grid, the
condition image is context. Plain Python ints: no host sync, nothing for torch.compile to break on. A Qwen-Image
ControlNet (QwenImageControlNetModel, alone or multi) runs the same blocks beside the transformer: patched too.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import QwenImageControlNetModel, QwenImageTransformer2DModel
from diffusers.models.transformers import transformer_qwenimage
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._forward import forward_argument
from ._inputs import seeded_randn


class GNAQwenAttnProcessor(RoutedProcessorMixin, QwenDoubleStreamAttnProcessor2_0):
    """QwenDoubleStreamAttnProcessor2_0 whose joint attention runs GNA over the image grid; all else stock."""


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The generated image's grid from ``img_shapes`` (2-D, or 3-D when it has several frames)."""
    shapes = forward_argument(module, args, kwargs, "img_shapes")
    if not shapes:
        raise LayoutError("Qwen-Image needs img_shapes in the transformer call to know the image grid")
    per_sample = [sample if isinstance(sample, list) else [sample] for sample in shapes]
    if any(sample != per_sample[0] for sample in per_sample):
        raise LayoutError(f"the samples of the batch have different image shapes {shapes}")
    first = per_sample[0][0]
    frames, rows, cols = first
    grid = (rows, cols) if frames == 1 else (frames, rows, cols)
    if forward_argument(module, args, kwargs, "additional_t_cond") is not None:
        # Qwen-Image-Layered: the generated layers, one (1, rows, cols) plane each, layer-major, then the condition
        # image: the layers are one 3-D grid, so a token's window spans its neighbourhood in every layer.
        layers = next((i for i, shape in enumerate(per_sample[0][:-1]) if shape != first), len(per_sample[0]) - 1)
        grid = (max(layers, 1), rows, cols)
    return token_layout(grid, sum(prod(shape) for shape in per_sample[0]))


PATCH = ModelPatch(
    family="qwen-image",
    transformer_class=QwenImageTransformer2DModel,
    processor_class=GNAQwenAttnProcessor,
    stock_processor_class=QwenDoubleStreamAttnProcessor2_0,
    dispatch_module=transformer_qwenimage,
    blocks={"blocks": "transformer_blocks"},
    text_first=True,
    layout_probe=layout_probe,
    video=False,
    adoptable_processors=(QwenDoubleStreamAttnProcessor2_0,),
    # Qwen-Image ControlNets run the same blocks over the same image tokens beside the transformer.
    other_transformer_classes=(QwenImageControlNetModel,),
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> QwenImageTransformer2DModel:
    """A randomly initialised Qwen-Image transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 4, 8),
    ).eval()


latent_grid = flux.latent_grid  # VAE 8x, 2x2 packed: 16 pixels per token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1,
                       valid_text: tuple[int, ...] | None = None, references: tuple[tuple[int, int], ...] = (),
                       device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` tokens (``valid_text``: each sample's
    unpadded length) and Qwen-Image-Edit style reference images of the given (rows, cols) token shapes."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    valid = torch.tensor(valid_text if valid_text is not None else (text,) * batch, device=device)
    shapes = [(1, *grid), *((1, *shape) for shape in references)]

    return dict(
        hidden_states=randn(len(valid), sum(prod(shape) for shape in shapes), config.in_channels),
        encoder_hidden_states=randn(len(valid), text, config.joint_attention_dim),
        encoder_hidden_states_mask=(torch.arange(text, device=device)[None, :] < valid[:, None]).long(),
        timestep=torch.full((len(valid),), 0.5, device=device, dtype=dtype),
        img_shapes=[shapes] * len(valid),
        return_dict=False,
    )


# Qwen-Image (20B): 60 dual-stream blocks, 24 heads x 128, Qwen2.5-VL text features of width 3584.
FULL_CONFIG = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, axes_dims_rope=(16, 56, 56),
)
DEFAULT_PRESET = "qwen-image"
PIPELINE_PRESETS = {"QwenImageLayeredPipeline": "qwen-image-layered-640"}  # compare's default for Layered
# Pipelines whose input image compare asks for although their signature defaults it to None.
IMAGE_PIPELINES = ("QwenImageLayeredPipeline",)
RGBA_PIPELINES = ("QwenImageLayeredPipeline",)  # its input image keeps its alpha (the layers it generates are RGBA)
DEFAULT_STEPS = 50  # QwenImagePipeline's default num_inference_steps
TEXT_TOKENS = 256  # prompts vary in length (the pipeline trims padding); a long prompt


def tiny_text_parts(seed: int):
    """The byte-level tokenizer and a 2-layer Qwen2.5-VL."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0]),
        vocab_size=len(tokenizer), hidden_size=16,
    )
    torch.manual_seed(seed)
    return tokenizer, Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_vae():
    """Qwen-Image's VAE, tiny: 4 latent channels, 4x down in space (the real one: 16 channels, 8x)."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()


def tiny_pipeline(seed: int = 0):
    """An offline QwenImagePipeline with random weights: 32x32 images -> a 4x4 latent token grid (the tiny
    VAE downsamples 4x, not 8x)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    tokenizer, text_encoder = tiny_text_parts(seed)
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=tiny_transformer(seed))


def tiny_edit_pipeline(seed: int = 0):
    """An offline QwenImageEditPipeline: a 2-layer Qwen2.5-VL that reads the input image with the prompt, and a VAE 32x
    down in space (the pipeline sizes its output and reference for 1024x1024 pixels), so 1024x1024 images of 16x16
    tokens, the reference image's 16x16 after them."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline

    from ._tiny import qwen25_vl_parts

    processor, text_encoder = qwen25_vl_parts(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1] * 6, num_res_blocks=1,
                                 temperal_downsample=[False] * 5, latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    return QwenImageEditPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                 tokenizer=processor.tokenizer, processor=processor, transformer=tiny_transformer(seed))


def tiny_layered_pipeline(seed: int = 0):
    """An offline QwenImageLayeredPipeline: a VAE 32x down in space with 8 latent channels (the pipeline sizes its
    images for 640 or 1024 pixels and reads a latent as wide as the RGBA input as latents already), so a square image
    gives 640x640 layers of 10x10 tokens; the transformer with layer-wise 3-D RoPE and the RGB-flag condition. No
    Qwen2.5-VL processor: it only captions an image given no prompt."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageLayeredPipeline

    tokenizer, text_encoder = tiny_text_parts(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=8, dim_mult=[1] * 6, num_res_blocks=1,
                                 temperal_downsample=[False] * 5, latents_mean=[0.0] * 8, latents_std=[1.0] * 8,
                                 input_channels=4).eval()
    config = dict(tiny_transformer(seed).config, use_layer3d_rope=True, use_additional_t_cond=True, in_channels=32,
                  out_channels=8)
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel.from_config(config).eval()
    return QwenImageLayeredPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                    tokenizer=tokenizer, processor=None, transformer=transformer)


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=64)


def pipeline_output(result):
    """The one sample of a call: an image (H, W, C), or Qwen-Image-Layered's RGBA layers (L, H, W, 4) as L RGB frames,
    each composited over white (compare scores and shows them as a video's frames)."""
    image = result.images[0]
    if image.ndim != 4:
        return image
    layers = torch.as_tensor(image)
    rgb, alpha = layers[..., :3], layers[..., 3:]
    return (rgb * alpha + (1 - alpha)).numpy()


TINY_NAME = "tiny-qwen-image"
NAME_PATTERN = r"qwen-?image(?![-_.]?2[._]1)"  # hub names of this family (not Qwen-Image 2.1), for --random-weights
