"""Context-parallel plans for transformers diffusers ships none for, built one way: each block's attention and
feed-forward sublayers get their shard of the tokens and their outputs are gathered (the layout of diffusers' own
Helios plan). What runs between the sublayers (per-token modulation, control hints, adapters) then sees the whole
sequence on every rank, so the plan needs nothing model-specific beyond the sublayers' names and arguments."""

from __future__ import annotations

import torch


def sublayer_plan(transformer: torch.nn.Module, block_lists: tuple[str, ...],
                  sublayers: dict[str, dict[str, int]]) -> dict:
    """A ``cp_plan`` sharding along dim 1 the arguments ``sublayers`` names (sublayer -> {argument: its rank}) of every
    block in the transformer's ``block_lists`` that it has, and gathering each of those sublayers' outputs (B, S, D)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    present = {name: len(getattr(transformer, name)) for name in block_lists if hasattr(transformer, name)}
    inputs = {f"{name}.*.{part}": {argument: ContextParallelInput(split_dim=1, expected_dims=rank, split_output=False)
                                   for argument, rank in arguments.items()}
              for name in present for part, arguments in sublayers.items()}
    outputs = {f"{name}.{i}.{part}": ContextParallelOutput(gather_dim=1, expected_dims=3)
               for name, count in present.items() for i in range(count) for part in sublayers}
    return inputs | outputs
