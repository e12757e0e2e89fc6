"""Lumina-Image 2.0 (Lumina2Transformer2DModel): the 2.6B text-to-image model, 1024x1024 by default. Each block's
``attn`` uses ``Lumina2AttnProcessor2_0``, which calls ``F.scaled_dot_product_attention`` itself (routed as
CogVideoX's), after repeating its 8 key/value heads to the 24 query heads.

- ``noise_refiner`` (block type ``refiner``): the image tokens alone;
- ``layers`` (block type ``main``): per sample, [its valid caption tokens, the image tokens], the batch padded at the
  end, with a (B, S) key mask when the samples' captions differ in length;
- ``context_refiner`` (the caption alone) keeps the stock processor.

The grid therefore starts after each sample's own caption. The pipeline makes one transformer call per prompt and
guidance branch, so a call usually holds one caption length; a batch of prompts whose lengths differ is rolled per
sample inside the sparse layers' processor ([batch padding, caption, image]: every grid ends the sequence), run, and
rolled back: exact, at the cost of three gathers per layer. Layout probe: hidden_states (B, C, H, W) over the 2x2
patch, row-major: 1024x1024 -> 128x128 latents -> a 64x64 grid.
"""

from __future__ import annotations

import torch
from diffusers import Lumina2Transformer2DModel
from diffusers.models.transformers import transformer_lumina2
from diffusers.models.transformers.transformer_lumina2 import Lumina2AttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


def _take(t: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``t`` (B, S, ...) with token j of sample b taken from ``source[b, j]`` ((B, S) indices)."""
    return t.gather(1, source.view(*source.shape, *(1,) * (t.ndim - 2)).expand_as(t))


class GNALumina2AttnProcessor2_0(RoutedProcessorMixin, Lumina2AttnProcessor2_0):
    """Lumina2AttnProcessor2_0 whose self-attention runs GNA over the image grid; everything else is stock.

    A sparse call with a key mask (a batch whose captions differ in length; per sample the valid tokens come first)
    rotates each sample's tokens, RoPE and mask right by its padding, so that every sample's grid ends the sequence
    where the route expects it, and rotates the output back. Every step but attention is per token, so this is
    exact."""

    routes_sdpa_calls_of = transformer_lumina2  # the stock processor calls its F.scaled_dot_product_attention

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: torch.Tensor | None = None,
                 base_sequence_length: int | None = None) -> torch.Tensor:
        route = self.route
        if (attention_mask is None or route is None or route.pattern is None
                or encoder_hidden_states is not hidden_states):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                    base_sequence_length)
        length = attention_mask.shape[1]
        padding = length - attention_mask.sum(dim=1, keepdim=True)  # (B, 1): the batch padding after the tokens
        positions = torch.arange(length, device=hidden_states.device)
        source, back = (positions - padding) % length, (positions + padding) % length  # rotate right, and back
        rolled = _take(hidden_states, source)
        out = super().__call__(attn, rolled, rolled, _take(attention_mask, source),
                               None if image_rotary_emb is None else _take(image_rotary_emb, source),
                               base_sequence_length)
        return _take(out, back)


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="lumina2",
    transformer_class=Lumina2Transformer2DModel,
    processor_class=GNALumina2AttnProcessor2_0,
    stock_processor_class=Lumina2AttnProcessor2_0,
    dispatch_module=transformer_lumina2,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"refiner": "noise_refiner", "main": "layers"},
    text_first=True,  # [caption, image] (the refiner: the image alone)
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
)

TEXT_WIDTH = 16  # the tiny Gemma 2's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> Lumina2Transformer2DModel:
    """A randomly initialised Lumina 2 transformer for CPU tests (4 query heads x 8 sharing 2 key/value heads, 2x2
    patches, 4 latent channels, one refiner block each)."""
    torch.manual_seed(seed)
    return Lumina2Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=num_layers, num_refiner_layers=1,
        num_attention_heads=4, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 2, 2), axes_lens=(300, 64, 64),
        cap_feat_dim=TEXT_WIDTH,
    ).eval()


latent_grid = flux.latent_grid  # FLUX's VAE (8x) and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, valid_text: tuple[int, ...] | None = None) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` Gemma 2 tokens per sample, the first
    ``valid_text[b]`` of sample b valid (all by default), the rest padding, as the pipeline passes them."""
    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    mask = torch.ones(batch, text, dtype=torch.long, device=device)
    for sample, count in enumerate(valid_text or ()):
        mask[sample, count:] = 0
    return dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                encoder_hidden_states=randn(batch, text, config.cap_feat_dim), encoder_attention_mask=mask,
                return_dict=False)


# Lumina-Image 2.0 (Alpha-VLLM/Lumina-Image-2.0): diffusers' class defaults (26 blocks and 2 + 2 refiner blocks,
# 24 query heads and 8 key/value heads of 96, Gemma 2 2B's 2304-wide prompt features).
FULL_CONFIG = dict(cap_feat_dim=2304)

DEFAULT_PRESET = "lumina2-2k"
DEFAULT_STEPS = 30  # the pipeline's default num_inference_steps
TEXT_TOKENS = 128  # valid prompt tokens (system prompt and prompt; the transformer drops the padding)
# hub names (Neta Lumina: a fine-tune; not Lumina-Next), for --random-weights
NAME_PATTERN = r"lumina-?(image-?)?2|neta-?lumina"


def tiny_tokenizer(add_bos_token: bool = False):
    """A Gemma tokenizer of one token per character (``add_bos_token``: starting every prompt with <bos>, as Gemma's
    own does)."""
    from transformers import GemmaTokenizer

    from ._tiny import CHARS

    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\u2581"] + list(CHARS)
    return GemmaTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], add_bos_token=add_bos_token)


def tiny_text_encoder(seed: int, vocab_size: int):
    """A 2-layer Gemma 2 of width ``TEXT_WIDTH``."""
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    return Gemma2Model(Gemma2Config(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
        pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()


def tiny_pipeline(seed: int = 0):
    """An offline Lumina2Pipeline with random weights (a tiny Gemma 2, FLUX's tiny VAE downsampling 8x as the
    pipeline assumes): 128x128 pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(seed, len(tokenizer))
    return Lumina2Pipeline(transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(),
                           vae=flux.tiny_vae(latent_channels=4, blocks=4), text_encoder=text_encoder,
                           tokenizer=tokenizer)


def tiny_call_kwargs() -> dict:
    return {}


TINY_SIZE = {"height": 128, "width": 128}  # the pipeline assumes an 8x VAE: 128 pixels -> an 8x8 grid
TINY_NAME = "tiny-lumina2"
