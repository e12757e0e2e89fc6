"""FLUX.3 (Flux3Transformer2DModel): per-mode blocks, then single-stream blocks over [text, generated
image, reference images]. One processor class (``Flux3AttnProcessor``) everywhere, no attention mask.

- ``mode_blocks["image"]`` (block type ``image``): the generated image's tokens attend among themselves
  only: the whole sequence is the grid.
- ``single_transformer_blocks`` (block type ``single``): [text, image grid, reference tokens]; the text and
  the references are context keys, as for FLUX.2.
- ``txt_mode_blocks`` and ``mode_blocks["image_cond"]`` (the text's and the references' own
  self-attention) keep the stock processor.

Layout probe: ``img_ids`` (N, 4) holds (t, h, w, l) of the generated image's tokens only, h and w scaled
by the model's image RoPE scale (0.5 in the pipeline): the grid's rows and columns are counted, not read
off the values. References arrive as ``image_cond_hidden_states``; the image stream is image + references.
diffusers 0.42 ships FLUX.3 as modular pipelines (``Flux3ModularPipeline``), which ``apply`` takes like any
pipeline (its ``.transformer`` and ``.scheduler``); they have no ``prepare_latents`` to read the grid from,
so under ``torch.compile`` of the whole transformer the layers run dense with a warning: compile the
blocks instead (``transformer.compile_repeated_blocks``), whose hooks run eagerly.
"""

from __future__ import annotations


import torch
from diffusers.models.transformers import transformer_flux3
from diffusers.models.transformers.transformer_flux3 import Flux3AttnProcessor, Flux3Transformer2DModel

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._forward import forward_argument
from ._inputs import seeded_randn


class GNAFlux3AttnProcessor(RoutedProcessorMixin, Flux3AttnProcessor):
    """Flux3AttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The generated image's grid from ``img_ids`` (FLUX's reading: one host sync per ids tensor), with the
    reference tokens (``image_cond_hidden_states``) after it in the image stream."""
    img_ids = forward_argument(module, args, kwargs, "img_ids")
    if img_ids is None:
        raise LayoutError("FLUX.3 needs img_ids in the transformer call to know the image grid")
    if torch.compiler.is_compiling() and flux.ids_layout.cached(img_ids) is None:
        raise LayoutError("under torch.compile of the whole transformer the FLUX.3 grid cannot be read from "
                          "img_ids; compile its blocks instead (transformer.compile_repeated_blocks(...))")
    references = forward_argument(module, args, kwargs, "image_cond_hidden_states")
    stream = img_ids.shape[-2] + (0 if references is None else references.shape[1])
    return token_layout(flux.ids_layout(img_ids).grid, stream)


PATCH = ModelPatch(
    family="flux3",
    transformer_class=Flux3Transformer2DModel,
    processor_class=GNAFlux3AttnProcessor,
    stock_processor_class=Flux3AttnProcessor,
    dispatch_module=transformer_flux3,
    blocks={"image": "mode_blocks.image", "single": "single_transformer_blocks"},
    text_first=True,
    layout_probe=layout_probe,
    video=False,
    adoptable_processors=(Flux3AttnProcessor,),
    grid_only_blocks=("image",),
)


# diffusers' Flux3Transformer2DModel defaults, the configuration its docstring describes: 5 per-mode + 28
# single blocks, 24 heads x 128, stacked Qwen3-VL text features of width 20480; for timing with random weights.
FULL_CONFIG = dict(
    in_channels=128, cond_in_channels=128, num_layers=5, num_single_layers=28, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=20480, timestep_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=10000,
)
DEFAULT_PRESET = "flux3-2k"
DEFAULT_STEPS = 50  # the modular pipeline's default num_inference_steps
TEXT_TOKENS = 160  # the text encoder pads prompts to multiples of 80 tokens; two blocks, a typical prompt
NAME_PATTERN = r"flux[.-]?3"  # names of this family, for --random-weights
# compare and sweep load its real weights as a modular pipeline (ModularPipeline.from_pretrained); it has no tiny one.
WEIGHTS_GAP = None


latent_grid = flux.latent_grid  # VAE 8x, 2x2 packed: 16 pixels per token, as FLUX.2


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> Flux3Transformer2DModel:
    """A randomly initialised FLUX.3 transformer for CPU tests (2 heads x 16, 16 packed latent channels)."""
    torch.manual_seed(seed)
    return Flux3Transformer2DModel(
        in_channels=16, cond_in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, timestep_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
    ).eval()


def image_ids(rows: int, cols: int, layer: int = 0, rope_scale: float = 0.5) -> torch.Tensor:
    """(rows * cols, 4) ids (t, h, w, l) as the FLUX.3 pipeline builds them: h and w scaled by ``rope_scale``,
    ``l`` 0 for the generated image and negative for references."""
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(rows), torch.arange(cols), torch.tensor([layer])).float()
    ids[:, 1:3] *= rope_scale
    return ids


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1,
                       references: tuple[int, int] | None = None, device="cpu", dtype=torch.float32,
                       seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` tokens and, optionally, one reference
    image of (rows, cols) tokens."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)

    inputs = dict(
        hidden_states=randn(batch, grid[0] * grid[1], config.in_channels),
        encoder_hidden_states=randn(batch, text, config.joint_attention_dim),
        timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
        img_ids=image_ids(*grid).to(device=device, dtype=dtype),
        txt_ids=torch.cartesian_prod(*(torch.zeros(1),) * 3, torch.arange(text).float()).to(device=device, dtype=dtype),
        return_dict=False,
    )
    if references is not None:
        inputs["image_cond_hidden_states"] = randn(batch, references[0] * references[1], config.cond_in_channels)
        inputs["image_cond_ids"] = image_ids(*references, layer=-1).to(device=device, dtype=dtype)
    return inputs
