"""Triton backend: the fused GNA forward kernel (``_triton_kernel.py``), its tile choice and its custom op.

Forward only (inference). A call that needs gradients is not run here: ``auto`` falls back to ``flex``
(with a one-time warning) and an explicit ``backend="triton"`` raises. Runs on CUDA, or on CPU tensors
under ``TRITON_INTERPRET=1`` (set before triton is imported) for testing.

Tile choice: candidate (Q box, KV box) shapes with power-of-two extents are ranked by the block-sparsity
simulator (visited tile pairs weighted by their area, partial pairs costing more), so perfectly
block-sparse tilings win when one exists. On CUDA the best few candidates x launch settings x K/V load
path (gathered pointers, or TMA descriptors on Hopper) are timed once per problem key and the winner is
cached, so a denoising loop pays the tuning once (on its first
step; do a warm-up call before capturing CUDA graphs).
"""

import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from math import prod
from typing import List, Optional, Tuple

import torch

from ..sim import axis_counts
from ..spec import GNASpec, axis_bounds
from . import Backend, triton_gpu_problem

logger = logging.getLogger("gna_diffusers")

try:
    import triton

    from ._triton_kernel import LOG2E, gna_fwd_kernel

    _IMPORT_ERROR = None
except Exception as error:  # noqa: BLE001 - any import failure means "backend unavailable", with the reason
    _IMPORT_ERROR = f"triton is not importable ({type(error).__name__}: {error})"
try:  # host-side TMA descriptors (triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except Exception:  # noqa: BLE001 - without them the kernel gathers K/V with pointer loads
    TensorDescriptor = None

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
# A partial tile pair computes the same tile but also builds and applies the mask.
PARTIAL_PAIR_COST = 1.25


@dataclass(frozen=True)
class KernelConfig:
    """Tile boxes (3-D, one extent per padded grid axis) and launch settings of one kernel launch."""

    q_tile: tuple[int, int, int]
    kv_tile: tuple[int, int, int]
    num_warps: int = 4
    num_stages: int = 2
    tma: bool = False  # K/V boxes by bulk tensor copy (see tma_unsupported) instead of gathered pointers


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.compiler.assume_constant_result  # fixed per process: a compiled (CPU, interpreted) call does not trace it
def interpreter_problem() -> str | None:
    """Why the Triton interpreter cannot run the kernel in this environment, or None. Triton < 3.7's interpreter
    makes a Python int of a reduced value through a 1-element numpy array, which numpy >= 2.4 refuses (a TypeError
    at the kernel's first loop); compiled kernels (CUDA) are not affected."""
    import numpy

    # By the versions: trying the conversion warns (DeprecationWarning) on numpy 1.25 to 2.3, at every call.
    old_interpreter = _IMPORT_ERROR is None and tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 7)
    if old_interpreter and numpy.lib.NumpyVersion(numpy.__version__) >= "2.4.0":
        return (f"the Triton {triton.__version__} interpreter cannot run with numpy {numpy.__version__} (it "
                f"converts 1-element arrays to ints, which numpy >= 2.4 refuses; fixed in triton 3.7): use "
                f"triton >= 3.7 or numpy < 2.4 to interpret the kernel on a CPU")
    return None


def _as_3d(spec: GNASpec) -> list[tuple[int, int, int, int, bool]]:
    """Per-axis (extent, window, stride, dilation, causal), padded with extent-1 leading axes to 3-D."""
    return [(1, 1, 1, 1, False)] * (3 - spec.ndim) + [spec.axis(d) for d in range(spec.ndim)]


