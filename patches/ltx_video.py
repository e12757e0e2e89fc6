"""LTX-Video 0.9.x (LTXVideoTransformer3DModel, 2B and 13B): each block's ``attn1`` is self-attention over the
video tokens alone (RoPE inside the processor, no text in the sequence): routed. ``attn2``, the text
cross-attention, keeps its stock processor (both use ``LTXVideoAttnProcessor``).

Layout probe, from what the call gives the RoPE:
- ``num_frames``, ``height`` and ``width`` (latent units, plain ints: no host sync), as LTXPipeline and
  LTXImageToVideoPipeline pass them: the (frames, rows, cols) grid of ``hidden_states`` (B, N, C).
- ``video_coords`` (B, 3, N), as LTXConditionPipeline and the long multi-prompt pipeline pass them (the
  ints are then absent or 1): the grid is the longest run of whole frames, in token order, whose time
  coordinate increases and whose spatial coordinates repeat the same row-major rows x cols. The tokens
  around it are context: the condition pipeline's conditioning frames before the grid, the long pipeline's
  overlap and guiding frames after it. The condition pipeline's ``prepare_latents`` returns these ids, so
  its calls need no host sync (and compile); other ``video_coords`` calls read them (one sync per call).

The VAE compresses 8x in time and 32x in space, patch 1x1x1: 1216x704, 161 frames -> 21x22x38 = 17,556
video tokens.
"""

from __future__ import annotations

import re
from math import prod

import torch
from diffusers import LTXVideoTransformer3DModel
from diffusers.models.transformers import transformer_ltx
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import forward_argument
from ._inputs import seeded_randn
from ._latents import latent_size_grid


class GNALTXVideoAttnProcessor(RoutedProcessorMixin, LTXVideoAttnProcessor):
    """LTXVideoAttnProcessor whose self-attention call runs GNA over the video grid; everything else is stock."""


def _frame_runs(time: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of equal time coordinates, in token order."""
    changes = (torch.nonzero(time[1:] != time[:-1]).flatten() + 1).tolist()
    return list(zip([0, *changes], [*changes, time.numel()]))


def layout_from_coords(coords: torch.Tensor) -> TokenLayout:
    """The layout of a sequence from its (B, 3, N) (time, row, column) coordinates (video ids in any units):
    the longest run of whole frames with increasing time and one row-major rows x cols pattern is the grid.
    Raises LayoutError when the samples' coordinates differ, no such run is unique or a frame is no row-major
    grid. Reads the coordinates (a host sync)."""
    if coords.ndim != 3 or coords.shape[1] != 3:
        raise LayoutError(f"video_coords of shape {tuple(coords.shape)} are not (B, 3, N)")
    coords = coords.detach().to("cpu", torch.float64)  # the one host sync
    if not torch.equal(coords, coords[:1].expand_as(coords)):
        raise LayoutError("the samples of this call have different video_coords: one grid cannot serve them all")
    time, row, col = coords[0].unbind(0)
    runs: list[list[tuple[int, int]]] = []  # candidate grids: consecutive frames of one spatial pattern
    for start, end in _frame_runs(time):
        if runs:
            first_start, first_end = runs[-1][0]
            last_start = runs[-1][-1][0]
            if (end - start == first_end - first_start and time[start] > time[last_start]
                    and torch.equal(row[start:end], row[first_start:first_end])
                    and torch.equal(col[start:end], col[first_start:first_end])):
                runs[-1].append((start, end))
                continue
        runs.append([(start, end)])
    longest = max(len(frames) * (frames[0][1] - frames[0][0]) for frames in runs)
    best = [frames for frames in runs if len(frames) * (frames[0][1] - frames[0][0]) == longest]
    if len(best) > 1:
        raise LayoutError(f"{len(best)} equally long runs of video frames in video_coords: which one is "
                          f"generated is ambiguous")
    frames = best[0]
    start, end = frames[0]
    frame_rows, frame_cols = row[start:end], col[start:end]
    next_row = torch.nonzero(frame_rows != frame_rows[0]).flatten()
    cols = int(next_row[0]) if next_row.numel() else end - start
    rows = (end - start) // cols
    if rows * cols != end - start:
        raise LayoutError(f"the video frame at tokens {start}..{end} of video_coords is not a row-major grid")
    frame_rows, frame_cols = frame_rows.view(rows, cols), frame_cols.view(rows, cols)
    if (not (frame_rows == frame_rows[:, :1]).all() or not (frame_cols == frame_cols[:1]).all()
            or (frame_rows[1:, 0] <= frame_rows[:-1, 0]).any() or (frame_cols[0, 1:] <= frame_cols[0, :-1]).any()):
        raise LayoutError(f"the video frame at tokens {start}..{end} of video_coords is not a row-major grid")
    return token_layout((len(frames), rows, cols), coords.shape[-1], start)


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_latents``' result: LTXConditionPipeline returns ``(latents, mask, video_ids,
    extra tokens)``, its (B, 3, N) ids the coordinates of every call's tokens. Other pipelines return the
    latents alone (their calls carry the grid as ints): None."""
    if not isinstance(result, tuple):
        return None
    for part in result[1:]:  # after the latents
        if isinstance(part, torch.Tensor) and part.ndim == 3 and part.shape[1] == 3:
            try:
                return layout_from_coords(part)
            except LayoutError:
                return None  # the transformer call's own probe reports it
    return None


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The (frames, rows, cols) grid from ``video_coords`` when the call gives them (the model's RoPE then
    ignores the ints), else from ``num_frames``, ``height`` and ``width``."""
    tokens = forward_argument(module, args, kwargs, "hidden_states").shape[1]
    coords = forward_argument(module, args, kwargs, "video_coords")
    if coords is not None:
        if prepared is not None and prepared.stream_tokens == tokens:
            return prepared  # LTXConditionPipeline: the ids it prepared are these coordinates
        if torch.compiler.is_compiling():
            raise LayoutError("under torch.compile the LTX-Video grid of a call with video_coords comes from "
                              "the pipeline's prepare_latents (LTXConditionPipeline), and this call has none")
        return layout_from_coords(coords)
    grid = latent_size_grid(module, args, kwargs)
    if grid is None:
        raise LayoutError("LTX-Video needs video_coords, or num_frames, height and width, in the transformer "
                          "call to know the video grid")
    if tokens != prod(grid):
        raise LayoutError(f"{tokens} video tokens are not the {grid} grid of num_frames, height and width")
    return token_layout(grid, tokens)


PATCH = ModelPatch(
    family="ltx-video",
    transformer_class=LTXVideoTransformer3DModel,
    processor_class=GNALTXVideoAttnProcessor,
    stock_processor_class=LTXVideoAttnProcessor,
    dispatch_module=transformer_ltx,
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=layout_probe,
    layout_from_prepared=layout_from_prepared,
    video=True,
    adoptable_processors=(LTXVideoAttnProcessor,),
    attention="attn1",
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> LTXVideoTransformer3DModel:
    """A randomly initialised LTX-Video transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        num_layers=num_layers, caption_channels=32,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None, model: str = "LTX-Video") -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 8x in time (frames = 8k + 1) and 32x in space, patch 1x1x1 (LTX-Video
    and LTX-2 alike; ``model`` names it in the errors)."""
    if frames is None or (frames - 1) % 8:
        raise ValueError(f"{model} needs a frame count of the form 8k + 1 (e.g. 121 or 161), got {frames}")
    if height % 32 or width % 32:
        raise ValueError(f"{model} needs height and width divisible by 32, got {height}x{width}")
    return (frames - 1) // 8 + 1, height // 32, width // 32


FRAME_RATE = 25  # the pipelines' default frame_rate


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 128, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) token grid with ``text`` T5 tokens, as LTXPipeline
    passes them (the grid as ints)."""
    config = transformer.config
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)

    return dict(
        hidden_states=randn(batch, frames * rows * cols, config.in_channels),
        encoder_hidden_states=randn(batch, text, config.caption_channels),
        timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
        encoder_attention_mask=torch.ones(batch, text, device=device, dtype=torch.bool),
        num_frames=frames * config.patch_size_t, height=rows * config.patch_size, width=cols * config.patch_size,
        rope_interpolation_scale=(8 / FRAME_RATE, 32, 32), return_dict=False,
    )


