"""Pictures and videos of a comparison, written atomically (temporary file + rename)."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

# The difference image is |sparse - dense| times this, so small errors are visible.
DIFF_GAIN = 8.0


def to_uint8(array: np.ndarray) -> np.ndarray:
    return (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def side_by_side(dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """[dense | sparse | amplified difference] of (H, W, C) floats in [0, 1]; returns uint8."""
    gap = np.ones((dense.shape[0], 4, dense.shape[2]))
    diff = np.abs(sparse - dense) * DIFF_GAIN
    return to_uint8(np.concatenate([dense, gap, sparse, gap, diff], axis=1))


def frame_strip(dense: np.ndarray, sparse: np.ndarray, count: int = 4) -> np.ndarray:
    """Rows dense / sparse / difference, columns ``count`` evenly spaced frames of (F, H, W, C) videos."""
    picks = np.linspace(0, len(dense) - 1, num=min(count, len(dense))).round().astype(int)
    rows = [dense[picks], sparse[picks], np.abs(sparse[picks] - dense[picks]) * DIFF_GAIN]
    return to_uint8(np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0))


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_frames(path: str | Path) -> np.ndarray:
    """The frames (F, H, W, 3) uint8 of a video file: MP4 and the like through imageio-ffmpeg, GIF through Pillow.
    Raises ValueError when the file cannot be read as a video here."""
    path = Path(path)
    if path.suffix.lower() != ".gif" and mp4_unavailable():
        raise ValueError(f"{path}: reading a {path.suffix or 'suffix-less'} video needs imageio-ffmpeg "
                         f"(`pip install imageio-ffmpeg`), or give the frames as a GIF")
    try:
        frames = imageio.mimread(path, memtest=False)
    except Exception as error:  # imageio's plugins raise their own error types
        raise ValueError(f"{path}: not a readable video ({error})") from error
    return np.stack([frame[..., :3] if frame.ndim == 3 else np.repeat(frame[..., None], 3, -1) for frame in frames])


def write_png(path: str | Path, image: np.ndarray) -> Path:
    return _atomic(Path(path), lambda tmp: imageio.imwrite(tmp, image))


def mp4_unavailable() -> str | None:
    """Why MP4s cannot be written here, or None when they can (imageio-ffmpeg bundles the encoder)."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return "imageio-ffmpeg is not installed, so no MP4 was written (`pip install imageio-ffmpeg`)"
    return None


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """H.264 MP4 through imageio-ffmpeg's bundled ffmpeg; frames (F, H, W, C) uint8. Check
    :func:`mp4_unavailable` first."""

    def write(tmp):
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, macro_block_size=1)
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()

    return _atomic(Path(path), write)
