"""LTX-2 (LTX2VideoTransformer3DModel): a video stream and an audio stream in every block. Each block's
``attn1`` is self-attention over the video tokens alone (RoPE inside the processor, no text in the
sequence): routed. The audio self-attention, the text cross-attentions and the audio <-> video
cross-attentions keep their stock processors (one class, ``LTX2AudioVideoAttnProcessor``, serves all six;
LTX-2.3's ``perturbed_attn`` blocks use ``LTX2PerturbedAttnProcessor``, routed the same way).

Layout probe: the call's ``num_frames``, ``height`` and ``width`` (latent units; plain ints, so no host
sync) over the patch sizes give the (frames, rows, cols) grid of the first tokens of ``hidden_states``
(B, N, C); a call that passes only ``video_coords`` (LTX-2.5's DFR pipeline, whole or per spatial tile) gives it
through the positions, read once per positions tensor. Conditioning tokens the pipelines append after the grid
(keyframes, IC-LoRA reference videos) are context, and so are those Echo's modular pipeline puts before it (its
image-memory slots): where a call has more tokens than its sizes' grid, the positions say which end the grid is at.
A video self-attention mask (``video_self_attention_mask``, per query and head) is not a window: those calls run
dense with a warning.

The VAE compresses 8x in time and 32x in space, patch 1x1x1: 1920x1088, 121 frames -> 16x34x60 = 32,640
video tokens; 3840x2176 -> 16x68x120 = 130,560.
"""

from __future__ import annotations

import functools
import math
from math import prod

import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.models.transformers import transformer_ltx2
from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor, LTX2PerturbedAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import ltx_video
from ._forward import ReadOncePerTensor, forward_argument
from ._inputs import seeded_randn
from ._latents import latent_size_grid, leading_run, row_major_plane


class GNALTX2AttnProcessor(RoutedProcessorMixin, LTX2AudioVideoAttnProcessor):
    """LTX2AudioVideoAttnProcessor whose video self-attention call runs GNA over the video grid; all else stock."""


class GNALTX2PerturbedAttnProcessor(RoutedProcessorMixin, LTX2PerturbedAttnProcessor):
    """LTX2PerturbedAttnProcessor (LTX-2.3) whose attention call runs GNA; perturbation and gates stock."""


def grid_from_coords(coords: torch.Tensor) -> tuple[int, int, int] | None:
    """The (frames, rows, cols) box of video patches that ``video_coords`` (B, 3, N, [start, end)) begin with, or
    None: row-major, each frame a whole (rows, cols) plane at the first frame's spatial positions, starting where the
    previous frame ends and, after the second, as long as the second (the first is the causal single-pixel frame).
    The tokens after the box (keyframes, generated slots, references the pipelines append) are context. A keyframe
    frame appended right where the box ends, as long as its frames, would read as one more frame. One host sync."""
    start, end = coords[0, :, :, 0].double().cpu(), coords[0, 0, :, 1].double().cpu()
    tokens = start.shape[1]
    plane = leading_run(start[0] == start[0, 0])  # the first frame's tokens
    heights, widths = start[1, :plane], start[2, :plane]
    sizes = row_major_plane(heights, widths)
    if sizes is None:
        return None
    frames = 1
    while (frames + 1) * plane <= tokens:
        frame = slice(frames * plane, (frames + 1) * plane)
        first = frame.start
        uniform = bool((start[0, frame] == start[0, first]).all()) and bool((end[frame] == end[first]).all())
        # Times are float32 seconds (pixel frames / fps): equal up to rounding.
        follows = math.isclose(start[0, first], end[first - plane], rel_tol=1e-5, abs_tol=1e-6)
        same_length = frames < 2 or math.isclose(end[first] - start[0, first], end[plane] - start[0, plane],
                                                 rel_tol=1e-5, abs_tol=1e-6)
        same_plane = torch.equal(start[1, frame], heights) and torch.equal(start[2, frame], widths)
        if not (uniform and follows and same_length and same_plane):
            break
        frames += 1
    return frames, *sizes


# The pipelines pass the same positions tensor every step; LTX-2.5's DFR pipeline one per tile (its spatial epilogue:
# frame tiles x 2 x 2) and one untiled.
_COORD_GRIDS = ReadOncePerTensor(grid_from_coords, keep=17)


