"""GLM-Image (GlmImageTransformer2DModel): Z.ai's text-to-image and image-editing model, whose autoregressive
vision-language model writes the image's prior tokens, and whose 7B diffusion decoder, this transformer, renders them
up to 2048x2048. Each block's ``attn1`` (``GlmImageAttnProcessor``, through diffusers' dispatch) runs over
[glyph text, image]: the ByT5 tokens of the prompt's quoted text (left zero-padded in a batch, unmasked, as stock);
the prior tokens are added to the image tokens, not put beside them.

Editing: before denoising, the pipeline runs each condition image through the transformer once with its KV cache
in ``write`` mode; the denoising calls then read the cached keys and values before their own ([condition images,
text, image] keys for [text, image] queries). The condition images are context: their own pass runs stock (the probe
says the call holds no generated grid), and every generated token attends to all of their cached keys.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch: GLM-Image's VAE compresses 8x, so 2048x2048 -> a
128x128 grid.
"""

from __future__ import annotations

import torch
from diffusers import GlmImageTransformer2DModel
from diffusers.models.transformers import transformer_glm_image
from diffusers.models.transformers.transformer_glm_image import GlmImageAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin, TokenLayout

from . import flux
from ._forward import forward_argument
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNAGlmImageAttnProcessor(RoutedProcessorMixin, GlmImageAttnProcessor):
    """GlmImageAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout | None:
    """The generated grid of this call, or None for a condition image filling the KV cache (context alone)."""
    kv_caches = forward_argument(module, args, kwargs, "kv_caches")
    if kv_caches is not None and kv_caches[0].mode == "write":
        return None
    return LAYOUT.probe(module, args, kwargs, prepared)


PATCH = ModelPatch(
    family="glm-image",
    transformer_class=GlmImageTransformer2DModel,
    processor_class=GNAGlmImageAttnProcessor,
    stock_processor_class=GlmImageAttnProcessor,
    dispatch_module=transformer_glm_image,
    blocks={"blocks": "transformer_blocks"},
    text_first=True,  # [glyph text, image]
    layout_probe=layout_probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    adoptable_processors=(GlmImageAttnProcessor,),
    attention="attn1",
    cached_context_keys=True,  # editing: the condition images' cached keys before [text, image]
)

TEXT_WIDTH = 32  # the tiny T5's d_model
PRIOR_CODES = 64  # the tiny transformer's prior codebook


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> GlmImageTransformer2DModel:
    """A randomly initialised GLM-Image transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels)."""
    torch.manual_seed(seed)
    return GlmImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, text_embed_dim=TEXT_WIDTH, time_embed_dim=16, condition_dim=8,
        prior_vq_quantizer_codebook_size=PRIOR_CODES,
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def prior_tokens(grid: tuple[int, int], batch: int = 1, seed: int = 0, device="cpu") -> torch.Tensor:
    """Random prior token ids (B, rows * cols) for a (rows, cols) grid, as the autoregressive model would write."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, PRIOR_CODES, (batch, grid[0] * grid[1]), generator=generator).to(device)


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 16, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one denoising call on a (rows, cols) grid with ``text`` glyph tokens, as the pipeline passes
    them (no KV cache: text-to-image)."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    prior = prior_tokens(grid, batch, seed, device)
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                encoder_hidden_states=randn(batch, text, config.text_embed_dim), prior_token_id=prior,
                prior_token_drop=torch.zeros_like(prior, dtype=torch.bool),
                timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
                target_size=torch.tensor([[rows * p * 8, cols * p * 8]], device=device, dtype=dtype).repeat(batch, 1),
                crop_coords=torch.zeros(batch, 2, device=device, dtype=dtype), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults: GLM-Image's decoder (30 blocks, 64 heads x 40, ByT5 glyphs)

DEFAULT_PRESET = "glm-image-2k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 16  # glyph tokens: the ByT5 bytes of the prompt's quoted text (a short caption)
NAME_PATTERN = r"glm-?image"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline GlmImagePipeline with random weights and no autoregressive model: calls pass the prior tokens
    (``tiny_call_kwargs``), as a user who ran ``generate_prior_tokens`` does. ByT5's tokenizer, the tiny T5, FLUX's
    tiny VAE (2x, with latent statistics): 32x32 pixels -> an 8x8 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, GlmImagePipeline
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tokenizer = ByT5Tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=TEXT_WIDTH, d_kv=8, d_ff=64,
                                           num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1)).eval()
    vae = flux.tiny_vae(latent_channels=4, latents_mean=[0.1] * 4, latents_std=[1.5] * 4)
    return GlmImagePipeline(tokenizer=tokenizer, processor=None, text_encoder=text_encoder,
                            vision_language_encoder=None, vae=vae, transformer=tiny_transformer(seed),
                            scheduler=FlowMatchEulerDiscreteScheduler())


TINY_SIZE = {"height": 32, "width": 32}  # an 8x8 grid, which tiny_call_kwargs' prior tokens cover


def tiny_call_kwargs() -> dict:
    """The prior tokens of a TINY_SIZE image (the tiny pipeline has no autoregressive model to write them)."""
    return dict(prior_token_ids=prior_tokens((8, 8)))


TINY_NAME = "tiny-glm-image"
