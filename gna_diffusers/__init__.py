"""gna-diffusers: Generalized Neighborhood Attention for diffusers pipelines."""

from .backends import available_backends, register_backend
from .ops import gna_attention
from .sim import SimResult, simulate
from .spec import GNASpec

__version__ = "0.1.0"

__all__ = [
    "GNASpec",
    "SimResult",
    "available_backends",
    "gna_attention",
    "register_backend",
    "simulate",
    "__version__",
]
