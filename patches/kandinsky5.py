"""Kandinsky 5.0 (Kandinsky5Transformer3DModel: Video Lite 2B, Video Pro 19B, Image Lite): text blocks
first, then visual blocks whose ``self_attention`` is over the visual tokens alone (text enters through each
visual block's ``cross_attention``). The visual blocks' self-attention is routed; the text blocks' and the
cross-attentions keep their stock processor (``Kandinsky5AttnProcessor`` serves all three).

Layout probe: hidden_states (B, T, H, W, C), channels last, over the patch size (1, 2, 2) -> (T, H / 2, W / 2),
from shapes (no host sync). The 10-second models run the transformer's own sparse attention (NABLA, on
tokens reordered into 8x8 tiles; the pipeline passes ``sparse_params``): those calls keep it, with a notice.

The HunyuanVideo VAE compresses 4x in time and 8x in space: 768x512, 121 frames -> 31x32x48 = 47,616
visual tokens; 1280x768 -> 31x48x80 = 119,040.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import Kandinsky5Transformer3DModel
from diffusers.models.transformers import transformer_kandinsky
from diffusers.models.transformers.transformer_kandinsky import Kandinsky5AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import forward_argument
from ._inputs import seeded_randn
from ._parallel import sublayer_plan


class GNAKandinsky5AttnProcessor(RoutedProcessorMixin, Kandinsky5AttnProcessor):
    """Kandinsky5AttnProcessor whose visual self-attention call runs GNA over the video grid; all else stock."""


def _layout(latents: torch.Tensor, transformer) -> TokenLayout:
    """The (frames, rows, cols) token grid of (B, T, H, W, C) latents."""
    _, frames, height, width, _ = latents.shape
    p_t, p_h, p_w = transformer.config.patch_size
    grid = (frames // p_t, height // p_h, width // p_w)
    return token_layout(grid, prod(grid))


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    if forward_argument(module, args, kwargs, "sparse_params") is not None:
        raise LayoutError("Kandinsky 5's own sparse attention (NABLA, sparse_params) is on: its visual tokens are "
                          "reordered into tiles, and those calls keep the model's attention")
    return _layout(forward_argument(module, args, kwargs, "hidden_states"), module)


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_latents``' result: the (B, T, H, W, C) latents, alone or first in a tuple."""
    latents = result[0] if isinstance(result, tuple) else result
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
        return None
    return _layout(latents, transformer)


def parallel_plan(transformer: torch.nn.Module, world: int) -> dict:
    """A context-parallel plan for Kandinsky 5, which diffusers 0.42 lacks: each visual block's self-attention (its
    tokens and their RoPE), cross-attention and feed-forward sharded and gathered (:func:`._parallel.sublayer_plan`).
    Without NABLA (whose 10-second models' sparse attention needs the blocks' fractal token order); works with the
    stock processors and with GNA's; ``apply`` installs it by itself."""
    tokens = {"hidden_states": 3}
    return sublayer_plan(transformer, ("visual_transformer_blocks",), {
        "self_attention": {"hidden_states": 3, "rotary_emb": 6}, "cross_attention": tokens,
        "feed_forward": {"x": 3}})


PATCH = ModelPatch(
    family="kandinsky5",
    transformer_class=Kandinsky5Transformer3DModel,
    processor_class=GNAKandinsky5AttnProcessor,
    stock_processor_class=Kandinsky5AttnProcessor,
    dispatch_module=transformer_kandinsky,
    blocks={"blocks": "visual_transformer_blocks"},
    text_first=False,  # no text in the visual self-attention sequence
    layout_probe=layout_probe,
    layout_from_prepared=layout_from_prepared,
    video=True,
    adoptable_processors=(Kandinsky5AttnProcessor,),
    attention="self_attention",
    parallel_plan=parallel_plan,  # diffusers 0.42 has none for Kandinsky 5
)

TEXT_WIDTH, POOLED_WIDTH = 16, 8  # the tiny Qwen2.5-VL's and CLIP's hidden sizes