def grid_offset(coords: torch.Tensor, grid: tuple[int, int, int]) -> int | None:
    """Where the call's ``grid`` (from its sizes) lies among the N tokens of ``video_coords``: 0 when the positions
    begin with its box (the keyframes and reference videos the pipelines append come after it), N - |grid| when they
    end with it (Echo's image-memory slots come before it), None when neither. Where both ends fit (a one-frame grid
    and an appended keyframe or a memory image of its size), the end whose first position is earlier in time holds
    the grid, the start on a tie. One host sync (the first sample's positions, copied once), once per positions tensor
    and grid (_GRID_OFFSETS)."""
    coords = coords[:1].double().cpu()
    tail = coords.shape[2] - prod(grid)
    head_fits = grid_from_coords(coords[:, :, :prod(grid)]) == grid
    tail_fits = grid_from_coords(coords[:, :, tail:]) == grid
    if head_fits and tail_fits:
        return 0 if bool(coords[0, 0, 0, 0] <= coords[0, 0, tail, 0]) else tail
    return 0 if head_fits else tail if tail_fits else None


_GRID_OFFSETS = ReadOncePerTensor(grid_offset, keep=17)


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The (frames, rows, cols) video grid from the call's latent sizes or, in a call that passes only positions
    (LTX-2.5's DFR pipeline, whole or per tile), from ``video_coords``; the other tokens are context."""
    grid = latent_size_grid(module, args, kwargs)
    coords = forward_argument(module, args, kwargs, "video_coords")
    tokens = forward_argument(module, args, kwargs, "hidden_states").shape[1]
    readable = coords is not None and not torch.compiler.is_compiling()
    if grid is None:
        if not readable:
            raise LayoutError("LTX-2 needs num_frames, height and width in the transformer call (or video_coords, "
                              "read outside a compiled graph) to know the video grid")
        grid = _COORD_GRIDS(coords)
        if grid is None:
            raise LayoutError("its video_coords do not begin with a row-major box of video patches")
    if tokens < prod(grid):
        raise LayoutError(f"{tokens} video tokens are fewer than the {grid} grid of num_frames, height and width")
    if tokens == prod(grid) or coords is None:
        return token_layout(grid, tokens)
    if not readable:
        raise LayoutError(f"which end of its {tokens} video tokens the {grid} grid is at (the rest are conditioning "
                          f"tokens) is read from video_coords, which a compiled graph cannot do: compile the blocks "
                          f"(compile_repeated_blocks) instead of the whole transformer")
    offset = _GRID_OFFSETS(coords, grid)
    if offset is None:
        raise LayoutError(f"its video_coords neither begin nor end with the {grid} grid of num_frames, height and "
                          f"width")
    return token_layout(grid, tokens, offset)


PATCH = ModelPatch(
    family="ltx2",
    transformer_class=LTX2VideoTransformer3DModel,
    processor_class=GNALTX2AttnProcessor,
    stock_processor_class=LTX2AudioVideoAttnProcessor,
    dispatch_module=transformer_ltx2,
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # no text in the video self-attention sequence
    layout_probe=layout_probe,
    video=True,
    adoptable_processors=(LTX2AudioVideoAttnProcessor, LTX2PerturbedAttnProcessor),
    attention="attn1",
    processor_variants={LTX2PerturbedAttnProcessor: GNALTX2PerturbedAttnProcessor},
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, perturbed_attn: bool = False, keyframes: bool = False,
                     audio_channels: int = 4) -> LTX2VideoTransformer3DModel:
    """A randomly initialised LTX-2 transformer for CPU tests (video 2 heads x 16, audio 2 heads x 8); ``keyframes``:
    with LTX-2.5's learned keyframe marker, which the DFR pipeline requires; ``audio_channels`` per audio token (Echo
    packs an audio latent's mel bins into its tokens: 16 of them without an audio VAE)."""
    torch.manual_seed(seed)
    return LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        audio_in_channels=audio_channels, audio_out_channels=audio_channels, audio_num_attention_heads=2,
        audio_attention_head_dim=8,
        audio_cross_attention_dim=16, num_layers=num_layers, caption_channels=16, rope_double_precision=False,
        perturbed_attn=perturbed_attn, use_keyframes_abs_pos_embedding=keyframes,
    ).eval()


def tiny_video_vae():
    """LTX-2's video VAE, tiny: 4 latent channels, 2x in space and in time (the real one: 128 channels, 32x, 8x)."""
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video(
        latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,), layers_per_block=(1,),
        decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False), downsample_type=("spatial",), upsample_residual=(False,),
        upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
    ).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    return vae


