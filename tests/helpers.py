"""Small helpers the family tests share."""

import contextlib
import warnings

import torch


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference between two tensors of one shape."""
    return (a - b).abs().max().item()


@contextlib.contextmanager
def no_gna_warnings():
    """Inside: any warning of gna_diffusers' (its messages start with "gna") fails the test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        yield
