"""Which model a run uses: a built-in tiny pipeline, a local directory, a Hugging Face hub id, or (for
speed only) a full-size transformer built from its config with random weights."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from gna_diffusers import model_family
from gna_diffusers.patches import FAMILY_MODULES, MODULES, SPEED_ONLY_MODULES

TINY_MODELS = {module.TINY_NAME: module for module in FAMILY_MODULES.values()}


class HarnessError(ValueError):
    """A run that cannot start: bad model, preset or flags. The message says what to change."""


@dataclass
class Model:
    name: str
    family: ModuleType  # the patches/ module of the model's family
    pipeline: object | None  # None in random-weights mode
    transformer: torch.nn.Module
    weights: str  # "pretrained", "random (built-in tiny model)" or "random (full-size config)"
    # (height, width, frames) -> latent token grid; a family's variants may differ (Wan 2.2 TI2V-5B's VAE)
    latent_grid: Callable[..., tuple[int, ...]] | None = None

    def __post_init__(self):
        if self.latent_grid is None:
            self.latent_grid = self.family.latent_grid

    @property
    def tiny(self) -> bool:
        return self.name in TINY_MODELS

    @property
    def has_quality(self) -> bool:
        return self.weights == "pretrained"


def load_pipeline(name: str, device: torch.device, dtype: torch.dtype) -> Model:
    """A tiny built-in pipeline, a local pipeline folder, or a hub id (from the local cache when offline): a
    DiffusionPipeline, or a modular pipeline (``modular_model_index.json``: FLUX.3, MiniMax-H3, Anima, Echo) with its
    components loaded."""
    if name in TINY_MODELS:
        family = TINY_MODELS[name]
        pipeline = family.tiny_pipeline()
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):  # nn.Module.to: see random_transformer
                torch.nn.Module.to(component, device=device, dtype=dtype)
        return Model(name, family, pipeline, pipeline.transformer, "random (built-in tiny model)")
    from diffusers import DiffusionPipeline

    local = Path(name).expanduser()
    if not local.is_dir() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise HarnessError(
            f"model {name!r} not found: not a built-in tiny model ({', '.join(TINY_MODELS)}), not a local "
            f"pipeline folder, and not a hub id of the form owner/name"
        )
    for family, module in SPEED_ONLY_MODULES.items():  # refused before gigabytes of weights are loaded
        if getattr(module, "WEIGHTS_GAP", None) and re.search(module.NAME_PATTERN, Path(name).name, re.IGNORECASE):
            raise _speed_only(family, name)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    source = str(local) if local.is_dir() else name
    if local.is_dir() and not any((local / index).exists() for index in ("model_index.json", MODULAR_INDEX)):
        raise HarnessError(f"model {name!r}: the folder holds neither model_index.json (a pipeline) nor "
                           f"{MODULAR_INDEX} (a modular pipeline); give a pipeline folder saved with save_pretrained")
    try:
        if local.is_dir() and not (local / "model_index.json").exists():
            pipeline = _modular_pipeline(source, dtype, offline)
        else:
            try:
                pipeline = DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=offline)
            except OSError as error:  # no model_index.json: a hub repo may hold a modular pipeline alone
                if local.is_dir() or "model_index.json" not in str(error):
                    raise
                pipeline = _modular_pipeline(source, dtype, offline)
    except ImportError as error:  # e.g. Cosmos pipelines build their guardrail, a package of its own
        raise HarnessError(f"cannot load model {name!r}: its pipeline needs a package that is not installed: "
                           f"{str(error).splitlines()[0]}") from None
    except (OSError, ValueError) as error:
        where = "the local folder" if local.is_dir() else "the hub (or the local cache, when offline)"
        raise HarnessError(f"cannot load model {name!r} from {where}: {str(error).splitlines()[0]}") from None
    transformer = getattr(pipeline, "transformer", None)
    try:
        patch = model_family(pipeline)
    except TypeError as error:
        raise HarnessError(str(error)) from None
    family = MODULES[patch.family]
    if getattr(family, "WEIGHTS_GAP", None):
        raise _speed_only(patch.family, name)
    pipeline.to(device)
    return Model(name, family, pipeline, transformer, "pretrained")


MODULAR_INDEX = "modular_model_index.json"  # what a modular pipeline's folder or repo holds instead of model_index.json


def _modular_pipeline(source: str, dtype: torch.dtype, offline: bool):
    """A modular pipeline (diffusers' ModularPipeline.from_pretrained) with every component loaded in ``dtype``."""
    from diffusers import ModularPipeline

    pipeline = ModularPipeline.from_pretrained(source, local_files_only=offline)
    pipeline.load_components(dtype=dtype, local_files_only=offline)
    return pipeline


def is_modular(pipeline) -> bool:
    """Whether ``pipeline`` is one of diffusers' modular pipelines (called with its blocks' inputs and an ``output``
    name rather than a __call__ signature)."""
    from diffusers import ModularPipeline

    return isinstance(pipeline, ModularPipeline)


def pipeline_inputs(pipeline) -> dict[str, bool]:
    """The inputs a pipeline's call takes, each with whether it is required: a DiffusionPipeline's ``__call__``
    parameters, or a modular pipeline's block inputs."""
    if is_modular(pipeline):
        return {param.name: bool(param.required) for param in pipeline._blocks.inputs if param.name}
    return {name: param.default is inspect.Parameter.empty
            for name, param in inspect.signature(pipeline.__call__).parameters.items()
            if param.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


def _speed_only(family: str, name: str) -> HarnessError:
    return HarnessError(
        f"model {name!r}: {family} {SPEED_ONLY_MODULES[family].WEIGHTS_GAP}: time its transformer with "
        f"--random-weights, or call gna_diffusers.apply(pipe, preset) on your own pipeline"
    )


def random_transformer(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Model:
    """A transformer with random weights: full-size from the family's real config (built on the meta
    device, then materialized on ``device``), or the tiny one for ``tiny-*`` names."""
    if name in TINY_MODELS:
        family = TINY_MODELS[name]
        # torch.nn.Module.to: diffusers' own .to() warns about fp32-kept modules these models do not have.
        transformer = torch.nn.Module.to(family.tiny_transformer(seed), device=device, dtype=dtype)
        return Model(name, family, None, transformer, "random (built-in tiny model)")
    family = family_named(name)
    # A family with several full-size shapes says which one a name means (e.g. Wan 2.1 14B or 2.2 TI2V-5B).
    config, latent_grid = family.full_size(name) if hasattr(family, "full_size") else (family.FULL_CONFIG, None)
    transformer = materialize_random(on_meta(family.PATCH.transformer_class, config), device, dtype, seed)
    return Model(name, family, None, transformer, "random (full-size config)", latent_grid)


def family_named(name: str) -> ModuleType:
    """The family module whose ``NAME_PATTERN`` the model's own name matches: the part after the owner of a hub id
    (``hunyuanvideo-community/HunyuanImage-2.1-Diffusers`` is HunyuanImage, not HunyuanVideo) or a folder's name."""
    own_name = Path(name).name
    matches = [module for module in MODULES.values() if re.search(module.NAME_PATTERN, own_name, re.IGNORECASE)]
    if len(matches) != 1:
        raise HarnessError(
            f"--random-weights needs a model name that names one family ({', '.join(MODULES)}), e.g. "
            f"black-forest-labs/FLUX.1-dev, hunyuanvideo-community/HunyuanVideo, Wan-AI/Wan2.1-T2V-14B-Diffusers, "
            f"Qwen/Qwen-Image, hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v or Lightricks/LTX-2; "
            f"got {name!r}"
        )
    return matches[0]


def on_meta(transformer_class, config: dict) -> torch.nn.Module:
    """The model built from ``config`` with its parameters on the meta device (shapes only, no memory) and its
    buffers computed on the CPU as the constructor computes them (positional tables, RoPE frequencies)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return transformer_class.from_config(config)


def materialize_random(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Allocate an :func:`on_meta` module on ``device``, fill its weights with N(0, 0.02) (timing does not depend
    on them) and keep its buffers' values (SD3's and PixArt's positional tables, Wan's RoPE: not weights)."""
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
    module = module.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])
    module = torch.nn.Module.to(module, dtype).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    return module
