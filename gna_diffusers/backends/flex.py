"""FlexAttention backend: torch's flex_attention with a BlockMask built from the GNA definition.

The BlockMask encodes only the grid neighborhood (plus "every extra key"), so it is cached per
(spec, number of extra keys, device) and a denoising loop builds it once. Text padding varies per call
and per batch element, so it is applied through a ``score_mod`` that reads the padding mask (and adds an
extra-key bias), not baked into the cached BlockMask. Compiled on CUDA; eager on CPU (where flex materializes
the score matrix).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch.nn.attention import flex_attention as flex_module

from ..spec import GNASpec, axis_mask
from . import Backend, triton_gpu_problem

_NEG_INF = float("-inf")
# Eager flex on CPU computes the full score matrix: keep it to sizes a CPU can hold (as the reference backend).
CPU_MAX_TOKENS = 16384


def _block_size(device: torch.device) -> int:
    return 128 if device.type == "cuda" else 64


@lru_cache(maxsize=64)
def _block_mask(spec: GNASpec, num_extra: int, device: torch.device):
    n = spec.num_tokens
    masks = [axis_mask(*spec.axis(dim), device=device) for dim in range(spec.ndim)]
    # Row-major strides of the grid, to turn a flat token index into per-axis coordinates.
    strides = [1] * spec.ndim
    for dim in range(spec.ndim - 2, -1, -1):
        strides[dim] = strides[dim + 1] * spec.grid[dim + 1]

    def mask_mod(b, h, q_idx, kv_idx):
        is_grid = kv_idx < n
        key = torch.where(is_grid, kv_idx, 0)
        neighbor = is_grid
        for mask, stride, extent in zip(masks, strides, spec.grid):
            neighbor = neighbor & mask[(q_idx // stride) % extent, (key // stride) % extent]
        return neighbor | ~is_grid

    return flex_module.create_block_mask(
        mask_mod,
        None,
        None,
        n,
        n + num_extra,
        device=device,
        BLOCK_SIZE=_block_size(device),
        _compile=device.type == "cuda",
    )


@lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(flex_module.flex_attention, dynamic=False, fullgraph=True)


def _flex(device: torch.device):
    return _compiled_flex() if device.type == "cuda" else flex_module.flex_attention


def run(q, k, v, spec, extra_k, extra_v, extra_kv_mask, extra_kv_bias, scale, return_lse):
    n = spec.num_tokens
    num_extra = 0 if extra_k is None else extra_k.shape[1]
    if extra_k is not None:
        k, v = torch.cat([k, extra_k], dim=1), torch.cat([v, extra_v], dim=1)
    score_mod = None
    if extra_kv_mask is not None or extra_kv_bias is not None:
        valid = extra_kv_mask if extra_kv_mask is not None else torch.ones_like(extra_kv_bias, dtype=torch.bool)
        bias = extra_kv_bias.float() if extra_kv_bias is not None else torch.zeros_like(valid, dtype=torch.float32)

        def score_mod(score, b, h, q_idx, kv_idx):
            extra = (kv_idx - n).clamp(min=0)
            is_extra = kv_idx >= n
            score = score + torch.where(is_extra, bias[b, extra], 0.0)
            return torch.where(is_extra & ~valid[b, extra], _NEG_INF, score)

    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, tokens, D) views
    with warnings.catch_warnings():
        # Eager flex on CPU warns that it is unfused; that is this backend's documented CPU behavior.
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        result = _flex(q.device)(
            qh,
            kh,
            vh,
            score_mod=score_mod,
            block_mask=_block_mask(spec, num_extra, q.device),
            scale=scale,
            enable_gqa=kh.shape[1] != qh.shape[1],
            return_aux=flex_module.AuxRequest(lse=True) if return_lse else None,
        )
    if not return_lse:
        return result.transpose(1, 2), None
    out, aux = result
    return out.transpose(1, 2), aux.lse.transpose(1, 2).float()


def _unsupported(q: torch.Tensor, spec: GNASpec, needs_grad: bool) -> str | None:
    if not hasattr(flex_module, "AuxRequest"):
        return f"needs torch >= 2.9 for FlexAttention's AuxRequest (found {torch.__version__})"
    if (problem := triton_gpu_problem(q.device)) is not None:  # compiled by Inductor, with triton
        return problem
    if needs_grad and q.device.type == "cpu":
        return "FlexAttention has no backward on CPU; use backend 'reference' for training on CPU"
    if q.device.type == "cpu" and spec.num_tokens > CPU_MAX_TOKENS:
        return (f"on CPU it materializes the N x N scores; N={spec.num_tokens} exceeds its limit of {CPU_MAX_TOKENS} "
                f"(use a GPU, or a smaller resolution)")
    return None


BACKEND = Backend("flex", run, _unsupported)
