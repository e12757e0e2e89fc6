"""Random inputs for the families' ``transformer_inputs`` (tests and the random-weights timing)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def seeded_randn(seed: int, device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """``randn(*shape)`` drawing from one generator seeded with ``seed``: a call's inputs reproduce."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    return randn
