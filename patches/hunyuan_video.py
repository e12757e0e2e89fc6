"""HunyuanVideo (HunyuanVideoTransformer3DModel): joint sequence [image, text], RoPE on image tokens,
right-padded text with a boolean key mask (B, 1, 1, S). The token refiner (AttnProcessor2_0) is not
touched: processors are installed per layer of the dual- and single-stream blocks only.

Layout probe: hidden_states (B, C, F, H, W) -> (F / patch_t, H / patch, W / patch), from shapes (no sync).

FramePack (HunyuanVideoFramepackTransformer3DModel: the same blocks and processor) generates a video in
sections; each call's image stream is [4x history, 2x history, clean latents, section grid]: the history
tokens (their counts from their latents' shapes) are context before the grid, as the text after it.
Batches above 1 mask [image stream, valid text] with a (B, 1, 1, S) key mask, as HunyuanVideo does.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel, HunyuanVideoTransformer3DModel
from diffusers.models.transformers import transformer_hunyuan_video
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import forward_argument
from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNAHunyuanVideoAttnProcessor(RoutedProcessorMixin, HunyuanVideoAttnProcessor2_0):
    """HunyuanVideoAttnProcessor2_0 whose attention call runs GNA over the video grid; all else stock."""


LAYOUT = VideoLatentLayout(lambda transformer: (transformer.config.patch_size_t, transformer.config.patch_size,
                                                transformer.config.patch_size))

# FramePack's history inputs, in the order the forward puts them before the grid (each prepended in turn),
# reversed: (latents, their frame indices, the patch embedder's kernel, whether it pads to the kernel).
FRAMEPACK_HISTORY = (
    ("latents_history_4x", "indices_latents_history_4x", (4, 8, 8), True),
    ("latents_history_2x", "indices_latents_history_2x", (2, 4, 4), True),
    ("latents_clean", "indices_latents_clean", (1, 2, 2), False),
)


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The video grid of ``hidden_states``; for FramePack also the history tokens before it, counted from the
    history latents' shapes (the forward packs those whose frame indices are given)."""
    layout = LAYOUT.probe(module, args, kwargs, prepared)
    if not isinstance(module, HunyuanVideoFramepackTransformer3DModel):
        return layout
    history = 0
    for latents_name, indices_name, kernel, padded in FRAMEPACK_HISTORY:
        latents = forward_argument(module, args, kwargs, latents_name)
        if latents is not None and forward_argument(module, args, kwargs, indices_name) is not None:
            history += prod(-(-n // k) if padded else n // k for n, k in zip(latents.shape[2:], kernel))
    return token_layout(layout.grid, history + prod(layout.grid), history)


PATCH = ModelPatch(
    family="hunyuan-video",
    transformer_class=HunyuanVideoTransformer3DModel,
    processor_class=GNAHunyuanVideoAttnProcessor,
    stock_processor_class=HunyuanVideoAttnProcessor2_0,
    dispatch_module=transformer_hunyuan_video,
    blocks={"double": "transformer_blocks", "single": "single_transformer_blocks"},
    text_first=False,
    layout_probe=layout_probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    adoptable_processors=(HunyuanVideoAttnProcessor2_0,),
    other_transformer_classes=(HunyuanVideoFramepackTransformer3DModel,),
    # Defined below; FramePack's RoPE and history tokens would need a plan of their own (none).
    parallel_plan=lambda transformer, world: (
        parallel_plan(transformer, world) if isinstance(transformer, HunyuanVideoTransformer3DModel) else None),
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> HunyuanVideoTransformer3DModel:
    """A randomly initialised HunyuanVideo transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 4, 8),
    ).eval()


def tiny_framepack_transformer(seed: int = 0) -> HunyuanVideoFramepackTransformer3DModel:
    """A randomly initialised FramePack transformer for CPU tests (2 heads x 16, 4 latent channels, 2x2
    patches as the history embedder's, 8-wide image embeddings)."""
    torch.manual_seed(seed)
    return HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(4, 4, 8), has_image_proj=True, image_proj_dim=8, has_clean_x_embedder=True,
        guidance_embeds=False,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 4x in time (frames = 4k + 1) and 8x in space, patches are 2x2."""
    if frames is None or (frames - 1) % 4:
        raise ValueError(f"HunyuanVideo needs a frame count of the form 4k + 1 (e.g. 117, 129), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"HunyuanVideo needs height and width divisible by 16, got {height}x{width}")
    return (frames - 1) // 4 + 1, height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1,
                       valid_text: tuple[int, ...] | None = None, device="cpu", dtype=torch.float32,
                       seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) token grid; ``valid_text`` gives each batch
    element's real (unpadded) text length (default: all ``text`` tokens real)."""
    config = transformer.config
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    valid = torch.tensor(valid_text if valid_text is not None else (text,) * batch, device=device)

    inputs = dict(
        hidden_states=randn(len(valid), config.in_channels, frames * config.patch_size_t, rows * config.patch_size,
                            cols * config.patch_size),
        timestep=torch.full((len(valid),), 500, device=device),
        encoder_hidden_states=randn(len(valid), text, config.text_embed_dim),
        encoder_attention_mask=torch.arange(text, device=device)[None, :] < valid[:, None],
        pooled_projections=randn(len(valid), config.pooled_projection_dim),
        return_dict=False,
    )
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((len(valid),), 6000.0, device=device, dtype=dtype)
    return inputs


# The HunyuanVideo transformer (for timing with random weights: no checkpoint needed).
FULL_CONFIG = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
    guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
    rope_axes_dim=(16, 56, 56),
)
DEFAULT_PRESET = "hunyuan-video-720p"  # what `gna-diffusers compare` uses when no preset is given
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 256  # the pipeline's default max_sequence_length


def tiny_vae():
    """A 4-channel HunyuanVideo VAE that compresses 4x in time and in space (the real one: 4x / 8x)."""
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3, up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=4,
        temporal_compression_ratio=4, mid_block_add_attention=False,
    ).eval()


def tiny_llama_tokenizer():
    """A Llama tokenizer of one token per character, padding on the right as the real one does (pad: "</s>")."""
    from transformers import LlamaTokenizer

    from ._tiny import CHARS

    pieces = ["<unk>", "<s>", "</s>", "\u2581"] + list(CHARS)
    tokenizer = LlamaTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], padding_side="right")
    tokenizer.pad_token = "</s>"
    return tokenizer


