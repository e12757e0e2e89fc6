"""The public GNA operator."""

from __future__ import annotations

import torch

from .backends import select_backend
from .spec import BoolOrTuple, GNASpec, IntOrTuple, eager_cache

_cached_spec = eager_cache(maxsize=256)(GNASpec.create)  # a diffusers layer asks for the same few patterns every call


def _exactly(kind: type, value) -> bool:
    """Whether ``value`` is a ``kind`` or a tuple of them, by exact type: a cache key cannot tell 1 from True."""
    return type(value) is kind or (type(value) is tuple and all(type(item) is kind for item in value))


def _spec(grid, window, stride, dilation, causal) -> GNASpec:
    """``GNASpec.create`` of the arguments, cached when they are plain ints / bools or tuples of them (the routes'
    calls), which saves the validation's ~10 us per attention call; anything else is validated afresh."""
    if all(_exactly(int, value) for value in (grid, window, stride, dilation)) and _exactly(bool, causal):
        return _cached_spec(grid, window, stride, dilation, causal)
    return GNASpec.create(grid, window, stride, dilation, causal)


def _check_tensors(q, k, v, spec, extra_k, extra_v, extra_kv_mask, extra_kv_bias) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor (B, N, H, D), got {got}")
    batch, _, heads, dim = q.shape
    kv_heads = k.shape[2]
    if k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != (batch, q.shape[1], dim) or heads % kv_heads:
        raise ValueError(
            f"q, k, v must have the same shape (B, N, H, D), or k and v fewer heads that divide q's (grouped-query "
            f"attention); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] != spec.num_tokens:
        raise ValueError(
            f"q has N={q.shape[1]} tokens but grid {spec.grid} has {spec.num_tokens}; "
            f"tokens must be the grid flattened row-major (N = prod(grid))"
        )
    tensors = {"q": q, "k": k, "v": v}
    if (extra_k is None) != (extra_v is None):
        raise ValueError("extra_k and extra_v must be given together (both or neither)")
    if extra_k is None and extra_kv_mask is not None:
        raise ValueError("extra_kv_mask was given without extra_k / extra_v")
    if extra_k is None and extra_kv_bias is not None:
        raise ValueError("extra_kv_bias was given without extra_k / extra_v")
    if extra_k is not None:
        for name, t in (("extra_k", extra_k), ("extra_v", extra_v)):
            if not isinstance(t, torch.Tensor) or t.ndim != 4 or (t.shape[0], t.shape[2], t.shape[3]) != (
                batch,
                kv_heads,
                dim,
            ):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape (B={batch}, M, H={kv_heads}, D={dim}) (k's heads), got {got}")
            tensors[name] = t
        if extra_k.shape != extra_v.shape:
            raise ValueError(f"extra_k {tuple(extra_k.shape)} and extra_v {tuple(extra_v.shape)} differ in shape")
        if extra_kv_mask is not None:
            expected = (batch, extra_k.shape[1])
            if not isinstance(extra_kv_mask, torch.Tensor) or tuple(extra_kv_mask.shape) != expected:
                got = tuple(extra_kv_mask.shape) if isinstance(extra_kv_mask, torch.Tensor) else extra_kv_mask
                raise ValueError(f"extra_kv_mask must have shape (B, M) = {expected}, got {got}")
            if extra_kv_mask.dtype != torch.bool:
                raise ValueError(f"extra_kv_mask must be a bool tensor (True = real token), got {extra_kv_mask.dtype}")
            if extra_kv_mask.device != q.device:
                raise ValueError(f"extra_kv_mask is on {extra_kv_mask.device} but q is on {q.device}")
        if extra_kv_bias is not None:
            expected = (batch, extra_k.shape[1])
            if not isinstance(extra_kv_bias, torch.Tensor) or tuple(extra_kv_bias.shape) != expected:
                got = tuple(extra_kv_bias.shape) if isinstance(extra_kv_bias, torch.Tensor) else extra_kv_bias
                raise ValueError(f"extra_kv_bias must have shape (B, M) = {expected}, got {got}")
            if not extra_kv_bias.dtype.is_floating_point:
                raise ValueError(f"extra_kv_bias must be a floating point tensor, got {extra_kv_bias.dtype}")
            if extra_kv_bias.device != q.device:
                raise ValueError(f"extra_kv_bias is on {extra_kv_bias.device} but q is on {q.device}")
    for name, t in tensors.items():
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; all inputs must share one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; all inputs must share one device")
    if not q.dtype.is_floating_point:
        raise ValueError(f"q, k, v must be floating point, got {q.dtype}")


def gna_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: tuple[int, ...],
    window: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    causal: BoolOrTuple = False,
    *,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_kv_mask: torch.Tensor | None = None,
    extra_kv_bias: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Generalized Neighborhood Attention over a 1-, 2- or 3-D token grid.

    Args:
        q, k, v: ``(B, N, H, D)``, with ``N = prod(grid)`` tokens flattened row-major over ``grid``. k and v may
            have fewer heads ``H_kv`` dividing ``H`` (grouped-query attention, as SDPA's ``enable_gqa``): query
            head ``h`` reads key/value head ``h // (H / H_kv)``, with no copies.
        grid: extents of the token grid, e.g. ``(T, H, W)``.
        window, stride, dilation, causal: one value for every dimension or a tuple with one per
            dimension. Semantics in :mod:`gna_diffusers.spec` (shifted border windows, stride groups
            sharing their leader's window, dilation groups, per-dimension causality).
        extra_k, extra_v: ``(B, M, H_kv, D)`` keys/values every grid query attends to in addition to its
            neighborhood (e.g. text tokens), in the same softmax as the neighborhood keys.
        extra_kv_mask: ``(B, M)`` bool, True for real extra tokens, False for padding.
        extra_kv_bias: ``(B, M)`` float added to every grid query's (scaled) score of each extra key, as an
            additive attention mask adds it (``-inf`` hides a key).
        scale: softmax scale (> 0), ``1 / sqrt(D)`` when None.
        backend: ``"auto"`` or a name from :func:`gna_diffusers.available_backends`.
        return_lse: also return the log-sum-exp of the attention scores.
        out: ``(B, N, H, D)`` of q's dtype and device to write the result into, possibly a strided view
            with unit stride along D (e.g. the grid rows of a joint sequence's output, which then needs no
            concatenation copy); the triton backend writes it directly, the others copy into it.

    Returns:
        ``(B, N, H, D)`` in q's dtype (``out`` when given); with ``return_lse`` also ``(B, N, H)`` float32
        (natural log).

    Raises:
        ValueError: one message per invalid argument, naming it and its dimension.
    """
    spec = _spec(grid, window, stride, dilation, causal)
    _check_tensors(q, k, v, spec, extra_k, extra_v, extra_kv_mask, extra_kv_bias)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif not float(scale) > 0:  # also rejects NaN; the kernels take row maxima of unscaled scores
        raise ValueError(f"scale must be a positive number (the softmax scale, 1/sqrt(D) = {q.shape[-1] ** -0.5:.4g}"
                         f" when None); got {scale!r}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, extra_k, extra_v)
    )
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            got = (f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, torch.Tensor)
                   else type(out).__name__)
            raise ValueError(f"out must be a tensor of q's shape {tuple(q.shape)}, dtype {q.dtype} and device "
                             f"{q.device}; got {got}")
        if out.stride(-1) != 1:
            raise ValueError(f"out must have unit stride along D (its last dimension); got strides {out.stride()}")
        if needs_grad:
            raise ValueError("out= writes in place and cannot take part in autograd; call without out")
    impl = select_backend(backend, q, spec, needs_grad)
    args = (q, k, v, spec, extra_k, extra_v, extra_kv_mask, extra_kv_bias, float(scale), return_lse)
    if out is not None and impl.run_into is not None:
        result, lse = impl.run_into(*args, out)
    else:
        result, lse = impl.run(*args)
        if out is not None:
            result = out.copy_(result)
    return (result, lse) if return_lse else result
