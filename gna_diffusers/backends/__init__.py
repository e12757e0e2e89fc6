"""Backends of :func:`gna_diffusers.gna_attention`, behind one small registry.

A backend computes GNA for already validated inputs. Its signature is ``run(q, k, v, spec, extra_k,
extra_v, extra_kv_mask, extra_kv_bias, scale, return_lse) -> (out, lse | None)`` with q ``(B, N, H, D)``,
k, v ``(B, N, H_kv, D)`` (H_kv divides H: grouped-query attention), extra_k / extra_v ``(B, M, H_kv, D)``
or None, extra_kv_mask ``(B, M)`` bool or None, extra_kv_bias ``(B, M)`` float (added to the scaled scores
of the extra keys) or None, out ``(B, N, H, D)`` in q's dtype and lse ``(B, N, H)`` float32 (natural log).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..spec import GNASpec

logger = logging.getLogger("gna_diffusers")

BackendFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Backend:
    """A registered backend.

    ``unsupported(q, spec, needs_grad)`` returns ``None`` when the backend can run the call, else a short
    reason (shown when the backend was requested explicitly, and in the ``auto`` debug log).
    """

    name: str
    run: BackendFn
    unsupported: Callable[[torch.Tensor, GNASpec, bool], str | None]
    # Optional ``run`` with an ``out`` tensor to write into (no output allocation); else results are copied.
    run_into: BackendFn | None = None


_REGISTRY: dict[str, Backend] = {}
_WARNED: set[str] = set()
# ``auto`` tries these in order and takes the first that can run the call.
_AUTO_ORDER = {"cuda": ("triton", "flex", "reference"), "cpu": ("reference", "flex")}


# The oldest CUDA GPUs torch runs triton code on (torch.utils._triton.has_triton; Inductor refuses older ones, and
# triton's own README lists 8.0+): Volta.
TRITON_MIN_CAPABILITY = (7, 0)


def triton_gpu_problem(device: torch.device) -> str | None:
    """Why triton kernels cannot run on ``device`` (a CUDA GPU older than Volta), or None. Read by the backends built
    on triton (ours, and flex, which Inductor compiles with it), so that ``auto`` passes them over there instead of
    failing a generation. Not asked while compiling: Inductor refuses such a GPU itself."""
    if device.type != "cuda" or torch.version.hip is not None or torch.compiler.is_compiling():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < TRITON_MIN_CAPABILITY:
        return f"triton kernels need compute capability 7.0 or newer, as torch's own do; this GPU is {major}.{minor}"
    return None


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend under ``backend.name``."""
    _REGISTRY[backend.name] = backend


def available_backends() -> list[str]:
    """Names accepted by ``backend=``, ``"auto"`` first."""
    return ["auto", *sorted(_REGISTRY)]


def _auto_order(device_type: str) -> list[str]:
    """The registered backends ``auto`` tries on a device of this type, in order."""
    return [name for name in _AUTO_ORDER.get(device_type, ("reference",)) if name in _REGISTRY]


def backend_support(device: torch.device | str, dtype: torch.dtype, head_dim: int = 128
                    ) -> tuple[dict[str, str | None], str | None]:
    """Why each registered backend cannot run a GNA call on ``device`` in ``dtype`` with heads of ``head_dim`` (None
    where it can; asked with a small 2-D pattern and no gradients), those ``auto`` tries there first, in its order;
    and the backend ``auto`` takes (None: no backend can)."""
    q = torch.empty(1, 64, 1, head_dim, dtype=dtype, device=device)
    spec = GNASpec.create((8, 8), 3)
    order = _auto_order(q.device.type)
    names = [*order, *sorted(set(_REGISTRY) - set(order))]
    reasons = {name: _REGISTRY[name].unsupported(q, spec, False) for name in names}
    return reasons, next((name for name in order if reasons[name] is None), None)


def select_backend(name: str, q: torch.Tensor, spec: GNASpec, needs_grad: bool) -> Backend:
    """Resolve ``name`` (or ``"auto"``) to a backend that can run this call, or raise ``ValueError``."""
    if name != "auto":
        if name not in _REGISTRY:
            raise ValueError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
        backend = _REGISTRY[name]
        reason = backend.unsupported(q, spec, needs_grad)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run this call: {reason}")
        return backend
    reasons = []
    for candidate in _auto_order(q.device.type):
        backend = _REGISTRY[candidate]
        reason = backend.unsupported(q, spec, needs_grad)
        if reason is None and torch.compiler.is_compiling():
            return backend  # logging and warnings would break the graph; the eager call already said it
        if reason is None:
            logger.debug("gna_attention auto backend: %s (%s)", candidate, "; ".join(reasons) or "first choice")
            if reasons and reasons[0] not in _WARNED:  # the device's first choice was skipped: say why, once
                _WARNED.add(reasons[0])
                warnings.warn(f"gna_attention: using backend {candidate!r} because {reasons[0]}", stacklevel=3)
            return backend
        reasons.append(f"{candidate}: {reason}")
    raise ValueError(f"no GNA backend can run this call on {q.device}: {'; '.join(reasons)}")


def _register_builtin() -> None:
    from . import flex, reference, triton_gna

    for module in (reference, flex, triton_gna):
        register_backend(module.BACKEND)


_register_builtin()