def tiny_pipeline(seed: int = 0):
    """An offline HunyuanVideoPipeline with random weights: 32x32 pixels x 5 frames -> a 2x8x8 latent grid.

    The Llama tokenizer pads on the right, as the real one does, so padded text gets a key mask.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import LlamaConfig, LlamaModel

    from ._tiny import clip_text_encoder, clip_tokenizer

    tokenizer = tiny_llama_tokenizer()
    torch.manual_seed(seed)
    text_encoder = LlamaModel(
        LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                    pad_token_id=2, bos_token_id=1, eos_token_id=2)
    ).eval()
    tokenizer_2 = clip_tokenizer()
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=tiny_transformer(seed),
        vae=tiny_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip_text_encoder(8, len(tokenizer_2), seed),
        tokenizer_2=tokenizer_2,
    )


def tiny_framepack_pipeline(seed: int = 0):
    """An offline HunyuanVideoFramepackPipeline: the tiny pipeline's text encoders and VAE, the tiny FramePack
    transformer and a 1-layer 8-wide SigLIP for the image embeddings."""
    from diffusers import HunyuanVideoFramepackPipeline
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    parts = tiny_pipeline(seed).components
    torch.manual_seed(seed)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8)).eval()
    return HunyuanVideoFramepackPipeline(
        **{**parts, "transformer": tiny_framepack_transformer(seed)}, image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}))


def tiny_call_kwargs() -> dict:
    """Pipeline call arguments the tiny pipeline needs: the stock prompt template crops 95 tokens of the
    real Llama tokenizer, which a character-level vocabulary does not match, so use a bare template."""
    return dict(prompt_template={"template": "{}", "crop_start": 0}, max_sequence_length=48, num_frames=5)


TINY_NAME = "tiny-hunyuan-video"
# Hub names of this family, for --random-weights (HunyuanVideo 1.5 is another family).
NAME_PATTERN = r"^(?!.*hunyuan-?video[-_.]?1[._]5).*hunyuan-?video"


def _mask_to_rank_major(world: int):
    """A block pre-hook: the joint [video, text] key mask (B, 1, 1, N + M) in rank-major order
    ([video_0, text_0, video_1, text_1, ...]), so the plan's even split hands each rank the mask of its own
    shards. Block 0 sees the whole video and text, later blocks their shards (the plan split them). Every
    block gets the forward's one mask: it is reordered once per forward and reused."""
    import weakref

    from gna_diffusers.parallel import sharded_order

    last: list = [None, None]  # (weak reference to the forward's mask, its reordered copy)

    def reorder(block, args, kwargs):
        names = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask")
        values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        mask = values.get("attention_mask")
        if mask is None:
            return None
        if last[0] is None or last[0]() is not mask:
            video, text = values["hidden_states"].shape[1], values["encoder_hidden_states"].shape[1]
            if video + text != mask.shape[-1]:  # shards: the whole sequence is world times longer
                video, text = video * world, text * world
            last[:] = weakref.ref(mask), mask[..., sharded_order(world, video // world, text // world, mask.device)]
        if "attention_mask" in kwargs:
            return args, {**kwargs, "attention_mask": last[1]}
        return (*args[:3], last[1], *args[4:]), kwargs

    return reorder


def parallel_plan(transformer: torch.nn.Module, world: int) -> dict:
    """A context-parallel plan for HunyuanVideo (and HunyuanImage 2.1, whose blocks, RoPE and mask are laid out the
    same way), which diffusers 0.42 lacks: RoPE, video and text split evenly over the ranks, each block's key mask
    reordered (see :func:`_mask_to_rank_major`) and split, the output gathered. Works with the stock processors and
    with GNA's; pass it as ``transformer.enable_parallelism(config=..., cp_plan=parallel_plan(transformer, world))``
    (GNA's ``apply`` first does this by itself)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    if not getattr(transformer, "_gna_mask_hooks", None):
        transformer._gna_mask_hooks = [
            block.register_forward_pre_hook(_mask_to_rank_major(world), with_kwargs=True)
            for blocks in (transformer.transformer_blocks, transformer.single_transformer_blocks) for block in blocks
        ]
    mask = {"attention_mask": ContextParallelInput(split_dim=3, expected_dims=4, split_output=False)}
    return {
        "rope": {i: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True) for i in (0, 1)},
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "transformer_blocks.*": mask,
        "single_transformer_blocks.*": mask,
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }
