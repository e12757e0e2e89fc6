"""MiniMax-H3 (MiniMaxH3Transformer3DModel): joint video and audio generation over one packed sequence per call,
[text | keyframe condition rows | audio rows | target video rows], the target video's latent patches row-major over
(T, H, W) at the end. Every block's ``attn`` runs MiniMaxH3AttnProcessor: full self-attention over the whole
sequence, no mask; the text's token refiner (same attention class, text alone) stays stock.

GNA's subclass: the target video's queries attend to their window over its grid and to every text, condition and
audio key (context, in the same softmax); the text, condition and audio queries attend to everything, as stock.

Layout probe: the call passes no sizes, only per-row ``position_ids`` ((t, h, w) rotary coordinates) and the rows'
``video_indices``: the target video is the sequence's tail of video rows, one (h, w) plane per frame (row-major)
at increasing times, read once per positions tensor (the pipeline builds it once per generation). A transformer
compiled whole cannot read it in its graph: its layers then run dense with a warning; compile its blocks instead.
768x1344 (its 16:9 canvas), 124 frames (the default, 5 s at 24 fps): VAE 16x in space, 17n+5 frames -> 5n+2
latent frames: 37x48x84 latents -> 2x2 patches -> 37x24x42 = 37,296 video tokens, after the prompt and 414 audio
rows (stereo, 207 latents a channel).

diffusers ships it as modular pipelines only (``MiniMaxH3ModularPipeline``), which ``apply`` takes like any
pipeline (its ``transformer`` and ``scheduler``; the audio scheduler steps in the same round). The omni-reference
workflow (``ref2va``) runs its own partition, ``transformer_ref``, over [text, reference blocks (images, videos,
audio), target audio, target video]: patched too (alone when it is the only one loaded); the references are context.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import MiniMaxH3Transformer3DModel
from diffusers.models.transformers import transformer_minimax_h3
from diffusers.models.transformers.transformer_minimax_h3 import MiniMaxH3AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import ReadOncePerTensor, forward_argument
from ._inputs import seeded_randn
from ._latents import leading_run, row_major_plane


class GNAMiniMaxH3AttnProcessor(RoutedProcessorMixin, MiniMaxH3AttnProcessor):
    """MiniMaxH3AttnProcessor whose attention call runs GNA for the target video's queries; everything else is
    stock."""


def _video_tail(video_indices: torch.Tensor) -> tuple[int, int]:
    """(end, count) of the last video rows that are consecutive (the target video, after any condition rows): the
    sequence position after the last video row, and how many rows run up to it."""
    count = video_indices.numel()
    end = int(video_indices[-1]) + 1
    return end, leading_run((video_indices == end - count + torch.arange(count, device=video_indices.device)).flip(0))


def _target_grid(position_ids: torch.Tensor) -> tuple[int, int, int] | None:
    """(T, H, W) of the frames that end the sequence: each a row-major plane at the last frame's (h, w)
    coordinates and one time, the times increasing frame to frame; None when the last rows form no plane."""
    time, rows, cols = position_ids.unbind(-1)
    per_frame = leading_run((time == time[-1]).flip(0))
    plane = None if per_frame < 2 else row_major_plane(rows[-per_frame:], cols[-per_frame:])
    if plane is None:
        return None
    frames = position_ids.shape[0] // per_frame
    block = position_ids[position_ids.shape[0] - frames * per_frame:].reshape(frames, per_frame, 3)
    same_plane = (block[..., 1:] == block[-1:, :, 1:]).flatten(1).all(1)
    one_time = (block[..., 0] == block[:, :1, 0]).all(1)
    times = block[:, 0, 0]
    earlier = torch.cat([times[:-1] < times[1:], times.new_ones(1, dtype=torch.bool)])
    return leading_run((same_plane & one_time & earlier).flip(0)), *plane


_GRIDS = ReadOncePerTensor(_target_grid)
_TAILS = ReadOncePerTensor(_video_tail)


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The target video's (T, H, W) grid at the end of the packed sequence; everything before it is context."""
    positions = forward_argument(module, args, kwargs, "position_ids")
    video_indices = forward_argument(module, args, kwargs, "video_indices")
    if positions is None or video_indices is None or video_indices.numel() == 0:
        raise LayoutError("MiniMax-H3 calls need position_ids and video_indices to place the video")
    if torch.compiler.is_compiling():
        raise LayoutError("under torch.compile of the whole transformer the MiniMax-H3 grid cannot be read from "
                          "position_ids; compile its blocks instead (transformer.compile_repeated_blocks(...))")
    grid = _GRIDS(positions)
    total = positions.shape[0]
    end, video_rows = _TAILS(video_indices)
    if grid is None or end != total or prod(grid) > video_rows:
        raise LayoutError(f"the last rows of the {total}-row sequence are not video frames on one row-major plane")
    return token_layout(grid, total, total - prod(grid))