@lru_cache(maxsize=64)
def _bound_tables(spec: GNASpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(start0, end0, start1, end1, start2, end2) int32 tables of the 3-D padded grid, on ``device``."""
    tables = []
    for extent, window, stride, dilation, causal in _as_3d(spec):
        if extent == 1:  # padding axis: the only key is the only query
            start, end = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
        else:
            start, end = axis_bounds(extent, window, stride, dilation, causal)
        tables += [start.to(device=device, dtype=torch.int32), end.to(device=device, dtype=torch.int32)]
    return tuple(tables)


def _pow2_boxes(extents: tuple[int, ...], block: int):
    """All boxes of ``block`` tokens with power-of-two extents, none larger than its axis needs."""
    limits = [max(0, (e - 1).bit_length()) for e in extents]  # log2 of the next power of two >= extent
    total = block.bit_length() - 1
    for exps in itertools.product(*(range(limit + 1) for limit in limits)):
        if sum(exps) == total:
            yield tuple(1 << x for x in exps)


def _block_sizes(device: torch.device, num_tokens: int) -> tuple[int, ...]:
    if device.type == "cuda":
        return (64, 128)
    # The interpreter: small tiles keep tests fast; tl.dot needs at least 16.
    return tuple(b for b in (16, 32, 64) if b <= max(16, 1 << (num_tokens - 1).bit_length()))


def tile_candidates(spec: GNASpec, block_sizes=(64, 128), limit: int | None = 4) -> list[KernelConfig]:
    """The ``limit`` cheapest (Q box, KV box) pairs by simulated cost (all when None), cheapest first."""
    axes = _as_3d(spec)
    extents = tuple(a[0] for a in axes)
    scored = []
    for bq, bk in itertools.product(block_sizes, block_sizes):
        for q_tile in _pow2_boxes(extents, bq):
            for kv_tile in _pow2_boxes(extents, bk):
                counts = [axis_counts(*axis, tq, tk) for axis, tq, tk in zip(axes, q_tile, kv_tile)]
                full = prod(c.full for c in counts)
                partial = prod(c.nonempty for c in counts) - full
                cost = (full + PARTIAL_PAIR_COST * partial) * bq * bk
                # Ties: prefer larger tiles (fewer launches and loop trips), then longer last-axis runs
                # (contiguous rows in memory).
                scored.append(((cost, -bq, -bk, -q_tile[2], -kv_tile[2]), KernelConfig(q_tile, kv_tile)))
    if not scored:
        raise ValueError(f"no tile shape fits grid {spec.grid}")
    scored.sort(key=lambda item: item[0])
    return [config for _, config in scored[:limit]]


def tma_unsupported(k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why K/V cannot be read by TMA descriptors over their 5-D view (B, L0, L1, L2, H*D), or None: it
    needs a Hopper (or newer) GPU or the interpreter, head_dim a power of two (no padded head lanes), each
    token's heads packed (head stride = head_dim) and 16-byte aligned base and strides."""
    if _IMPORT_ERROR is not None or TensorDescriptor is None:
        return "triton has no host tensor descriptors"
    if k.device.type == "cuda" and torch.cuda.get_device_capability(k.device)[0] < 9:
        return "TMA needs compute capability 9.0 or newer"
    dim = k.shape[-1]
    if dim & (dim - 1) or dim < 16:
        return f"head_dim {dim} is not a power of two >= 16"
    for t in (k, v):
        if t.stride(3) != 1 or t.stride(2) != dim:
            return "heads are not packed in each token"
        if t.data_ptr() % 16 or any(t.stride(i) * t.element_size() % 16 for i in (0, 1)):
            return "base or strides are not 16-byte aligned"
    return None


def _kv_descriptors(k: torch.Tensor, v: torch.Tensor, extents, kv_tile) -> tuple:
    """TMA descriptors of K and V as (B, L0, L1, L2, H*D) with (1, K0, K1, K2, D) boxes."""
    batch, _, heads, dim = k.shape
    descriptors = []
    for t in (k, v):
        token = t.stride(1)
        strides = [t.stride(0), extents[1] * extents[2] * token, extents[2] * token, token, 1]
        descriptors.append(TensorDescriptor(t, [batch, *extents, heads * dim], strides, [1, *kv_tile, dim]))
    return tuple(descriptors)


def _extra_bias(extra_kv_mask: torch.Tensor | None, extra_kv_bias: torch.Tensor | None, scale: float
                ) -> torch.Tensor | None:
    """(B, M) float32 the kernel adds to raw q.k scores of extra keys: the bias divided by the softmax scale
    (the kernel scales after adding) and -inf on padding. Padding as a bias costs the kernel one add per
    score; a mask it had to load and select on cost ~1.8x as many instructions per block (kernel_sass)."""
    bias = None if extra_kv_bias is None else extra_kv_bias.float() / scale
    if extra_kv_mask is not None:  # one small (B, M) op per call, beside an attention over the whole grid
        hidden = torch.where(extra_kv_mask.bool(), 0.0, float("-inf")).float()  # whatever the default dtype
        bias = hidden if bias is None else bias + hidden
    return None if bias is None else bias.contiguous()


def _launch(q, k, v, extra_k, extra_v, extra_kv_mask, spec: GNASpec, scale: float, config: KernelConfig,
            extra_kv_bias: torch.Tensor | None = None, out: torch.Tensor | None = None):
    batch, n, heads, dim = q.shape
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = q.new_empty(q.shape) if out is None else out  # the kernel writes through out's strides
    lse = q.new_empty((batch, n, heads), dtype=torch.float32)
    has_extra = extra_k is not None
    if has_extra:
        extra_k, extra_v = (t if t.stride(-1) == 1 else t.contiguous() for t in (extra_k, extra_v))
    ek, ev = (extra_k, extra_v) if has_extra else (k, v)  # dummies never read when HAS_EXTRA is off
    ebias = _extra_bias(extra_kv_mask, extra_kv_bias, scale)
    axes = _as_3d(spec)
    extents, dilations = [a[0] for a in axes], [a[3] for a in axes]
    n_q_tiles = prod(-(-e // t) for e, t in zip(extents, config.q_tile))
    k_desc, v_desc = _kv_descriptors(k, v, extents, config.kv_tile) if config.tma else (k, v)  # else: unused
    gna_fwd_kernel[(n_q_tiles, batch * heads)](
        q, k, v, out, lse, ek, ev, ek if ebias is None else ebias, k_desc, v_desc,
        *_bound_tables(spec, q.device),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), ek.stride(0), ek.stride(1), ek.stride(2), ev.stride(0), ev.stride(1),
        ev.stride(2), 0 if ebias is None else ebias.stride(0),
        heads, heads // k.shape[2], *extents, *dilations, ek.shape[1] if has_extra else 0, dim, scale * LOG2E,
        *config.q_tile, *config.kv_tile,
        HEAD_DIM=head_lanes(dim),
        HAS_EXTRA=has_extra,
        HAS_EXTRA_BIAS=ebias is not None,
        EXTRA_EVEN=has_extra and ek.shape[1] % prod(config.kv_tile) == 0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        USE_TMA=config.tma,
        DILATED=any(r > 1 for r in dilations),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out, lse


def launch_warps(q_tile: tuple[int, ...]) -> int:
    """Warps for a Q tile: 8 (two warpgroups of 64 rows) at 128 tokens, where 4 spill registers; 4 below,
    where 8 split the rows and issue 1.5-1.7x the instructions per score (benchmarks/kernel_sass.py)."""
    return 8 if prod(q_tile) >= 128 else 4


def head_lanes(head_dim: int) -> int:
    """The lanes the kernel gives a head: ``head_dim`` padded to a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, 1 << (head_dim - 1).bit_length())


def shared_memory_bytes(config: KernelConfig, head_dim: int, element_size: int) -> int:
    """Shared memory one launch of ``config`` holds: its Q tile, and per pipeline stage a K and a V tile, each token
    ``head_dim`` lanes wide (padded to the kernel's power of two). The sm_90 compiles report these figures
    (benchmarks/compile_sm90.py): 160 / 224 KiB with 128-token tiles at head_dim 128 and 2 / 3 stages; 320 KiB at
    head_dim 256, where a 64-token KV tile needs 192."""
    return element_size * head_lanes(head_dim) * (prod(config.q_tile) + config.num_stages * 2 * prod(config.kv_tile))


def _shared_memory_limit(device: torch.device) -> int | None:
    """The most shared memory a block may opt into on ``device`` (Hopper: 227 KiB); None off CUDA."""
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin if device.type == "cuda" else None


def tuning_configs(spec: GNASpec, k: torch.Tensor, v: torch.Tensor) -> list[KernelConfig]:
    """What the tuner times on a GPU: the 3 cheapest tilings with gathered K/V loads and the 2 cheapest
    with TMA loads (where :func:`tma_unsupported` allows them), each joined by the cheapest tiling with the
    widest KV box when none of them has it (per score, 64-token KV boxes issue ~40% more instructions than
    128-token ones: the simulator's area cost misses that), each at :func:`launch_warps` x (2, 3) pipeline
    stages (both paths are software-pipelined: cp.async, or bulk tensor copies). Tilings and stages whose
    :func:`shared_memory_bytes` the GPU cannot hold are left out before ranking (head_dim 256: no 128-token KV
    tile), so the tuner times the cheapest that run; when none does, :func:`fastest` falls back to small tiles."""
    limit = _shared_memory_limit(k.device)

    def fits(config: KernelConfig) -> bool:
        return limit is None or shared_memory_bytes(config, k.shape[-1], k.element_size()) <= limit

    ranked = tile_candidates(spec, _block_sizes(k.device, spec.num_tokens), limit=None)
    ranked = [c for c in ranked if fits(c)] or ranked  # a tiling at 2 stages (KernelConfig's default)
    widest = max(prod(c.kv_tile) for c in ranked)

    def tilings(count: int) -> list[KernelConfig]:
        chosen = ranked[:count]
        if all(prod(c.kv_tile) < widest for c in chosen):
            chosen.append(next(c for c in ranked if prod(c.kv_tile) == widest))
        return chosen

    def launches(tiling: KernelConfig, tma: bool) -> list[KernelConfig]:
        warps = launch_warps(tiling.q_tile)
        configs = [KernelConfig(tiling.q_tile, tiling.kv_tile, warps, stages, tma) for stages in (2, 3)]
        return [config for config in configs if fits(config)] or configs[:1]

    configs = [config for tiling in tilings(3) for config in launches(tiling, tma=False)]
    if tma_unsupported(k, v) is None:
        configs += [config for tiling in tilings(2) for config in launches(tiling, tma=True)]
    return configs


_TUNED: dict[tuple, KernelConfig] = {}


# Tried when no tuning configuration fits the GPU (consumer cards have ~100 KB of shared memory per block,
# Hopper 227 KB): 64-token tiles, one stage.
SMALL_BLOCKS = (32, 64)


def fastest(configs: list[KernelConfig], bench: Callable[[KernelConfig], float], spec: GNASpec
            ) -> tuple[KernelConfig, float]:
    """The configuration ``bench`` times fastest, and its time. Those the GPU cannot hold are skipped (a TMA
    variant this triton cannot build too, with a warning); when none fits, small single-stage tiles are
    tried; when those do not fit either, a ValueError says to use another backend."""
    timings = {}
    for config in configs:
        try:
            timings[config] = bench(config)
        except triton.runtime.errors.OutOfResources:
            continue  # too many registers / too much shared memory for this GPU
        except Exception as error:  # noqa: BLE001 - a TMA variant this triton cannot build is skipped
            if not config.tma:
                raise
            logger.warning("gna triton: TMA variant %s failed (%s: %s); timing the others", config,
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    if not timings and configs and configs[0].num_stages > 1:
        small = [KernelConfig(c.q_tile, c.kv_tile, 4, 1) for c in tile_candidates(spec, SMALL_BLOCKS, limit=3)]
        return fastest(small, bench, spec)
    if not timings:
        raise ValueError(f"no triton kernel configuration for {spec} fits this GPU's shared memory and "
                         f"registers; use backend='flex'")
    best = min(timings, key=timings.get)
    return best, timings[best]


def choose_config(q, k, v, extra_k, extra_v, extra_kv_mask, spec: GNASpec, scale: float,
                  extra_kv_bias: torch.Tensor | None = None) -> KernelConfig:
    """The kernel configuration used for these inputs (tuned on the first call for this problem key)."""
    key = (
        spec, tuple(q.shape), k.shape[2], q.dtype, q.device,
        None if extra_k is None else extra_k.shape[1], extra_kv_mask is not None, extra_kv_bias is not None,
    )
    if key in _TUNED:
        return _TUNED[key]
    if q.device.type != "cuda":
        best = tile_candidates(spec, _block_sizes(q.device, spec.num_tokens))[0]
    else:
        def bench(config: KernelConfig) -> float:
            return triton.testing.do_bench(
                lambda: _launch(q, k, v, extra_k, extra_v, extra_kv_mask, spec, scale, config, extra_kv_bias),
                warmup=5, rep=20,
            )

        best, ms = fastest(tuning_configs(spec, k, v), bench, spec)
        logger.info("gna triton autotune %s: %s (%.3f ms)", spec, best, ms)
    _TUNED[key] = best
    return best


def _tuned_launch(q, k, v, extra_k, extra_v, extra_kv_mask, extra_kv_bias, grid, window, stride, dilation, causal,
                  scale, out=None):
    """The custom ops' body: the tuned configuration for this problem, tuned and launched on q's GPU. Triton
    launches on the *current* CUDA device, which need not hold q: a transformer moved to cuda:1, or split over
    GPUs by a ``device_map``, would otherwise run the kernel on cuda:0 with cuda:1's pointers."""
    spec = GNASpec(tuple(grid), tuple(window), tuple(stride), tuple(dilation), tuple(causal))
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        config = choose_config(q, k, v, extra_k, extra_v, extra_kv_mask, spec, scale, extra_kv_bias)
        return _launch(q, k, v, extra_k, extra_v, extra_kv_mask, spec, scale, config, extra_kv_bias, out)


# The custom ops' annotations are objects (this module does not postpone them) spelled with typing's Optional, List
# and Tuple: torch 2.6 infers an op's schema from those alone (not from strings, ``Tensor | None`` or ``list[int]``),
# and without the ops gna_diffusers would not import there.
@torch.library.custom_op("gna_diffusers::gna_fwd", mutates_args=())
def gna_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_k: Optional[torch.Tensor],
    extra_v: Optional[torch.Tensor],
    extra_kv_mask: Optional[torch.Tensor],
    extra_kv_bias: Optional[torch.Tensor],
    grid: List[int],
    window: List[int],
    stride: List[int],
    dilation: List[int],
    causal: List[bool],
    scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Custom op around the kernel: returns ``(out (B, N, H, D), lse (B, N, H) float32)``."""
    return _tuned_launch(q, k, v, extra_k, extra_v, extra_kv_mask, extra_kv_bias, grid, window, stride, dilation,
                         causal, scale)


@gna_fwd.register_fake
def _(q, k, v, extra_k, extra_v, extra_kv_mask, extra_kv_bias, grid, window, stride, dilation, causal, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("gna_diffusers::gna_fwd_into", mutates_args=("out",))
def gna_fwd_into(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_k: Optional[torch.Tensor],
    extra_v: Optional[torch.Tensor],
    extra_kv_mask: Optional[torch.Tensor],
    extra_kv_bias: Optional[torch.Tensor],
    grid: List[int],
    window: List[int],
    stride: List[int],
    dilation: List[int],
    causal: List[bool],
    scale: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """:func:`gna_fwd` writing its output into ``out`` (B, N, H, D), any strides with unit stride along D
    (``gna_attention`` checks it); returns the LSE (B, N, H) float32."""
    return _tuned_launch(q, k, v, extra_k, extra_v, extra_kv_mask, extra_kv_bias, grid, window, stride, dilation,
                         causal, scale, out)[1]


@gna_fwd_into.register_fake
def _(q, k, v, extra_k, extra_v, extra_kv_mask, extra_kv_bias, grid, window, stride, dilation, causal, scale, out):
    return q.new_empty(q.shape[:3], dtype=torch.float32)


def _pattern(spec: GNASpec) -> tuple[list, ...]:
    return list(spec.grid), list(spec.window), list(spec.stride), list(spec.dilation), list(spec.causal)


def run(q, k, v, spec, extra_k, extra_v, extra_kv_mask, extra_kv_bias, scale, return_lse):
    out, lse = gna_fwd(q, k, v, extra_k, extra_v, extra_kv_mask, extra_kv_bias, *_pattern(spec), scale)
    return out, (lse if return_lse else None)


def run_into(q, k, v, spec, extra_k, extra_v, extra_kv_mask, extra_kv_bias, scale, return_lse, out):
    lse = gna_fwd_into(q, k, v, extra_k, extra_v, extra_kv_mask, extra_kv_bias, *_pattern(spec), scale, out)
    return out, (lse if return_lse else None)


def _unsupported(q: torch.Tensor, spec: GNASpec, needs_grad: bool) -> str | None:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if q.device.type != "cuda" and not _interpreting():
        return "needs a CUDA device (or TRITON_INTERPRET=1 set before importing triton, for CPU tests)"
    if (problem := triton_gpu_problem(q.device)) is not None:
        return problem
    if needs_grad:
        return "forward only (inference): use backend='flex' when gradients are needed"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (float16, bfloat16, float32)"
    if q.dtype == torch.bfloat16 and q.device.type != "cuda":  # interpreting: a wrong result, not an error
        return ("bfloat16 under the Triton interpreter, whose tl.dot multiplies bfloat16 bit patterns "
                "(triton-lang/triton#11584): use float16 or float32 there, or another backend")
    if not MIN_HEAD_DIM <= q.shape[-1] <= MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} is outside {MIN_HEAD_DIM}..{MAX_HEAD_DIM}"
    if q.device.type != "cuda":
        return interpreter_problem()
    return None


BACKEND = Backend("triton", run, _unsupported, run_into)
