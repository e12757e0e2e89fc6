"""EasyAnimate V5.1 (EasyAnimateTransformer3DModel, Alibaba PAI's 12B MMDiT video model) and its image-to-video
(inpaint) and control pipelines. Each block's ``attn1`` is joint attention over [text, video]: the Qwen2-VL prompt
(and T5's, where a model has both), then the video grid; no padding mask (every text token is attended).

The stock processor calls ``F.scaled_dot_product_attention`` itself: GNA routes that call as CogVideoX's
(``calls_sdpa``).

Layout probe: hidden_states (B, C, F, H, W) over the 2x2 spatial patch: (F, H / 2, W / 2). The inpaint and control
latents are concatenated along channels, so the grid is the latents'. The Magvit VAE compresses 4x in time and 8x
in space: 1024x1024, 49 frames -> a 13x64x64 grid (53,248 video tokens).
"""

from __future__ import annotations

import torch
from diffusers import EasyAnimateTransformer3DModel
from diffusers.models.transformers import transformer_easyanimate
from diffusers.models.transformers.transformer_easyanimate import EasyAnimateAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNAEasyAnimateAttnProcessor(RoutedProcessorMixin, EasyAnimateAttnProcessor2_0):
    """EasyAnimateAttnProcessor2_0 whose joint attention runs GNA over the video grid; everything else is stock."""

    routes_sdpa_calls_of = transformer_easyanimate  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = VideoLatentLayout(lambda transformer: (1, transformer.config.patch_size, transformer.config.patch_size))

PATCH = ModelPatch(
    family="easyanimate",
    transformer_class=EasyAnimateTransformer3DModel,
    processor_class=GNAEasyAnimateAttnProcessor,
    stock_processor_class=EasyAnimateAttnProcessor2_0,
    dispatch_module=transformer_easyanimate,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "transformer_blocks"},
    text_first=True,
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    attention="attn1",
)

TEXT_WIDTH = 16  # the tiny Qwen2-VL's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> EasyAnimateTransformer3DModel:
    """A randomly initialised EasyAnimate transformer for CPU tests (2 heads x 16, MMDiT blocks, 2x2 patches)."""
    torch.manual_seed(seed)
    return EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2,
        num_layers=num_layers, mmdit_layers=num_layers, time_embed_dim=8, text_embed_dim=TEXT_WIDTH, sample_width=8,
        sample_height=8,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid: the Magvit VAE compresses 4x in time (frames = 4k + 1) and 8x in space, patches are 2x2."""
    if frames is None or (frames - 1) % 4:
        raise ValueError(f"EasyAnimate needs a frame count of the form 4k + 1 (e.g. 49), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"EasyAnimate needs height and width divisible by 16, got {height}x{width}")
    return (frames - 1) // 4 + 1, height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) grid with ``text`` prompt tokens, as the pipeline
    passes them: latents, the timestep, Qwen2-VL features."""
    config = transformer.config
    p = config.patch_size
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    return dict(hidden_states=randn(batch, config.in_channels, frames, rows * p, cols * p),
                timestep=torch.full((batch,), 500, device=device, dtype=torch.long),
                encoder_hidden_states=randn(batch, text, config.text_embed_dim), return_dict=False)


# EasyAnimateV5.1-12b text-to-video: diffusers' class defaults (48 MMDiT blocks, 48 heads x 64, Qwen2-VL-7B text)
# with the Magvit VAE's 16 latent channels and 2x2 patches.
FULL_CONFIG = dict(in_channels=16, out_channels=16, patch_size=2)


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: the 12B; the 7B's shape is not
    known offline."""
    if "7b" in model_name.lower():
        raise ValueError(f"{model_name}: no full-size EasyAnimate 7B shape is known offline; --random-weights times "
                         f"the 12B (e.g. alibaba-pai/EasyAnimateV5.1-12b-zh-diffusers)")
    return FULL_CONFIG, latent_grid


DEFAULT_PRESET = "easyanimate-1024"
DEFAULT_STEPS = 50  # the pipelines' default num_inference_steps
TEXT_TOKENS = 256  # the pipelines' max_sequence_length (Qwen2-VL), every token in the joint sequence
NAME_PATTERN = r"easyanimate"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline EasyAnimatePipeline with random weights (a byte-level Qwen2 tokenizer and a tiny Qwen2-VL, a tiny
    Magvit VAE: 4x in time, 8x in space): 32x32 pixels x 9 frames -> a 3x2x2 token grid; 64x64 (TINY_SIZE) ->
    3x4x4."""
    from diffusers import AutoencoderKLMagvit, EasyAnimatePipeline, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None,
                eos_token_id=None, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    text_encoder = Qwen2VLForConditionalGeneration(Qwen2VLConfig(
        text_config=text, vision_config=dict(depth=1, embed_dim=16, hidden_size=TEXT_WIDTH, num_heads=2, mlp_ratio=2),
    )).eval()
    vae = AutoencoderKLMagvit(latent_channels=4, block_out_channels=(8,) * 4, layers_per_block=1,
                              norm_num_groups=2).eval()
    return EasyAnimatePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                               transformer=tiny_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler())


TINY_SIZE = {"height": 64, "width": 64}  # a 4x4 spatial grid (32x32 pixels give 2x2)


def tiny_call_kwargs() -> dict:
    # The pipeline fails on negative_prompt=None with classifier-free guidance (diffusers 0.42): an empty one.
    return dict(num_frames=9, negative_prompt="")


TINY_NAME = "tiny-easyanimate"
