"""Layout probes shared by the families whose transformer takes its latents as one tensor: the grid is the latent
shape over the patch size, with no host sync. Video latents are (B, C, F, H, W), or (B, F, C, H, W) for CogVideoX
and AnyFlow; image latents (B, C, H, W), or (B, C, 1, H, W) (HunyuanImage's refiner: a one-frame video). Also the
grid from the latent sizes a call passes as ints."""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch

from gna_diffusers.route import LayoutError, TokenLayout, token_layout

from ._forward import forward_argument

PatchSizes = Callable[[torch.nn.Module], tuple[int, ...]]  # transformer -> its patch per grid axis


def leading_run(flags: torch.Tensor) -> int:
    """How many of a boolean vector's first entries are all True (one host sync)."""
    return int(flags.cumprod(0).sum())


def row_major_plane(row_pos: torch.Tensor, col_pos: torch.Tensor) -> tuple[int, int] | None:
    """(rows, cols) when N tokens' row and column positions (N,) lay them out as one row-major plane: the row position
    constant along a row and increasing down, the column positions the same in every row and increasing along it
    (positions are compared, not counted from 0, so any offset or scale works); else None. Syncs with the host (FLUX's
    image ids, LTX-2's patch coordinates)."""
    cols = leading_run(row_pos == row_pos[0])
    rows = row_pos.shape[0] // cols
    if rows * cols != row_pos.shape[0]:
        return None
    h, w = row_pos.reshape(rows, cols), col_pos.reshape(rows, cols)
    row_major = (h == h[:, :1]).all() & (w == w[:1]).all() & (h[1:, 0] > h[:-1, 0]).all() & (w[0, 1:] > w[0, :-1]).all()
    return (rows, cols) if bool(row_major) else None


class LatentLayout:
    """``layout_probe`` and ``layout_from_prepared`` of a family whose image stream is the token grid alone, the
    latents over the patch sizes; subclasses say which latent axes form the grid (``grid``) and which latent ranks
    they read (``ranks``)."""

    ranks: tuple[int, ...]

    def __init__(self, patch_sizes: PatchSizes):
        self.patch_sizes = patch_sizes

    def grid(self, latents: torch.Tensor, transformer: torch.nn.Module) -> tuple[int, ...]:
        raise NotImplementedError

    def from_prepared(self, result, transformer) -> TokenLayout | None:
        """From ``prepare_latents``' result: the latents, alone or first in a tuple (image-to-video)."""
        latents = result[0] if isinstance(result, tuple) else result
        if not isinstance(latents, torch.Tensor) or latents.ndim not in self.ranks:
            return None
        try:
            grid = self.grid(latents, transformer)
        except LayoutError:
            return None  # the transformer call's own probe reports it
        return token_layout(grid, prod(grid))

    def probe(self, module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
        """The token grid of this call's ``hidden_states``; the pipeline's prepared layout when it covers the same
        tokens (it may hold leading frames as context: Wan VACE's reference images)."""
        latents = args[0] if args else kwargs["hidden_states"]
        if latents.ndim not in self.ranks:
            raise LayoutError(f"hidden_states of shape {tuple(latents.shape)} are not latents of rank "
                              f"{' or '.join(map(str, self.ranks))}, which this model's layout is read from")
        grid = self.grid(latents, module)
        if prepared is not None and prepared.stream_tokens == prod(grid):
            return prepared
        return token_layout(grid, prod(grid))


class VideoLatentLayout(LatentLayout):
    """(frames, rows, cols) from (B, C, F, H, W) latents, or (B, F, C, H, W) with ``frames_first``, over the
    transformer's (time, height, width) patch."""

    ranks = (5,)

    def __init__(self, patch_sizes: PatchSizes, frames_first: bool = False):
        super().__init__(patch_sizes)
        self.frames_first = frames_first

    def grid(self, latents: torch.Tensor, transformer: torch.nn.Module) -> tuple[int, int, int]:
        frames, height, width = latents.shape[1 if self.frames_first else 2], *latents.shape[3:]
        p_t, p_h, p_w = self.patch_sizes(transformer)
        return frames // p_t, height // p_h, width // p_w


class ImageLatentLayout(LatentLayout):
    """(rows, cols) from (B, C, H, W) latents, or (B, C, 1, H, W), over the transformer's (height, width) patch."""

    ranks = (4, 5)

    def grid(self, latents: torch.Tensor, transformer: torch.nn.Module) -> tuple[int, int]:
        if latents.ndim == 5 and latents.shape[2] != 1:
            raise LayoutError(f"image latents of shape {tuple(latents.shape)} hold {latents.shape[2]} frames, not one")
        p_h, p_w = self.patch_sizes(transformer)
        return latents.shape[-2] // p_h, latents.shape[-1] // p_w


def latent_size_grid(module, args: tuple, kwargs: dict) -> tuple[int, int, int] | None:
    """The (frames, rows, cols) token grid from the call's ``num_frames``, ``height`` and ``width`` (latent
    units, plain ints: no host sync) over the transformer's ``patch_size_t`` / ``patch_size`` (LTX-Video,
    LTX-2, whose tokens arrive packed as (B, N, C)); None when the call lacks one of them."""
    sizes = [forward_argument(module, args, kwargs, name) for name in ("num_frames", "height", "width")]
    if any(size is None for size in sizes):
        return None
    config = module.config
    frames, height, width = sizes
    return frames // config.patch_size_t, height // config.patch_size, width // config.patch_size


def leading_frames_as_context(layout: TokenLayout, frames: int) -> TokenLayout:
    """``layout`` with its first ``frames`` latent frames taken out of the grid as context (reference images
    a pipeline puts before the video's frames)."""
    if not frames:
        return layout
    count, rows, cols = layout.grid
    return token_layout((count - frames, rows, cols), layout.stream_tokens, layout.grid_offset + frames * rows * cols)
