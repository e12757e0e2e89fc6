"""HiDream-I1 (HiDreamImageTransformer2DModel, 17B, mixture-of-experts feed-forward): Full, Dev and Fast,
text-to-image. Dual-stream blocks attend over [image, text] (the T5 and Llama 3.1 prompt, one Llama layer per
block), single-stream blocks over the same joint sequence; every image token attends to all the prompt tokens,
which are unmasked in stock. The processor calls ``F.scaled_dot_product_attention`` itself (as CogVideoX's), so the
``F`` of the transformer's module is routed.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major: 1024x1024 -> 128x128 latents -> 64x64. A
non-square image is packed into ``max_seq`` slots (4,096 for the released model: at most 1 megapixel), its grid
first and zero-keyed padding after it, which the stock attention still attends (score 0): the padding is context,
so GNA reproduces it.
"""

from __future__ import annotations

import torch
from diffusers import HiDreamImageTransformer2DModel
from diffusers.models.transformers import transformer_hidream_image
from diffusers.models.transformers.transformer_hidream_image import HiDreamAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNAHiDreamAttnProcessor(RoutedProcessorMixin, HiDreamAttnProcessor):
    """HiDreamAttnProcessor whose attention runs GNA over the image grid; everything else is stock."""

    routes_sdpa_calls_of = transformer_hidream_image  # the stock processor calls its F.scaled_dot_product_attention


class HiDreamLayout(ImageLatentLayout):
    """The grid of (B, C, H, W) latents; a non-square one fills the first H x W of the model's ``max_seq`` slots."""

    ranks = (4,)

    def __init__(self):
        super().__init__(lambda transformer: (transformer.config.patch_size,) * 2)

    def from_prepared(self, result, transformer) -> TokenLayout | None:
        layout = super().from_prepared(result, transformer)
        return None if layout is None else self.padded(layout, transformer)

    def probe(self, module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
        latents = args[0] if args else kwargs["hidden_states"]
        if latents.ndim == 3:
            raise LayoutError("HiDream's pre-packed (B, N, C) hidden_states carry their grid in img_sizes, which GNA "
                              "does not read; pass the (B, C, H, W) latents, as the pipeline does")
        return self.padded(super().probe(module, args, kwargs, prepared), module)

    @staticmethod
    def padded(layout: TokenLayout, transformer) -> TokenLayout:
        rows, cols = layout.grid
        return layout if rows == cols else token_layout(layout.grid, transformer.max_seq)


LAYOUT = HiDreamLayout()

PATCH = ModelPatch(
    family="hidream",
    transformer_class=HiDreamImageTransformer2DModel,
    processor_class=GNAHiDreamAttnProcessor,
    stock_processor_class=HiDreamAttnProcessor,
    dispatch_module=transformer_hidream_image,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"double": "double_stream_blocks", "single": "single_stream_blocks"},
    text_first=False,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    attention="block.attn1",
)

T5_WIDTH, LLAMA_WIDTH, CLIP_WIDTH = 32, 16, 16  # the tiny encoders' widths


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> HiDreamImageTransformer2DModel:
    """A randomly initialised HiDream transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels, 4
    experts, up to 16x16 tokens: 32x32 latents), reading the tiny Llama's first two hidden states."""
    torch.manual_seed(seed)
    return HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, caption_channels=[T5_WIDTH, LLAMA_WIDTH],
        text_emb_dim=2 * CLIP_WIDTH, num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(8, 4, 4),
        max_resolution=(32, 32), llama_layers=[0, 1, 2, 1][:num_layers + num_single_layers],
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 128, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` T5 and ``text`` Llama tokens, as the pipeline
    passes them: latents (B, C, H, W), the T5 features, the Llama hidden states (layers, B, text, width), the
    pooled CLIP features and the timestep."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    t5_width, llama_width = config.caption_channels
    layers = max(config.llama_layers) + 1
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                timesteps=torch.full((batch,), 500.0, device=device, dtype=dtype),
                encoder_hidden_states_t5=randn(batch, text, t5_width),
                encoder_hidden_states_llama3=randn(layers, batch, text, llama_width),
                pooled_embeds=randn(batch, config.text_emb_dim), return_dict=False)


# HiDream-I1 (HiDream-ai/HiDream-I1-Full): diffusers' class defaults (16 dual- and 32 single-stream blocks, 20 heads x
# 128, 4 routed experts of which 2 active) with T5-XXL and Llama 3.1 8B text: block i reads Llama layer min(i, 31).
FULL_CONFIG = dict(patch_size=2, in_channels=16, out_channels=16, caption_channels=[4096, 4096], text_emb_dim=2048,
                   axes_dims_rope=(64, 32, 32), llama_layers=[min(i, 31) for i in range(48)])

DEFAULT_PRESET = "hidream-1k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps (Full; Dev 28, Fast 16)
TEXT_TOKENS = 128  # the pipeline's max_sequence_length, for T5 and for Llama each
NAME_PATTERN = r"hidream"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline HiDreamImagePipeline with random weights: two 16-wide CLIPs (with projections), the tiny 32-wide
    T5, a 3-layer 16-wide Llama and FLUX's tiny VAE with 4 latent channels: 32x32 pixels -> an 8x8 grid; other
    aspect ratios at the same area."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline
    from transformers import LlamaConfig, LlamaForCausalLM

    from ._tiny import clip_text_encoder, clip_tokenizer
    from .hunyuan_video import tiny_llama_tokenizer

    tokenizer = clip_tokenizer()
    tokenizer_3, text_encoder_3 = flux.tiny_t5(seed)
    tokenizer_4 = tiny_llama_tokenizer()
    text_encoder, text_encoder_2 = (clip_text_encoder(CLIP_WIDTH, len(tokenizer), seed + i, with_projection=True)
                                    for i in range(2))
    torch.manual_seed(seed)
    text_encoder_4 = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer_4), hidden_size=LLAMA_WIDTH, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=2, bos_token_id=1,
        eos_token_id=2)).eval()
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux.tiny_vae(latent_channels=4), text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(), text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3, text_encoder_4=text_encoder_4, tokenizer_4=tokenizer_4,
        transformer=tiny_transformer(seed))
    # The pipeline scales every request to the area of default_sample_size latents squared (128: 1024x1024 with
    # the real VAE), keeping its aspect ratio: 16 makes the tiny one 32x32 pixels.
    pipe.default_sample_size = 16
    return pipe


def tiny_call_kwargs() -> dict:
    return dict(max_sequence_length=48)


TINY_NAME = "tiny-hidream"
