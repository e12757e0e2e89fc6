"""Quality of a sparse output against the dense output of the same prompt, seed and steps.

Images and frames are float arrays in [0, 1], (H, W, C). PSNR and SSIM come from torchmetrics (data range 1; SSIM
averaged away from the border, as scikit-image does). Identical outputs have infinite PSNR: reports cap it at
PSNR_CAP so JSON stays valid and plots stay finite. Video: per-frame PSNR / SSIM averaged, plus a temporal PSNR, the
PSNR between the frame-to-frame differences of the sparse and the dense video (data range 2), which drops when
motion changes even if single frames look alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

PSNR_CAP = 100.0
LPIPS_ENV = "GNA_LPIPS_WEIGHTS"


def _nchw(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) or (H, W, C) float in [0, 1] -> (N, C, H, W) float64 tensor."""
    array = frames[None] if frames.ndim == 3 else frames
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).permute(0, 3, 1, 2)


def psnr(dense: np.ndarray, sparse: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB over all pixels of ``sparse`` against ``dense``, capped at PSNR_CAP."""
    value = peak_signal_noise_ratio(_nchw(sparse), _nchw(dense), data_range=data_range).item()
    return min(value, PSNR_CAP)


# Radius of the 11-tap Gaussian SSIM window.
_SSIM_BORDER = 5


def ssim(dense: np.ndarray, sparse: np.ndarray) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5) of ``sparse`` against ``dense``, over the pixels whose
    window lies inside the image (as the reference implementation and scikit-image average; torchmetrics'
    own mean also counts the reflection-padded border)."""
    _, ssim_map = structural_similarity_index_measure(
        _nchw(sparse), _nchw(dense), data_range=1.0, return_full_image=True
    )
    b = _SSIM_BORDER
    return ssim_map[..., b:-b, b:-b].mean().item()


def image_metrics(dense: np.ndarray, sparse: np.ndarray, lpips=None) -> dict:
    """PSNR / SSIM (and LPIPS when a scorer is given, else its skip reason) of one image."""
    return {"psnr": psnr(dense, sparse), "ssim": ssim(dense, sparse), "lpips": _lpips(lpips, dense, sparse)}


def frames_metrics(dense: np.ndarray, sparse: np.ndarray, lpips=None) -> dict:
    """Per-frame metrics averaged, and each frame's PSNR; ``dense`` / ``sparse`` are (F, H, W, C): a video's frames,
    or the layers an image pipeline decomposes one image into (Qwen-Image-Layered)."""
    frames = [image_metrics(d, s, lpips) for d, s in zip(dense, sparse)]
    lpips_values = [f["lpips"] for f in frames]
    return {
        "psnr": float(np.mean([f["psnr"] for f in frames])),
        "ssim": float(np.mean([f["ssim"] for f in frames])),
        "lpips": float(np.mean(lpips_values)) if not isinstance(lpips_values[0], str) else lpips_values[0],
        "per_frame_psnr": [f["psnr"] for f in frames],
    }


def video_metrics(dense: np.ndarray, sparse: np.ndarray, lpips=None) -> dict:
    """:func:`frames_metrics` plus the temporal PSNR (of the frame-to-frame differences); (F, H, W, C)."""
    temporal = psnr(np.diff(dense, axis=0), np.diff(sparse, axis=0), data_range=2.0) if len(dense) > 1 else None
    metrics = frames_metrics(dense, sparse, lpips)
    return {**{k: metrics[k] for k in ("psnr", "ssim", "lpips")}, "temporal_psnr": temporal,
            "per_frame_psnr": metrics["per_frame_psnr"]}


def _lpips(scorer, dense, sparse):
    if scorer is None or isinstance(scorer, str):
        return scorer or "skipped: no LPIPS weights"
    with torch.no_grad():
        return scorer(_nchw(sparse).float() * 2 - 1, _nchw(dense).float() * 2 - 1).item()


def lpips_scorer(weights_dir: str | Path | None):
    """An LPIPS (AlexNet) scorer when local weights are available, else a ``"skipped: <why>"`` string.

    ``weights_dir`` (or $GNA_LPIPS_WEIGHTS) is a TORCH_HOME-style folder holding torchvision's AlexNet
    checkpoint (``hub/checkpoints/alexnet-owt-7be5be79.pth``); nothing is downloaded.
    """
    weights_dir = weights_dir or os.environ.get(LPIPS_ENV)
    if not weights_dir:
        return f"skipped: no LPIPS weights (pass --lpips-weights DIR or set {LPIPS_ENV})"
    checkpoint = Path(weights_dir) / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not checkpoint.is_file():
        return f"skipped: no LPIPS weights at {checkpoint}"
    try:
        import torchvision  # noqa: F401  (torchmetrics' LPIPS builds its backbone with it)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except Exception as error:  # noqa: BLE001 - any import problem means LPIPS cannot run here
        return f"skipped: LPIPS needs torchvision ({type(error).__name__}: {error})"
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(weights_dir)
    try:
        return LearnedPerceptualImagePatchSimilarity(net_type="alex").eval()
    except Exception as error:  # noqa: BLE001
        return f"skipped: LPIPS failed to load ({type(error).__name__}: {error})"
    finally:
        if previous is None:
            os.environ.pop("TORCH_HOME")
        else:
            os.environ["TORCH_HOME"] = previous