def tiny_transformer(seed: int = 0, num_layers: int = 2, visual_cond: bool = False) -> Kandinsky5Transformer3DModel:
    """A randomly initialised Kandinsky 5 transformer for CPU tests (2 heads x 16, 4 latent channels; with
    ``visual_cond``, the image-to-video condition's channels as the released models take them). Its
    modulation layers start at zero (adaLN-zero), which would gate every attention output to nothing: they
    get random values too, as a trained model has."""
    from ._tiny import randomize_modulation

    torch.manual_seed(seed)
    model = Kandinsky5Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=TEXT_WIDTH, in_text_dim2=POOLED_WIDTH, time_dim=16,
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=num_layers, axes_dims=(4, 6, 6),
        visual_cond=visual_cond,
    ).eval()
    return randomize_modulation(model)


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Visual-token grid: the VAE compresses 4x in time (frames = 4k + 1) and 8x in space, patches 1x2x2."""
    frames = 1 if frames is None else frames  # the image models: one frame
    if (frames - 1) % 4:
        raise ValueError(f"Kandinsky 5 needs a frame count of the form 4k + 1 (e.g. 121), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"Kandinsky 5 needs height and width divisible by 16, got {height}x{width}")
    return (frames - 1) // 4 + 1, height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) token grid with ``text`` Qwen2.5-VL tokens, as the
    text-to-video pipeline passes them (with its conditioning channels when the model takes them)."""
    config = transformer.config
    p_t, p_h, p_w = config.patch_size
    frames, rows, cols = grid
    channels = 2 * config.in_visual_dim + 1 if config.visual_cond else config.in_visual_dim
    randn = seeded_randn(seed, device, dtype)

    return dict(
        hidden_states=randn(batch, frames * p_t, rows * p_h, cols * p_w, channels),
        encoder_hidden_states=randn(batch, text, config.in_text_dim),
        timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
        pooled_projections=randn(batch, config.in_text_dim2),
        visual_rope_pos=[torch.arange(size, device=device) for size in grid],
        text_rope_pos=torch.arange(text, device=device),
        scale_factor=(1, 2, 2), return_dict=False,
    )


# Kandinsky 5.0 Video Lite (2B) and Pro (19B): Qwen2.5-VL text features of width 3584, CLIP pooled 768,
# 16 latent channels plus the image-to-video condition and its mask.
FULL_CONFIG_LITE = dict(in_visual_dim=16, out_visual_dim=16, time_dim=512, model_dim=1792, ff_dim=7168,
                        num_text_blocks=2, num_visual_blocks=32, axes_dims=(16, 24, 24), visual_cond=True)
FULL_CONFIG = dict(FULL_CONFIG_LITE, time_dim=1024, model_dim=4096, ff_dim=16384, num_text_blocks=4,
                   num_visual_blocks=60, axes_dims=(32, 48, 48))


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: Pro (19B) for names with
    "pro", else Lite (2B)."""
    return (FULL_CONFIG if "pro" in model_name.lower() else FULL_CONFIG_LITE), latent_grid


DEFAULT_PRESET = "kandinsky5-512p"
DEFAULT_STEPS = 50  # Kandinsky5T2VPipeline's default num_inference_steps
TEXT_TOKENS = 256  # the pipelines' max_sequence_length (Qwen2.5-VL): cross-attention only


def tiny_parts(seed: int = 0) -> dict:
    """Everything of the tiny pipelines but the transformer. The tokenizer is a byte-level Qwen2 tokenizer: the
    pipelines' Qwen2-VL processor, called on text alone, is its tokenizer."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ._tiny import byte_level_tokenizer, clip_text_encoder, clip_tokenizer
    from .hunyuan_video import tiny_vae

    tokenizer, tokenizer_2 = byte_level_tokenizer(), clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_WIDTH,
                           fullatt_block_indexes=[0]),
    )).eval()
    return dict(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                text_encoder_2=clip_text_encoder(POOLED_WIDTH, len(tokenizer_2), seed),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))


def tiny_pipeline(seed: int = 0):
    """An offline Kandinsky5T2VPipeline with random weights: 32x32 pixels x 5 frames -> a 2x4x4 token grid."""
    from diffusers import Kandinsky5T2VPipeline

    return Kandinsky5T2VPipeline(transformer=tiny_transformer(seed), **tiny_parts(seed))


def tiny_call_kwargs() -> dict:
    """Pipeline call arguments for the tiny pipeline: a text budget that holds the whole prompt template (one
    token per byte here, so no truncation warning), 5 frames."""
    return dict(max_sequence_length=1024, num_frames=5)


TINY_NAME = "tiny-kandinsky5"
NAME_PATTERN = r"kandinsky-?5"  # hub names of this family, for --random-weights
