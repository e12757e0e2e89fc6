"""HunyuanVideo 1.5 (HunyuanVideo15Transformer3DModel, HunyuanVideo15AttnProcessor2_0): the joint sequence is
[video, LLM text, ByT5 text, SigLIP image tokens] with the valid text compacted first, and the processor
builds a boolean (B, 1, S, S) mask, "query valid and key valid"; the route reads the grid queries' key
validity from a grid query's row. Only ``transformer_blocks`` are routed: the token refiner (legacy
``AttnProcessor2_0``) is untouched.

Layout probe: hidden_states (B, C, F, H, W) with patch 1x1x1 -> the (F, H, W) grid, from shapes (no sync).
The VAE compresses 16x in space and 4x in time: 720p, 121 frames -> 31x45x80 = 111,600 video tokens.
"""

from __future__ import annotations


import torch
from diffusers import HunyuanVideo15Transformer3DModel
from diffusers.models.transformers import transformer_hunyuan_video15
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNAHunyuanVideo15AttnProcessor(RoutedProcessorMixin, HunyuanVideo15AttnProcessor2_0):
    """HunyuanVideo15AttnProcessor2_0 whose attention call runs GNA over the video grid; all else stock."""


LAYOUT = VideoLatentLayout(lambda transformer: (transformer.config.patch_size_t, transformer.config.patch_size,
                                                transformer.config.patch_size))


PATCH = ModelPatch(
    family="hunyuan-video-1.5",
    transformer_class=HunyuanVideo15Transformer3DModel,
    processor_class=GNAHunyuanVideo15AttnProcessor,
    stock_processor_class=HunyuanVideo15AttnProcessor2_0,
    dispatch_module=transformer_hunyuan_video15,
    blocks={"blocks": "transformer_blocks"},
    text_first=False,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    adoptable_processors=(HunyuanVideo15AttnProcessor2_0,),
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> HunyuanVideo15Transformer3DModel:
    """A randomly initialised HunyuanVideo 1.5 transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(4, 4, 8),
        target_size=32, task_type="t2v",
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 4x in time (frames = 4k + 1) and 16x in space, patch 1x1x1."""
    if frames is None or (frames - 1) % 4:
        raise ValueError(f"HunyuanVideo 1.5 needs a frame count of the form 4k + 1 (e.g. 121), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"HunyuanVideo 1.5 needs height and width divisible by 16, got {height}x{width}")
    return (frames - 1) // 4 + 1, height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1,
                       valid_text: tuple[int, ...] | None = None, image_tokens: int = 729, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) grid: ``text`` LLM tokens (``valid_text``: each
    sample's unpadded length), 8 ByT5 tokens (all valid) and ``image_tokens`` zero SigLIP embeddings, which
    the model reads as text-to-video (they are masked out)."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    valid = torch.tensor(valid_text if valid_text is not None else (text,) * batch, device=device)
    byt5 = 8

    return dict(
        hidden_states=randn(len(valid), config.in_channels, *grid),
        timestep=torch.full((len(valid),), 500.0, device=device, dtype=dtype),
        encoder_hidden_states=randn(len(valid), text, config.text_embed_dim),
        encoder_attention_mask=(torch.arange(text, device=device)[None, :] < valid[:, None]).long(),
        encoder_hidden_states_2=randn(len(valid), byt5, config.text_embed_2_dim),
        encoder_attention_mask_2=torch.ones(len(valid), byt5, dtype=torch.long, device=device),
        image_embeds=torch.zeros(len(valid), image_tokens, config.image_embed_dim, device=device, dtype=dtype),
        return_dict=False,
    )


# HunyuanVideo 1.5 (8.3B), text-to-video: 54 blocks, 16 heads x 128.
FULL_CONFIG = dict(
    in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
    num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=3584,
    text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
    task_type="t2v",
)
DEFAULT_PRESET = "hunyuan-video-1.5-720p"  # what `gna-diffusers compare` uses when no preset is given
DEFAULT_STEPS = 50
TEXT_TOKENS = 256  # a long prompt's LLM tokens (the pipeline keeps up to 1000)


def tiny_text_parts(seed: int = 0) -> dict:
    """The two tiny text encoders, as HunyuanVideo 1.5's and HunyuanImage 2.1's pipelines take them: a byte-level
    tokenizer with a 2-layer 16-wide Qwen2.5-VL text model, and ByT5's tokenizer with a 1-layer 8-wide T5."""
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    from ._tiny import byte_level_tokenizer

    tokenizer, tokenizer_2 = byte_level_tokenizer(), ByT5Tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
    )).eval()
    text_encoder_2 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer_2), d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    ).eval()
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2)


def tiny_pipeline(seed: int = 0):
    """An offline HunyuanVideo15Pipeline with random weights: 32x32 pixels x 5 frames -> a 3x8x8 token grid
    (the tiny VAE compresses 2x in time and 4x in space, the real one 4x / 16x)."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15Pipeline)

    text_parts = tiny_text_parts(seed)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1,
                                      spatial_compression_ratio=4, temporal_compression_ratio=2).eval()
    return HunyuanVideo15Pipeline(
        transformer=tiny_transformer(seed), vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        guider=ClassifierFreeGuidance(guidance_scale=6.0), **text_parts,
    )


def tiny_call_kwargs() -> dict:
    return dict(num_frames=5)


TINY_NAME = "tiny-hunyuan-video-1.5"
NAME_PATTERN = r"hunyuan-?video[-_.]?1[._]5"  # hub names of this family, for --random-weights