def tiny_pipeline(seed: int = 0, dfr: bool = False):
    """An offline LTX2Pipeline with random weights: a 2-layer Gemma 3 (width 16) behind a byte-level
    tokenizer, the text connectors, video and audio VAEs that compress 2x, a vocoder. 32x32 pixels x 5
    frames -> a 3x16x16 token grid, with its audio. ``dfr``: the same parts in LTX-2.5's LTX2DFRPipeline, around a
    transformer with the keyframe marker."""
    from diffusers import AutoencoderKLLTX2Audio, FlowMatchEulerDiscreteScheduler, LTX2Pipeline
    from diffusers.pipelines.ltx2.pipeline_ltx2_dfr import LTX2DFRPipeline
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    width, layers = 16, 2  # the text encoder's; the transformer's caption_channels
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
                         sliding_window=64),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        mm_tokens_per_image=4,
    )).eval()
    connector = dict(num_attention_heads=2, attention_head_dim=8, num_layers=1, num_learnable_registers=None)
    connectors = LTX2TextConnectors(
        caption_channels=width, text_proj_in_factor=layers + 1, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
        **{f"{stream}_connector_{key}": value for stream in ("video", "audio") for key, value in connector.items()},
    )
    vae = tiny_video_vae()
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", mid_block_add_attention=False,
        sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], output_sampling_rate=16000,
    ).eval()
    return (LTX2DFRPipeline if dfr else LTX2Pipeline)(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
        tokenizer=tokenizer, connectors=connectors, transformer=tiny_transformer(seed, keyframes=dfr), vocoder=vocoder)


def tiny_temporal_refine_pipeline(dfr_pipeline):
    """LTX-2.5's LTX2DFRTemporalRefinePipeline around the parts of ``tiny_pipeline(dfr=True)``, with a tiny temporal
    latent upsampler (random weights; it doubles the latent frames, as the real one)."""
    from diffusers import LTXEulerAncestralRFScheduler
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx2.pipeline_ltx2_dfr_temporal_refine import LTX2DFRTemporalRefinePipeline

    torch.manual_seed(0)
    upsampler = LTX2LatentUpsamplerModel(in_channels=4, mid_channels=32, num_blocks_per_stage=1, spatial_upsample=False,
                                         temporal_upsample=True, use_rational_resampler=False).eval()
    parts = ("vae", "audio_vae", "text_encoder", "tokenizer", "connectors", "transformer", "vocoder")
    return LTX2DFRTemporalRefinePipeline(scheduler=LTXEulerAncestralRFScheduler(eta=0.5),
                                         temporal_latent_upsampler=upsampler,
                                         **{name: dfr_pipeline.components[name] for name in parts})


latent_grid = functools.partial(ltx_video.latent_grid, model="LTX-2")  # LTX-Video's VAE ratios and 1x1x1 patches


FRAME_RATE = 24.0  # the pipelines' default frame_rate
AUDIO_LATENTS_PER_SECOND = 25  # the audio VAE: 16 kHz, hop 160, 4x temporal compression


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 1024, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) token grid with ``text`` tokens per stream and
    the audio latents of the video's duration (as the pipeline sizes them)."""
    config = transformer.config
    frames, rows, cols = grid
    seconds = ((frames - 1) * 8 + 1) / FRAME_RATE
    audio = max(1, round(seconds * AUDIO_LATENTS_PER_SECOND))
    randn = seeded_randn(seed, device, dtype)

    return dict(
        hidden_states=randn(batch, frames * rows * cols, config.in_channels),
        audio_hidden_states=randn(batch, audio, config.audio_in_channels),
        encoder_hidden_states=randn(batch, text, config.caption_channels),
        audio_encoder_hidden_states=randn(batch, text, config.caption_channels),
        timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
        encoder_attention_mask=torch.ones(batch, text, device=device, dtype=torch.bool),
        audio_encoder_attention_mask=torch.ones(batch, text, device=device, dtype=torch.bool),
        num_frames=frames * config.patch_size_t, height=rows * config.patch_size, width=cols * config.patch_size,
        audio_num_frames=audio, fps=FRAME_RATE, return_dict=False,
    )


# diffusers' LTX2VideoTransformer3DModel defaults: LTX-2 19B (video 32 heads x 128, audio 32 x 64, 48
# blocks, Gemma 3 text features of width 3840); for timing with random weights.
FULL_CONFIG: dict = {}
DEFAULT_PRESET = "ltx2-1080p"
PIPELINE_PRESETS = {"EchoModularPipeline": "ltx2-echo-512p"}  # compare's default for Echo's long videos
DEFAULT_STEPS = 30  # LTX2Pipeline's default num_inference_steps
TEXT_TOKENS = 1024  # the pipeline's max_sequence_length (Gemma 3): cross-attention only, not in attn1
NAME_PATTERN = r"ltx-?2"  # hub names of this family, for --random-weights
# What compare and sweep do not score: they compare the video frames.
UNSCORED = "the audio track LTX-2's pipelines also generate"


def tiny_call_kwargs() -> dict:
    """Pipeline call arguments for the tiny pipeline (a short byte-level text, 5 frames)."""
    return dict(max_sequence_length=16, num_frames=5)


TINY_NAME = "tiny-ltx2"
