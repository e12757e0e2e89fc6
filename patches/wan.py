"""Wan 2.1 / 2.2 (WanTransformer3DModel): each block's ``attn1`` is self-attention over the video tokens
alone (RoPE inside the processor, no text in the sequence); ``attn2`` is the text (and, for image-to-video,
image) cross-attention and keeps its stock processor. Both use ``WanAttnProcessor``: only ``attn1`` is
routed. Wan 2.2 A14B pipelines hold two experts (``transformer`` for high noise, ``transformer_2`` for
low noise) behind one scheduler: both are patched, and steps count across both. Wan VACE
(``WanVACETransformer3DModel``) adds ``vace_blocks`` (block type ``vace``), whose ``attn1`` attends over
the control video's tokens on the same grid: routed too.

Layout probe: hidden_states (B, C, F, H, W) with patch (1, 2, 2) -> (F, H / 2, W / 2), from shapes (no
sync). Image-to-video and Lucy Edit concatenate their condition along channels: the grid is unchanged.
"""

from __future__ import annotations

import functools
import inspect

import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from diffusers.models.transformers import transformer_wan
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from ._inputs import seeded_randn
from ._latents import VideoLatentLayout, leading_frames_as_context
from ._parallel import sublayer_plan


class GNAWanAttnProcessor(RoutedProcessorMixin, WanAttnProcessor):
    """WanAttnProcessor whose self-attention call runs GNA over the video grid; everything else is stock."""


LAYOUT = VideoLatentLayout(lambda transformer: tuple(transformer.config.patch_size))


def vace_reference_frames(args: tuple, kwargs: dict):
    """From a WanVACEPipeline.prepare_video_latents(video, mask, reference_images, ...) call: the layout change
    its reference images make. Each adds a latent frame before the video's in the latents prepare_latents
    makes next; they are context, which every video token attends to (for the subject's identity)."""
    from diffusers import WanVACEPipeline

    references = inspect.signature(WanVACEPipeline.prepare_video_latents).bind_partial(
        None, *args, **kwargs).arguments.get("reference_images")
    frames = sum(image is not None for image in references[0]) if references else 0
    return functools.partial(leading_frames_as_context, frames=frames)


def parallel_plan(transformer: torch.nn.Module, world: int) -> dict:
    """A context-parallel plan for the Wan-architecture transformers diffusers 0.42 ships none for (Wan VACE,
    SkyReels-V2, Wan Animate; plain Wan has diffusers' own): the RoPE split with the sequence, and each block's
    self-attention, cross-attention and feed-forward (the main blocks' and VACE's control blocks') sharded and
    gathered (:func:`._parallel.sublayer_plan`), so a per-token modulation (SkyReels-V2's diffusion forcing), VACE's
    control hints and Animate's face adapters need nothing of their own. Works with the stock processors and with
    GNA's; pass it as ``transformer.enable_parallelism(config=..., cp_plan=parallel_plan(transformer, world))``
    (GNA's ``apply`` first does this by itself)."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    tokens = {"hidden_states": 3}
    return {
        "rope": {i: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True) for i in (0, 1)},
        **sublayer_plan(transformer, ("blocks", "vace_blocks"), {"attn1": tokens, "attn2": tokens, "ffn": tokens}),
    }


PATCH = ModelPatch(
    family="wan",
    transformer_class=WanTransformer3DModel,
    processor_class=GNAWanAttnProcessor,
    stock_processor_class=WanAttnProcessor,
    dispatch_module=transformer_wan,
    blocks={"blocks": "blocks", "vace": "vace_blocks"},  # VACE's control blocks: self-attention on the same grid
    text_first=False,  # no text in the self-attention sequence
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    adoptable_processors=(WanAttnProcessor,),
    attention="attn1",
    other_transformer_classes=(WanVACETransformer3DModel,),
    pipeline_transformers=("transformer", "transformer_2"),
    pipeline_observers={"prepare_video_latents": vace_reference_frames},
    parallel_plan=parallel_plan,  # used where the transformer class has no plan of diffusers' (VACE)
)


# The tiny test transformer's shape (also the Wan-architecture families' base: SkyReels-V2, ChronoEdit).
TINY_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=32, ffn_dim=32, rope_max_seq_len=64,
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> WanTransformer3DModel:
    """A randomly initialised Wan transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_CONFIG, num_layers=num_layers).eval()


