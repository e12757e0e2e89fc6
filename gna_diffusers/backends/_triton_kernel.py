"""Triton forward kernel for GNA with multi-dimensional tiles and fused extra (text) keys.

One program computes one Q tile (a T0 x T1 x T2 box of grid tokens) for one (batch, head); with grouped-query
attention it reads key/value head h // KV_GROUP (KV_GROUP = 1 otherwise, which triton specializes). Every grid
is handled as 3-D (1-D and 2-D grids get leading axes of extent 1). Tokens are read and written in the
caller's (B, N, H, D) layout: a box is gathered by index arithmetic on row-major token indices, so no
permute pass and no copies are needed. With ``USE_TMA`` a KV box is instead one bulk tensor copy (TMA on
Hopper) through a descriptor of the 5-D view (B, L0, L1, L2, H*D) of the same memory: no per-token index
math, and tokens past the grid's end arrive as zeros (such tiles are partial, so the mask drops them).

Neighborhoods come from per-axis tables (``start[i]``, ``end[i]``: see gna_diffusers.spec.axis_bounds):
key k is a neighbor of query i along an axis iff start[i] <= k < end[i] and k % r == i % r. The KV tiles
visited are those inside the box spanned by the union of the Q tile's windows (for GNA, exactly the
non-empty tile pairs). A KV tile is *full* along an axis when every query of the Q tile has the tile's
span inside its range there; a tile full along every axis skips the mask, a partial one masks only the
axes it is partial along. Extra keys are a second loop that feeds the same online softmax, so grid and
text keys share one normalization. ``benchmarks/kernel_sass.py`` counts what one KV tile issues.

Online softmax in base 2 (FlashAttention): with c = scale * log2(e) > 0 and raw scores x = q . k,
    m' = max(m, c * max_j x_j);   l' = l * 2^(m - m') + sum_j 2^(c x_j - m');   acc' = acc * 2^(m - m') + P V
and finally O = acc / l, LSE = (m + log2 l) * ln 2. Taking the row max of the raw scores (c > 0) leaves one
fused multiply-add per score. ``m`` starts at a large finite negative number so a row whose keys are all
masked in one tile keeps m (alpha = 1, p = 0) instead of producing NaN.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)  # used inside the kernel, so a constexpr


@triton.jit
def _box_coords(tile0, tile1, tile2, E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr):
    """Grid coordinates of the E0*E1*E2 tokens of box (tile0, tile1, tile2), last axis fastest."""
    offs = tl.arange(0, E0 * E1 * E2)
    c0 = tile0 * E0 + offs // (E1 * E2)
    c1 = tile1 * E1 + (offs // E2) % E1
    c2 = tile2 * E2 + offs % E2
    return c0, c1, c2


@triton.jit
def _mask_axis(qk, qc, qs, qe, kc, r, DILATED: tl.constexpr):
    """``qk`` [BLOCK_Q, BLOCK_K] with -inf where this axis rules the key out: its coord outside the
    query's range (which ends inside the grid, so keys past the grid's end drop too) or, with dilation,
    in another group."""
    kc2 = kc[None, :]
    neighbor = (kc2 >= qs[:, None]) & (kc2 < qe[:, None])
    if DILATED:
        neighbor = neighbor & ((kc2 % r) == (qc % r)[:, None])
    return tl.where(neighbor, qk, float("-inf"))


@triton.jit
def _softmax_step(qk, m_i, l_i, acc, v, qk_scale):
    """Fold one block of raw scores (masked entries = -inf) into the running softmax state."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return m_new, l_i, acc


