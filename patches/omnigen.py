"""OmniGen (OmniGenTransformer2DModel): OmniGen v1 text-to-image and instruction editing with images in the prompt.
One Phi-3 stack over [condition tokens (the prompt, its input images' latent patches inline, left-padded to the
batch's longest), the time token, the output image grid]. Each block's ``self_attn`` runs OmniGenAttnProcessor2_0,
which calls ``F.scaled_dot_product_attention`` itself with the pipeline's (B, 1, S, S) additive mask: the prompt and
the time token attend causally (each input image bidirectionally within itself), the output image to every valid
token. GNA's subclass is routed through the transformer module's ``F``: the output image's queries attend to their
window and to every valid condition token and the time token (context); the condition rows keep their causal mask,
dense.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major, last in the sequence: 1024x1024 -> 128x128
latents -> 64x64 (4,096 image tokens).

OmniGenPipeline needs torchvision, which gna-diffusers does not install: ``apply`` works on a pipeline of yours, and
where torchvision is installed the harness runs OmniGen end to end like any family; without it, it times the
transformer alone (``--random-weights``).
"""

from __future__ import annotations

import torch
from diffusers import OmniGenTransformer2DModel
from diffusers.models.transformers import transformer_omnigen
from diffusers.models.transformers.transformer_omnigen import OmniGenAttnProcessor2_0
from diffusers.utils import is_torchvision_available

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNAOmniGenAttnProcessor(RoutedProcessorMixin, OmniGenAttnProcessor2_0):
    """OmniGenAttnProcessor2_0 whose attention runs GNA for the output image's queries; everything else is stock."""

    routes_sdpa_calls_of = transformer_omnigen  # the stock processor calls its module's F.scaled_dot_product_attention


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="omnigen",
    transformer_class=OmniGenTransformer2DModel,
    processor_class=GNAOmniGenAttnProcessor,
    stock_processor_class=OmniGenAttnProcessor2_0,
    dispatch_module=transformer_omnigen,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "layers"},
    text_first=True,  # [condition tokens, time token, output image]
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    attention="self_attn",
)

HEAD_DIM = 16


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> OmniGenTransformer2DModel:
    """A randomly initialised OmniGen transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels, a
    256-token embedding)."""
    torch.manual_seed(seed)
    factors = [1.0] * (HEAD_DIM // 2)
    return OmniGenTransformer2DModel(
        in_channels=4, patch_size=2, hidden_size=2 * HEAD_DIM, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, num_layers=num_layers, pad_token_id=0, vocab_size=256,
        rope_scaling={"short_factor": factors, "long_factor": factors}, pos_embed_max_size=32,
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def tiny_pipeline(seed: int = 0):
    """An offline OmniGenPipeline with random weights: 64x64 pixels -> 8x8 latents (an 8x VAE, as the pipeline's
    input-image patching assumes) -> a 4x4 grid of 2x2 patches. A per-character Llama tokenizer (OmniGen's is
    Phi-3's). diffusers builds the pipeline's image processor from torchvision: without it this raises."""
    from diffusers import FlowMatchEulerDiscreteScheduler, OmniGenPipeline

    from .hunyuan_video import tiny_llama_tokenizer

    return OmniGenPipeline(transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(),
                           vae=flux.tiny_vae(latent_channels=4, blocks=4), tokenizer=tiny_llama_tokenizer())


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, valid_text: tuple[int, ...] | None = None,
                       input_image: tuple[int, int] | None = None) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid after ``text`` prompt tokens (the first ``text -
    valid_text[b]`` of sample b padding, as the pipeline left-pads), as the pipeline's collator builds them: token ids,
    the (B, S, S) mask (causal prompt and time token, the image attending to every valid token) and positions.
    ``input_image``: each sample's prompt holds an input image of (rows, cols) patch tokens after its first valid
    token (its latents replace those placeholder tokens; its rows attend bidirectionally among themselves)."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    n = rows * cols
    total = text + 1 + n
    randn = seeded_randn(seed, device, dtype)
    valid = valid_text or (text,) * batch
    mask = torch.zeros(batch, total, total, device=device, dtype=dtype)
    positions = torch.zeros(batch, total, device=device, dtype=torch.long)
    for sample, length in enumerate(valid):
        pad = text - length
        mask[sample, :pad] = 1  # padding rows see everything (unused)
        mask[sample, pad:text + 1, pad:text + 1] = torch.tril(torch.ones(length + 1, length + 1))
        mask[sample, text + 1:, pad:] = 1
        positions[sample, pad:] = torch.arange(length + 1 + n)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, text), generator=generator).to(device)
    for sample, length in enumerate(valid):
        input_ids[sample, :text - length] = config.pad_token_id
    latents, spans = [], {}
    if input_image is not None:
        image_rows, image_cols = input_image
        for sample, length in enumerate(valid):
            if length < image_rows * image_cols + 1:
                raise ValueError(f"sample {sample}'s {length} prompt tokens cannot hold a {input_image} input image")
            start = text - length + 1
            spans[sample] = [(start, start + image_rows * image_cols)]
            mask[sample, start:start + image_rows * image_cols, start:start + image_rows * image_cols] = 1
            latents.append(randn(1, config.in_channels, image_rows * p, image_cols * p))
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype), input_ids=input_ids,
                input_img_latents=latents, input_image_sizes=spans, attention_mask=mask, position_ids=positions,
                return_dict=False)


# OmniGen v1 (Shitao/OmniGen-v1-diffusers): diffusers' class defaults, Phi-3 mini's shape (32 blocks, 32 heads x 96).
FULL_CONFIG = dict(rope_scaling={"short_factor": [1.0] * 48, "long_factor": [1.0] * 48})

DEFAULT_PRESET = "omnigen-1k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 64  # a short instruction
NAME_PATTERN = r"omnigen"  # hub names of this family, for --random-weights


# Without torchvision the harness times the transformer alone (its tests use the mask the pipeline's collator builds).
WEIGHTS_GAP = None if is_torchvision_available() else (
    "needs torchvision for its pipeline's image processing, which gna-diffusers does not install")


def tiny_call_kwargs() -> dict:
    return {}


TINY_SIZE = {"height": 64, "width": 64}  # a 4x4 grid (the tiny VAE compresses 8x, as the pipeline's patching assumes)
TINY_NAME = "tiny-omnigen"
