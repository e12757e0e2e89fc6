"""ERNIE-Image (ErnieImageTransformer2DModel): Baidu's single-stream text-to-image model, 1024x1024 by default. Every
block's ``self_attention`` (``ErnieImageSingleStreamAttnProcessor``, through diffusers' dispatch) runs over
[image, text]: the image tokens first, then the Mistral 3 prompt, each sample's padding masked by a (B, 1, 1, S)
boolean key mask (the pipeline batches the guidance branches, whose prompts differ in length). The blocks keep the
sequence first, (S, B, C), and hand the attention module batch-first tokens.

Layout probe: hidden_states (B, C, H, W), already patchified by the pipeline (FLUX.2's VAE, 8x, then 2x2 patches
into 128 channels) and embedded one token per latent: 1024x1024 -> a 64x64 grid, from shapes (no host sync). The
pipeline has no ``prepare_latents``: a compiled transformer reads the same shapes in its graph.
"""

from __future__ import annotations

import torch
from diffusers import ErnieImageTransformer2DModel
from diffusers.models.transformers import transformer_ernie_image
from diffusers.models.transformers.transformer_ernie_image import ErnieImageSingleStreamAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout
from ._tiny import randomize_modulation


class GNAErnieImageSingleStreamAttnProcessor(RoutedProcessorMixin, ErnieImageSingleStreamAttnProcessor):
    """ErnieImageSingleStreamAttnProcessor whose attention call runs GNA over the image grid; everything else is
    stock."""


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="ernie-image",
    transformer_class=ErnieImageTransformer2DModel,
    processor_class=GNAErnieImageSingleStreamAttnProcessor,
    stock_processor_class=ErnieImageSingleStreamAttnProcessor,
    dispatch_module=transformer_ernie_image,
    blocks={"blocks": "layers"},
    text_first=False,  # [image, text]
    layout_probe=LAYOUT.probe,
    video=False,
    adoptable_processors=(ErnieImageSingleStreamAttnProcessor,),
    attention="self_attention",
)

TEXT_WIDTH = 16  # the tiny Mistral 3's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> ErnieImageTransformer2DModel:
    """A randomly initialised ERNIE-Image transformer for CPU tests (2 heads x 16, 16 input channels: FLUX.2's tiny
    VAE's 4 in 2x2 patches). Its shared modulation and output layer start at zero, as in training, which would make
    every output zero: they get random values."""
    torch.manual_seed(seed)
    transformer = ErnieImageTransformer2DModel(
        hidden_size=32, num_attention_heads=2, num_layers=num_layers, ffn_hidden_size=64, in_channels=16,
        out_channels=16, text_in_dim=TEXT_WIDTH, rope_axes_dim=(4, 6, 6),
    ).eval()
    randomize_modulation(transformer)
    with torch.no_grad():
        transformer.final_linear.weight.normal_(0.0, 0.2)
    return transformer


latent_grid = flux.latent_grid  # FLUX.2's VAE (8x) and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, valid_text: tuple[int, ...] | None = None) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` prompt slots per sample, the first
    ``valid_text[b]`` of sample b valid (all by default), as the pipeline passes them."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    lengths = valid_text if valid_text is not None else (text,) * batch
    return dict(hidden_states=randn(len(lengths), config.in_channels, *grid),
                timestep=torch.full((len(lengths),), 500.0, device=device, dtype=dtype),
                text_bth=randn(len(lengths), text, config.text_in_dim),
                text_lens=torch.tensor(lengths, device=device), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults: 24 blocks, 24 heads x 128, Mistral 3 prompt features of width 2560

DEFAULT_PRESET = "ernie-image-2k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 256  # prompt tokens, unpadded (its prompt enhancer writes long descriptions)
NAME_PATTERN = r"ernie-?image"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline ErnieImagePipeline with random weights (a byte-level tokenizer, a 3-layer 16-wide Mistral 3, FLUX.2's
    tiny VAE: 2x, then 2x2 patches) and no prompt enhancer: 32x32 pixels -> an 8x8 grid."""
    from diffusers import AutoencoderKLFlux2, ErnieImagePipeline, FlowMatchEulerDiscreteScheduler
    from transformers import Mistral3Config, Mistral3Model

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text = dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32,
                num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                max_position_embeddings=512)
    vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=8, image_size=32, patch_size=16)
    text_encoder = Mistral3Model(Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=1)).eval()
    vae = AutoencoderKLFlux2(
        latent_channels=4, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, sample_size=32,
    ).eval()
    return ErnieImagePipeline(transformer=tiny_transformer(seed), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, scheduler=FlowMatchEulerDiscreteScheduler())


def tiny_call_kwargs() -> dict:
    return {}


TINY_NAME = "tiny-ernie-image"
