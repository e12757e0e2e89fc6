"""An independent, loop-based GNA definition for tests (written from DESIGN.md section 2, sharing no code
with gna_diffusers). Slow on purpose: only for small grids."""

from __future__ import annotations

import itertools

import torch


def axis_neighbors(extent: int, window: int, stride: int, dilation: int, causal: bool, i: int) -> set[int]:
    """Keys of query ``i`` along one axis, in absolute coordinates."""
    group = i % dilation
    members = list(range(group, extent, dilation))  # the query's dilation group, in order
    c = members.index(i)
    group_len = len(members)
    if causal:
        leader = min((c // stride) * stride + stride - 1, group_len - 1)
        first = max(leader - (window - 1), 0)
        coords = range(first, c + 1)
    else:
        leader = min((c // stride) * stride + stride // 2, group_len - 1)
        first = leader - window // 2
        first = max(0, min(first, group_len - window))
        coords = range(first, first + window)
    return {members[x] for x in coords}


def neighbor_mask(grid, window, stride, dilation, causal) -> torch.Tensor:
    """(N, N) bool, [query, key], tokens row-major over ``grid``; all arguments are per-axis tuples."""
    ndim = len(grid)
    sets = [
        [axis_neighbors(grid[d], window[d], stride[d], dilation[d], causal[d], i) for i in range(grid[d])]
        for d in range(ndim)
    ]
    coords = list(itertools.product(*(range(e) for e in grid)))
    mask = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for qi, qc in enumerate(coords):
        for ki, kc in enumerate(coords):
            mask[qi, ki] = all(kc[d] in sets[d][qc[d]] for d in range(ndim))
    return mask


def attention(q, k, v, mask, extra_k=None, extra_v=None, extra_mask=None, scale=None, extra_bias=None):
    """Masked softmax attention in float64. q, k, v: (B, N, H, D); mask (N, N); extra_bias (B, M) is added
    to the scaled scores of the extra keys. Returns (out, lse)."""
    batch, n, _, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    full = mask.expand(batch, n, n)
    if extra_k is not None:
        k, v = torch.cat([k, extra_k], 1), torch.cat([v, extra_v], 1)
        valid = torch.ones(extra_k.shape[:2], dtype=torch.bool) if extra_mask is None else extra_mask
        full = torch.cat([full, valid[:, None, :].expand(batch, n, -1)], -1)
    scores = torch.einsum("bnhd,bmhd->bhnm", q.double(), k.double()) * scale
    if extra_bias is not None:
        scores[..., n:] += extra_bias.double()[:, None, None, :]
    scores = scores.masked_fill(~full[:, None], float("-inf"))
    lse = scores.logsumexp(-1)
    out = torch.einsum("bhnm,bmhd->bnhd", (scores - lse[..., None]).exp(), v.double())
    return out, lse.transpose(1, 2)


def joint_mask(grid, window, stride, context_before: int, context_after: int = 0) -> torch.Tensor:
    """(S, S) bool [query, key] of one self-attention sequence [context_before tokens, grid row-major,
    context_after tokens]: grid queries see their window and every context token, context queries see all."""
    n = len(grid)
    inner = neighbor_mask(grid, window, stride, (1,) * n, (False,) * n)
    total = context_before + inner.shape[0] + context_after
    mask = torch.ones(total, total, dtype=torch.bool)
    end = context_before + inner.shape[0]
    mask[context_before:end, context_before:end] = inner
    return mask


def masked_self_attention(module, mask: torch.Tensor, monkeypatch) -> None:
    """Make ``module.dispatch_attention_fn`` (a diffusers transformer module's) apply ``mask`` ((S, S), or
    (B, 1, S, S) per sample) to every call whose queries and keys are the S-token self-attention sequence: the stock
    model, masked independently."""
    real = module.dispatch_attention_fn

    def masked(query, key, value, attn_mask=None, **kwargs):
        if query.shape[1] == key.shape[1] == mask.shape[-1]:
            attn_mask = mask
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(module, "dispatch_attention_fn", masked)


def masked_sdpa(mask: torch.Tensor, monkeypatch) -> None:
    """Make ``F.scaled_dot_product_attention`` apply ``mask`` ((S, S), or (B, 1, S, S) per sample) to every call
    whose queries and keys are the S-token self-attention sequence (CogVideoX's and Mochi's processors call it
    directly): the stock model, masked independently."""
    real = torch.nn.functional.scaled_dot_product_attention

    def masked(query, key, value, attn_mask=None, *args, **kwargs):
        if query.shape[-2] == key.shape[-2] == mask.shape[-1]:
            attn_mask = mask
        return real(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", masked)