def tiny_vace_transformer(seed: int = 0, num_layers: int = 2, vace_in_channels: int = 8) -> WanVACETransformer3DModel:
    """A randomly initialised Wan VACE transformer for CPU tests: the tiny Wan's shape, a control block beside every
    block."""
    torch.manual_seed(seed)
    return WanVACETransformer3DModel(**TINY_CONFIG, num_layers=num_layers, vace_layers=list(range(num_layers)),
                                     vace_in_channels=vace_in_channels).eval()


def latent_grid(height: int, width: int, frames: int | None = None, vae_spatial: int = 8) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 4x in time (frames = 4k + 1) and ``vae_spatial``x in space (8;
    Wan 2.2 TI2V-5B: 16), patches are 1x2x2."""
    if frames is None or (frames - 1) % 4:
        raise ValueError(f"Wan needs a frame count of the form 4k + 1 (e.g. 81), got {frames}")
    unit = 2 * vae_spatial
    if height % unit or width % unit:
        raise ValueError(f"this Wan model needs height and width divisible by {unit}, got {height}x{width}")
    return (frames - 1) // 4 + 1, height // unit, width // unit


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) token grid with ``text`` UMT5 tokens."""
    config = transformer.config
    p_t, p_h, p_w = config.patch_size
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)

    return dict(
        hidden_states=randn(batch, config.in_channels, frames * p_t, rows * p_h, cols * p_w),
        timestep=torch.full((batch,), 500, device=device),
        encoder_hidden_states=randn(batch, text, config.text_dim),
        return_dict=False,
    )


# Wan 2.1 T2V 14B (Wan 2.2 A14B's experts have the same shape); for timing with random weights.
FULL_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
# Wan 2.2 TI2V 5B: 24 heads x 128, 30 layers, 48 latent channels (its VAE compresses 16x in space).
FULL_CONFIG_TI2V_5B = dict(
    FULL_CONFIG, num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336, num_layers=30,
)
# Wan 2.1 T2V 1.3B: 12 heads x 128, 30 layers.
FULL_CONFIG_1_3B = dict(FULL_CONFIG, num_attention_heads=12, ffn_dim=8960, num_layers=30)


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: Wan 2.2 TI2V-5B, Wan 2.1
    1.3B, or else the 14B shape (Wan 2.1 14B and each Wan 2.2 A14B expert)."""
    name = model_name.lower()
    if "ti2v" in name or "5b" in name:
        return FULL_CONFIG_TI2V_5B, functools.partial(latent_grid, vae_spatial=16)
    if "1.3b" in name:
        return FULL_CONFIG_1_3B, latent_grid
    return FULL_CONFIG, latent_grid
DEFAULT_PRESET = "wan-720p"  # what `gna-diffusers compare` uses when no preset is given
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 512  # the pipeline's max_sequence_length (UMT5)


def tiny_parts(seed: int) -> dict:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    from ._tiny import CHARS

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in CHARS]
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    ).eval()
    z_dim = 4
    # 2x in time and 4x in space (the real VAE: 4x / 8x), so 32x32 pixels give a 4x4 token grid.
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim, scale_factor_temporal=2, scale_factor_spatial=4,
    ).eval()
    return dict(tokenizer=T5Tokenizer(vocab=vocab, extra_ids=0), text_encoder=text_encoder, vae=vae,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))


def tiny_pipeline(seed: int = 0):
    """An offline WanPipeline with random weights: 32x32 pixels x 9 frames -> a 5x4x4 latent token grid."""
    from diffusers import WanPipeline

    return WanPipeline(transformer=tiny_transformer(seed), **tiny_parts(seed))


def tiny_two_expert_pipeline(seed: int = 0, boundary_ratio: float = 0.5):
    """Like :func:`tiny_pipeline` with Wan 2.2 A14B's two experts (switched at ``boundary_ratio``)."""
    from diffusers import WanPipeline

    return WanPipeline(transformer=tiny_transformer(seed), transformer_2=tiny_transformer(seed + 1),
                       boundary_ratio=boundary_ratio, **tiny_parts(seed))


def tiny_call_kwargs() -> dict:
    """Pipeline call arguments for the tiny pipeline (short UMT5 sequence: the tokenizer is per character)."""
    return dict(max_sequence_length=48, num_frames=9)


TINY_NAME = "tiny-wan"
NAME_PATTERN = r"\bwan(?!.*animate)"  # hub names of this family (not Wan Animate's), for --random-weights
