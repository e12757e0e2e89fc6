"""Reading one argument of a transformer's forward call inside a forward pre-hook."""

from __future__ import annotations

import functools
import inspect


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
