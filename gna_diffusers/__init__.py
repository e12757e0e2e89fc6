"""gna-diffusers: Generalized Neighborhood Attention for diffusers pipelines.

One way in: ``apply(pipe, "flux-4k")`` / ``remove(pipe)`` / ``enabled(pipe, preset)``, presets by name
(``list_presets()``) or YAML path, and the ``gna-diffusers`` CLI. The operator ``gna_attention`` and the
simulator ``simulate`` are public too.
"""

from .backends import available_backends, backend_support, register_backend
from .config import ConfigError, GNAConfig, load_config
from .install import GNAHandle, UnsupportedModelError, apply, enabled, model_family, remove
from .ops import gna_attention
from .presets import list_presets, load_preset
from .sim import SimResult, simulate
from .spec import GNASpec

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GNAConfig",
    "GNAHandle",
    "GNASpec",
    "SimResult",
    "UnsupportedModelError",
    "apply",
    "available_backends",
    "backend_support",
    "enabled",
    "gna_attention",
    "list_presets",
    "load_config",
    "load_preset",
    "model_family",
    "register_backend",
    "remove",
    "simulate",
    "__version__",
]
