"""FLUX.2 (Flux2Transformer2DModel): double-stream blocks (``Flux2AttnProcessor``) and single-stream
blocks (``Flux2ParallelSelfAttnProcessor``, one GNA subclass each); joint sequence [text, target image,
reference images], no text mask.

Layout probe: ``img_ids`` (B, N, 4) holds (t, row, col, layer) per image token: the generated image is the
leading run with t = 0 (reference images get t = 10, 20, ...): FLUX.1's rule on axes 1 and 2.

FLUX.2 klein's KV-cache pipeline (``Flux2KV*`` processors, GNA subclasses of their own) runs step 0 on
[text, reference images, target image] with the references attending only among themselves, and caches
their keys; later steps run [text, target image] queries on [text, cached reference, target image] keys.
The target image's queries get GNA with text and reference keys as context in both; the references'
own attention stays dense.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import Flux2Transformer2DModel
from diffusers.models.transformers import transformer_flux2
from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._forward import forward_argument
from ._inputs import seeded_randn


class GNAFlux2AttnProcessor(RoutedProcessorMixin, Flux2AttnProcessor):
    """Flux2AttnProcessor (double-stream blocks) whose attention runs GNA over the image grid; all else stock."""


class GNAFlux2ParallelSelfAttnProcessor(RoutedProcessorMixin, Flux2ParallelSelfAttnProcessor):
    """Flux2ParallelSelfAttnProcessor (single-stream blocks) whose attention runs GNA over the image grid."""


# The KV-cache processors of FLUX.2 klein (diffusers >= 0.42).
Flux2KVAttnProcessor = getattr(transformer_flux2, "Flux2KVAttnProcessor", None)
Flux2KVParallelSelfAttnProcessor = getattr(transformer_flux2, "Flux2KVParallelSelfAttnProcessor", None)
KV_VARIANTS: dict[type, type] = {}
if Flux2KVAttnProcessor is not None and Flux2KVParallelSelfAttnProcessor is not None:

    class GNAFlux2KVAttnProcessor(RoutedProcessorMixin, Flux2KVAttnProcessor):
        """Flux2KVAttnProcessor (double-stream blocks, KV cache) with GNA for the target image's queries."""

    class GNAFlux2KVParallelSelfAttnProcessor(RoutedProcessorMixin, Flux2KVParallelSelfAttnProcessor):
        """Flux2KVParallelSelfAttnProcessor (single-stream blocks, KV cache) with GNA for the target image."""

    KV_VARIANTS = {Flux2KVAttnProcessor: GNAFlux2KVAttnProcessor,
                   Flux2KVParallelSelfAttnProcessor: GNAFlux2KVParallelSelfAttnProcessor}


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_latents``' result ``(latents, latent_ids)``: the generated image's layout (reference
    images, prepared by another method, are appended after it: the probe counts them as context)."""
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], torch.Tensor)):
        return None
    try:
        return flux.layout_from_ids(result[1][0])
    except LayoutError:
        return None  # the transformer call's own probe reports it


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """FLUX.1's probe; on the KV pipeline's step 0 ("extract") the image stream is [``num_ref_tokens``
    reference tokens, target image], so the grid is the stream's tail (read from the call's arguments, no
    host sync under torch.compile)."""
    if forward_argument(module, args, kwargs, "kv_cache_mode") != "extract":
        return flux.layout_probe(module, args, kwargs, prepared)
    references = forward_argument(module, args, kwargs, "num_ref_tokens") or 0
    img_ids = forward_argument(module, args, kwargs, "img_ids")
    if img_ids is None:
        raise LayoutError("FLUX needs img_ids in the transformer call to know the image grid")
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    if torch.compiler.is_compiling():
        if prepared is None:
            raise LayoutError("under torch.compile the FLUX.2 grid comes from the pipeline's prepare_latents")
        grid = prepared.grid
    else:
        grid = flux.layout_from_ids(ids[references:]).grid
    if references + prod(grid) != ids.shape[0]:
        raise LayoutError(f"{ids.shape[0]} image tokens are not {references} reference tokens + a {grid} grid")
    return token_layout(grid, ids.shape[0], references)


PATCH = ModelPatch(
    family="flux2",
    transformer_class=Flux2Transformer2DModel,
    processor_class=GNAFlux2AttnProcessor,
    stock_processor_class=Flux2AttnProcessor,
    dispatch_module=transformer_flux2,
    blocks={"double": "transformer_blocks", "single": "single_transformer_blocks"},
    text_first=True,
    layout_probe=layout_probe,
    layout_from_prepared=layout_from_prepared,
    video=False,
    adoptable_processors=(Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor, *KV_VARIANTS),
    block_processors={"single": GNAFlux2ParallelSelfAttnProcessor},
    processor_variants=KV_VARIANTS,
    cached_context_keys=True,
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> Flux2Transformer2DModel:
    """A randomly initialised FLUX.2 transformer for CPU tests (2 heads x 16, 16 packed latent channels)."""
    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    ).eval()


latent_grid = flux.latent_grid  # VAE 8x (a 2x2 patchified latent): 16 pixels per token, like FLUX.1


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1,
                       references: tuple[tuple[int, int], ...] = (), device="cpu", dtype=torch.float32,
                       seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid with ``text`` tokens and reference images of the
    given (rows, cols) token shapes (t = 10, 20, ... as the pipelines number them)."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)

    def ids(t: int, rows: int, cols: int) -> torch.Tensor:
        return torch.cartesian_prod(torch.tensor([t]), torch.arange(rows), torch.arange(cols), torch.tensor([0]))

    img_ids = torch.cat([ids(0, *grid), *(ids(10 * (i + 1), *shape) for i, shape in enumerate(references))])
    txt_ids = torch.cartesian_prod(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.arange(text))

    inputs = dict(
        hidden_states=randn(batch, img_ids.shape[0], config.in_channels),
        encoder_hidden_states=randn(batch, text, config.joint_attention_dim),
        timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
        img_ids=img_ids[None].expand(batch, -1, -1).to(device=device, dtype=dtype),
        txt_ids=txt_ids[None].expand(batch, -1, -1).to(device=device, dtype=dtype),
        return_dict=False,
    )
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 4.0, device=device, dtype=dtype)
    return inputs


# FLUX.2 [dev] (32B): 8 double + 48 single blocks, 48 heads x 128, Mistral text features of width 15360.
FULL_CONFIG = dict(
    patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128, num_attention_heads=48,
    joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000, guidance_embeds=True,
)
DEFAULT_PRESET = "flux2-2k"
DEFAULT_STEPS = 50  # Flux2Pipeline's default num_inference_steps
TEXT_TOKENS = 512
NAME_PATTERN = r"flux[.-]?2"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline Flux2KleinPipeline (Qwen3 text encoder) with random weights: 32x32 images -> an 8x8 grid
    (the tiny VAE downsamples 2x and patchifies 2x2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3ForCausalLM

    from ._tiny import byte_level_tokenizer, qwen3_config

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(qwen3_config(len(tokenizer), num_hidden_layers=3)).eval()
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=tiny_transformer(seed))


def tiny_vae():
    """A FLUX.2 VAE with 4 latent channels that downsamples 2x (32x32 pixels -> 16x16 latents)."""
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        latent_channels=4, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, sample_size=32,
    ).eval()


def tiny_call_kwargs() -> dict:
    """The tiny Qwen3 has 3 layers (the pipeline stacks layers 9, 18 and 27 of the real one)."""
    return dict(max_sequence_length=32, text_encoder_out_layers=(1, 2, 3))


TINY_NAME = "tiny-flux2"
