"""Reference backend: the materialized boolean mask and torch SDPA. Any device; small grids only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spec import GNASpec, eager_cache, grid_mask
from . import Backend

# An N x N bool mask plus an N x (N + M) score matrix per head: keep it to test-sized problems.
MAX_TOKENS = 16384


@eager_cache(maxsize=32)
def _cached_grid_mask(spec: GNASpec, device: torch.device) -> torch.Tensor:
    return grid_mask(spec, device)


def run(q, k, v, spec, extra_k, extra_v, extra_kv_mask, extra_kv_bias, scale, return_lse):
    batch, n = q.shape[:2]
    group = q.shape[2] // k.shape[2]
    if group > 1:  # grouped-query attention, spelled out: query head h reads key/value head h // group
        k, v, extra_k, extra_v = (t if t is None else t.repeat_interleave(group, 2) for t in (k, v, extra_k, extra_v))
    mask = _cached_grid_mask(spec, q.device).expand(batch, n, n)
    bias = None  # (B, 1, N, N + M) float added to the scores, when there is an extra-key bias
    if extra_k is not None:
        k, v = torch.cat([k, extra_k], dim=1), torch.cat([v, extra_v], dim=1)
        extra_valid = (
            extra_kv_mask
            if extra_kv_mask is not None
            else torch.ones(extra_k.shape[:2], dtype=torch.bool, device=q.device)
        )
        mask = torch.cat([mask, extra_valid[:, None, :].expand(batch, n, -1)], dim=-1)
        if extra_kv_bias is not None:
            bias = torch.cat([torch.zeros(batch, n, device=q.device), extra_kv_bias.float()], dim=-1)[:, None, None, :]
    mask = mask[:, None]  # (B, 1, N, N + M), broadcast over heads
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, tokens, D)
    attn_mask = mask if bias is None else torch.where(mask, bias, float("-inf")).to(q.dtype)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, scale=scale).transpose(1, 2)
    if not return_lse:
        return out, None
    scores = (qh.float() @ kh.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    lse = scores.masked_fill(~mask, float("-inf")).logsumexp(dim=-1)  # (B, H, N)
    return out, lse.transpose(1, 2)


def _unsupported(q: torch.Tensor, spec: GNASpec, needs_grad: bool) -> str | None:
    if spec.num_tokens > MAX_TOKENS:
        return f"materializes an N x N mask; N={spec.num_tokens} exceeds its limit of {MAX_TOKENS}"
    return None


BACKEND = Backend("reference", run, _unsupported)