@triton.jit
def gna_fwd_kernel(
    Q, K, V, O, LSE, EK, EV, EBIAS, K_DESC, V_DESC,
    START0, END0, START1, END1, START2, END2,
    sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, so_b, so_n, so_h,
    sl_b, sl_n, sek_b, sek_m, sek_h, sev_b, sev_m, sev_h, sbias_b,
    H, KV_GROUP, L0, L1, L2, R0, R1, R2, M, head_dim, qk_scale,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    HEAD_DIM: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_EXTRA_BIAS: tl.constexpr,
    EXTRA_EVEN: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    DILATED: tl.constexpr,
):
    BLOCK_Q: tl.constexpr = T0 * T1 * T2
    BLOCK_K: tl.constexpr = K0 * K1 * K2
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // KV_GROUP  # the key/value head this query head reads

    # ---- Q tile: its tokens, their per-axis key ranges, and the union box of their windows.
    nq1 = tl.cdiv(L1, T1)
    nq2 = tl.cdiv(L2, T2)
    q0, q1, q2 = _box_coords(pid_q // (nq1 * nq2), (pid_q // nq2) % nq1, pid_q % nq2, T0, T1, T2)
    q_valid = (q0 < L0) & (q1 < L1) & (q2 < L2)
    q_tok = ((q0 * L1 + q1) * L2 + q2).to(tl.int64)
    s0 = tl.load(START0 + q0, mask=q_valid, other=0)
    e0 = tl.load(END0 + q0, mask=q_valid, other=0)
    s1 = tl.load(START1 + q1, mask=q_valid, other=0)
    e1 = tl.load(END1 + q1, mask=q_valid, other=0)
    s2 = tl.load(START2 + q2, mask=q_valid, other=0)
    e2 = tl.load(END2 + q2, mask=q_valid, other=0)
    BIG: tl.constexpr = 1 << 30
    # A KV tile [lo, hi) is full along an axis iff max(start) <= lo and hi <= min(end) over the tile's queries.
    max_s0 = tl.max(tl.where(q_valid, s0, 0), 0)
    max_s1 = tl.max(tl.where(q_valid, s1, 0), 0)
    max_s2 = tl.max(tl.where(q_valid, s2, 0), 0)
    min_e0 = tl.min(tl.where(q_valid, e0, BIG), 0)
    min_e1 = tl.min(tl.where(q_valid, e1, BIG), 0)
    min_e2 = tl.min(tl.where(q_valid, e2, BIG), 0)
    # KV tiles covering [min(start), max(end)) along each axis.
    kt0 = tl.min(tl.where(q_valid, s0, BIG), 0) // K0
    kt1 = tl.min(tl.where(q_valid, s1, BIG), 0) // K1
    kt2 = tl.min(tl.where(q_valid, s2, BIG), 0) // K2
    nk0 = (tl.max(tl.where(q_valid, e0, 0), 0) - 1) // K0 - kt0 + 1
    nk1 = (tl.max(tl.where(q_valid, e1, 0), 0) - 1) // K1 - kt1 + 1
    nk2 = (tl.max(tl.where(q_valid, e2, 0), 0) - 1) // K2 - kt2 + 1

    d = tl.arange(0, HEAD_DIM)
    d_valid = d < head_dim
    q = tl.load(
        Q + b * sq_b + h * sq_h + q_tok[:, None] * sq_n + d[None, :],
        mask=q_valid[:, None] & d_valid[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_Q], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
    k_base = K + b * sk_b + hk * sk_h
    v_base = V + b * sv_b + hk * sv_h
    kv_column = (pid_bh % H) // KV_GROUP * HEAD_DIM  # the head's first lane in a TMA box's (H_kv * D) axis
    # A KV box's tokens relative to its first one: coordinates and row-major token offsets (loop-invariant).
    r0, r1, r2 = _box_coords(0, 0, 0, K0, K1, K2)
    r_tok = (r0 * L1 + r1) * L2 + r2

    # ---- Neighborhood: every KV tile of the union box, last axis fastest. The tile index is carried and
    # stepped (no integer division per tile).
    t0 = kt0
    t1 = kt1
    t2 = kt2
    for _ in range(0, nk0 * nk1 * nk2):
        if USE_TMA:  # HEAD_DIM == head_dim here (the host checks): the box is [b, t0.., t1.., t2.., hk*D]
            box = [pid_bh // H, t0 * K0, t1 * K1, t2 * K2, kv_column]
            k = tl.reshape(K_DESC.load(box), [BLOCK_K, HEAD_DIM])
            v = tl.reshape(V_DESC.load(box), [BLOCK_K, HEAD_DIM])
        else:
            k_tok = (((t0 * K0 * L1 + t1 * K1) * L2 + t2 * K2) + r_tok).to(tl.int64)
            inside = (r0 < L0 - t0 * K0) & (r1 < L1 - t1 * K1) & (r2 < L2 - t2 * K2)
            kv_mask = inside[:, None] & d_valid[None, :]
            k = tl.load(k_base + k_tok[:, None] * sk_n + d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + k_tok[:, None] * sv_n + d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        # Full along an axis: every query's range covers the tile's span there. Window ends never exceed
        # the extent, so a full tile also lies inside the grid. With dilation a range holds other groups'
        # keys too: dilated axes are never full.
        full0 = (max_s0 <= t0 * K0) & (t0 * K0 + K0 <= min_e0) & (R0 == 1)
        full1 = (max_s1 <= t1 * K1) & (t1 * K1 + K1 <= min_e1) & (R1 == 1)
        full2 = (max_s2 <= t2 * K2) & (t2 * K2 + K2 <= min_e2) & (R2 == 1)
        if not full0:  # partial tiles test only the axes they are partial along
            qk = _mask_axis(qk, q0, s0, e0, t0 * K0 + r0, R0, DILATED)
        if not full1:
            qk = _mask_axis(qk, q1, s1, e1, t1 * K1 + r1, R1, DILATED)
        if not full2:
            qk = _mask_axis(qk, q2, s2, e2, t2 * K2 + r2, R2, DILATED)
        m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale)
        t2 += 1
        wrap2 = t2 == kt2 + nk2
        t2 = tl.where(wrap2, kt2, t2)
        t1 += wrap2.to(tl.int32)
        wrap1 = t1 == kt1 + nk1
        t1 = tl.where(wrap1, kt1, t1)
        t0 += wrap1.to(tl.int32)

    # ---- Extra (text) keys, in blocks of a KV tile's size (the same buffers): same softmax, optional bias
    # added (padding arrives as a -inf bias), a ragged last block masked.
    if HAS_EXTRA:
        offs_m = tl.arange(0, BLOCK_K)
        ek_base = EK + b * sek_b + hk * sek_h
        ev_base = EV + b * sev_b + hk * sev_h
        for start in range(0, M, BLOCK_K):
            idx = start + offs_m
            kv_mask = (idx < M)[:, None] & d_valid[None, :]
            k = tl.load(ek_base + idx[:, None].to(tl.int64) * sek_m + d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(ev_base + idx[:, None].to(tl.int64) * sev_m + d[None, :], mask=kv_mask, other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            if HAS_EXTRA_BIAS:  # pre-divided by the softmax scale: raw score units
                qk += tl.load(EBIAS + b * sbias_b + idx, mask=idx < M, other=0.0)[None, :]
            if not EXTRA_EVEN:  # M is no multiple of BLOCK_K: drop the keys past its end
                qk = tl.where((idx < M)[None, :], qk, float("-inf"))
            m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale)

    # Every valid query has at least one neighborhood key, so l_i > 0 on stored rows.
    l_safe = tl.where(q_valid, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        O + b * so_b + h * so_h + q_tok[:, None] * so_n + d[None, :],
        out.to(O.dtype.element_ty),
        mask=q_valid[:, None] & d_valid[None, :],
    )
    tl.store(LSE + b * sl_b + h + q_tok * sl_n, (m_i + tl.log2(l_safe)) * LN2, mask=q_valid)
