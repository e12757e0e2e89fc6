"""Reading one argument of a transformer's forward call inside a forward pre-hook, and what a host sync read from
one (an ids tensor) once per tensor."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


@functools.lru_cache(maxsize=None)
def _signature(transformer_class: type) -> inspect.Signature:
    return inspect.signature(transformer_class.forward)


def forward_argument(module, args: tuple, kwargs: dict, name: str):
    """The ``name`` argument of ``module``'s forward call: pipelines pass it by keyword (no signature work,
    nothing for torch.compile to trace); a positional call is bound to the class's forward signature."""
    value = kwargs.get(name)
    if value is None and args:
        value = _signature(type(module)).bind_partial(module, *args, **kwargs).arguments.get(name)
    return value


_NOT_READ = object()


class ReadOncePerTensor(Generic[T]):
    """``read(tensor, *args)`` (a host sync, e.g. a grid read from position ids), computed again only when another
    tensor (or other hashable ``args``) comes: pipelines pass the same ids tensor every step, so it syncs once per
    generation. The last ``keep`` reads are held, their tensors weakly, by identity (2 where a pipeline alternates
    two, as a prompt's mask and its negative's)."""

    def __init__(self, read: Callable[..., T], keep: int = 1):
        self.read = read
        self.keep = keep
        self._last: list[tuple[weakref.ref, tuple, T]] = []

    def _lookup(self, tensor: torch.Tensor, args: tuple):
        return next((value for ref, key, value in self._last if ref() is tensor and key == args), _NOT_READ)

    def cached(self, tensor: torch.Tensor, *args) -> T | None:
        """The value read from this very tensor (and ``args``), or None (no read)."""
        value = self._lookup(tensor, args)
        return None if value is _NOT_READ else value

    def __call__(self, tensor: torch.Tensor, *args) -> T:
        value = self._lookup(tensor, args)  # a read that gave None (a layout not placed) is not repeated either
        if value is _NOT_READ:
            value = self.read(tensor, *args)
            self._last = [*self._last, (weakref.ref(tensor), args, value)][-self.keep:]
        return value