# diffusers' LTXVideoTransformer3DModel defaults: LTX-Video 2B (0.9.0 - 0.9.6; 32 heads x 64, 28 blocks).
FULL_CONFIG_2B: dict = {}
# LTX-Video 13B (0.9.7, 0.9.8): 32 heads x 128, 48 blocks, T5 features of width 4096.
FULL_CONFIG = dict(attention_head_dim=128, cross_attention_dim=4096, num_layers=48, caption_channels=4096)


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: 13B for names with
    "13b", 0.9.7 or 0.9.8, else the 2B of the first releases."""
    name = model_name.lower()
    if "2b" not in name and re.search(r"13b|0\.9\.[78]", name):
        return FULL_CONFIG, latent_grid
    return FULL_CONFIG_2B, latent_grid


DEFAULT_PRESET = "ltx-video-704p"
DEFAULT_STEPS = 50  # LTXPipeline's default num_inference_steps
TEXT_TOKENS = 128  # the pipelines' max_sequence_length (T5): cross-attention only, not in attn1


def tiny_parts(seed: int) -> dict:
    """Scheduler, VAE and T5 of the tiny LTX pipelines (the VAE compresses 4x in time and space)."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler

    from .flux import tiny_t5

    tokenizer, text_encoder = tiny_t5(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def tiny_pipeline(seed: int = 0):
    """An offline LTXPipeline with random weights: 32x32 pixels x 9 frames -> a 3x8x8 latent token grid."""
    from diffusers import LTXPipeline

    return LTXPipeline(transformer=tiny_transformer(seed), **tiny_parts(seed))


def tiny_condition_pipeline(seed: int = 0):
    """An offline LTXConditionPipeline (conditions at any frame, calls that carry video_coords) with the
    same parts."""
    from diffusers import LTXConditionPipeline

    return LTXConditionPipeline(transformer=tiny_transformer(seed), **tiny_parts(seed))


def tiny_call_kwargs() -> dict:
    """Pipeline call arguments for the tiny pipeline (short T5 sequence: the tokenizer is per character)."""
    return dict(max_sequence_length=48, num_frames=9)


TINY_NAME = "tiny-ltx-video"
NAME_PATTERN = r"ltx-?v"  # hub names of this family (LTX-Video, LTXV; not LTX-2), for --random-weights