PATCH = ModelPatch(
    family="minimax-h3",
    transformer_class=MiniMaxH3Transformer3DModel,
    processor_class=GNAMiniMaxH3AttnProcessor,
    stock_processor_class=MiniMaxH3AttnProcessor,
    dispatch_module=transformer_minimax_h3,
    blocks={"blocks": "transformer_blocks"},
    text_first=True,  # the stream is the whole sequence, the grid at its end
    layout_probe=layout_probe,
    video=True,
    pipeline_transformers=("transformer", "transformer_ref"),  # the omni-reference workflow's partition
)

# The modular pipeline's video and audio latent channels without a VAE loaded (the released VAEs').
VIDEO_CHANNELS, AUDIO_CHANNELS = 24, 32
HEAD_DIM = 16


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> MiniMaxH3Transformer3DModel:
    """A randomly initialised MiniMax-H3 transformer for CPU tests: 2 heads x 16, the released latent channels (24
    video in 1x2x2 patches, 32 audio), 16-wide text features, one refiner block."""
    torch.manual_seed(seed)
    return MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=HEAD_DIM, hidden_size=32, num_layers=num_layers,
        num_refiner_layers=1, ffn_dim=64, in_channels=VIDEO_CHANNELS, audio_in_channels=AUDIO_CHANNELS, text_dim=16,
        freq_dim=32, time_embed_hidden_dim=32, time_embed_dim=32, rope_freq_dim=2,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Target video grid of ``frames`` frames (17n+5, the VAE's chunking) of height x width: 16x in space, then 2x2
    patches; 5n+2 latent frames."""
    if height % 32 or width % 32:
        raise ValueError(f"height and width must be multiples of 32 (MiniMax-H3's canvas), got {height}x{width}")
    frames = 124 if frames is None else frames
    if frames % 17 != 5:
        raise ValueError(f"MiniMax-H3 generates 17n+5 frames (its VAE's chunks), got {frames}")
    return frames // 17 * 5 + 2, height // 32, width // 32


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1, keyframes=(),
                       audio: int | None = None, device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call, packed by the modular pipeline's own layout step: ``text`` prompt rows, a
    condition frame per ``keyframes`` anchor ("first" / "last"), stereo audio (``audio`` latents a channel; by
    default as long as the video: 40 a second at 24 fps), then the (T, H, W) target video. Condition rows sit at
    timestep 0.999, the rest at 0.5."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import (
        MiniMaxH3PrepareLayoutStep,
        MiniMaxH3SetTimestepsStep,
    )
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import audio_latent_num_frames

    config = transformer.config
    frames, rows, cols = grid
    _, patch_h, patch_w = config.patch_size
    if audio is None:  # the video's 5n+2 latent frames are 17n+5 frames
        audio = audio_latent_num_frames((frames - 2) // 5 * 17 + 5)
    positions, tags, video, audio_rows, text_rows, conditions, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.ones(text, dtype=torch.long), frames, rows * patch_h, cols * patch_w, audio, tuple(config.patch_size),
        2, 2, 0, tuple(keyframes))
    timesteps, indices = MiniMaxH3SetTimestepsStep.build_row_timesteps(video, audio_rows, conditions, 0, text, 0.5,
                                                                         0.5, 0.999, 1.0)
    randn = seeded_randn(seed, device, dtype)
    return dict(
        hidden_states=randn(batch, video.numel(), VIDEO_CHANNELS * prod(config.patch_size)),
        audio_hidden_states=randn(batch, audio_rows.numel(), config.audio_in_channels),
        encoder_hidden_states=randn(batch, text, config.text_dim),
        timestep=timesteps.to(device), timestep_indices=indices.to(device), token_tags=tags.to(device),
        position_ids=positions.to(device), video_indices=video.to(device), audio_indices=audio_rows.to(device),
        text_indices=text_rows.to(device), return_dict=False,
    )


# diffusers' class defaults, the released checkpoint's shape: 50 blocks, 56 heads x 128 over a 5,376-wide stream,
# per-(timestep, modality) AdaLN tables; 33.1B parameters, the 61.7 GiB in bf16 of each checkpoint partition.
FULL_CONFIG: dict = {}
DEFAULT_PRESET = "minimax-h3-768p"
DEFAULT_STEPS = 50  # the modular pipeline's default num_inference_steps
TEXT_TOKENS = 256  # the Qwen3-VL prompt
NAME_PATTERN = r"minimax[-_]?h3"  # hub names of this family, for --random-weights
UNSCORED = "the stereo audio track MiniMax-H3 also generates"  # what compare does not score
# compare and sweep load its real weights as a modular pipeline (ModularPipeline.from_pretrained); it has no tiny one.
WEIGHTS_GAP = None
