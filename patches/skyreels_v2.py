"""SkyReels-V2 (SkyReelsV2Transformer3DModel): Wan's architecture with processors of its own. Each block's
``attn1`` is self-attention over the video tokens alone (``attn2``, the text and image cross-attention,
keeps its stock processor; both are ``SkyReelsV2AttnProcessor``: only ``attn1`` is routed).

Diffusion forcing with ``num_frame_per_block > 1`` (``_set_ar_attention``, as the diffusion-forcing
pipelines' ``causal_block_size`` sets it) gives the self-attention a block-causal mask over the frames,
which a neighborhood cannot express: those calls run dense with one warning. With one frame per block
(diffusion forcing's per-frame noise levels, no mask) and in the plain text-to-video and image-to-video
pipelines, GNA runs.

Layout probe: hidden_states (B, C, F, H, W) with patch (1, 2, 2) -> (F, H / 2, W / 2), from shapes.

Context parallelism: diffusers ships no plan for SkyReels-V2; Wan's (``wan.parallel_plan``, for VACE) fits it.
"""

from __future__ import annotations

import torch
from diffusers import SkyReelsV2Transformer3DModel
from diffusers.models.transformers import transformer_skyreels_v2
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout

from . import wan


class GNASkyReelsV2AttnProcessor(RoutedProcessorMixin, SkyReelsV2AttnProcessor):
    """SkyReelsV2AttnProcessor whose self-attention call runs GNA over the video grid; all else stock."""


LAYOUT = wan.LAYOUT  # Wan's (F, H, W) / patch_size grid from the latents' shape


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The video grid; calls under a block-causal mask (several frames per diffusion-forcing block) are
    not placed on it."""
    frames_per_block = module.config.num_frame_per_block
    if frames_per_block > 1:
        raise LayoutError(f"diffusion forcing with {frames_per_block} frames per block masks attention "
                          f"block-causally over the frames, which a neighborhood window cannot express")
    return LAYOUT.probe(module, args, kwargs, prepared)


PATCH = ModelPatch(
    family="skyreels-v2",
    transformer_class=SkyReelsV2Transformer3DModel,
    processor_class=GNASkyReelsV2AttnProcessor,
    stock_processor_class=SkyReelsV2AttnProcessor,
    dispatch_module=transformer_skyreels_v2,
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=layout_probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    adoptable_processors=(SkyReelsV2AttnProcessor,),
    attention="attn1",
    parallel_plan=wan.parallel_plan,  # diffusers 0.42 has none for SkyReels-V2
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> SkyReelsV2Transformer3DModel:
    """A randomly initialised SkyReels-V2 transformer for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return SkyReelsV2Transformer3DModel(**wan.TINY_CONFIG, num_layers=num_layers).eval()


latent_grid = wan.latent_grid  # the Wan VAE (4x in time, 8x in space) and 1x2x2 patches
transformer_inputs = wan.transformer_inputs  # the same forward arguments

# SkyReels-V2 14B (its T2V 540P and 720P models): Wan 2.1 14B's shape; for timing with random weights.
FULL_CONFIG = wan.FULL_CONFIG
DEFAULT_PRESET = "skyreels-v2-720p"
DEFAULT_STEPS = 50  # SkyReelsV2Pipeline's default num_inference_steps
TEXT_TOKENS = 512  # UMT5, as Wan
NAME_PATTERN = r"skyreels"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline SkyReelsV2Pipeline with Wan's tiny parts: 32x32 pixels x 9 frames -> a 5x4x4 token grid."""
    import importlib.util

    from diffusers import SkyReelsV2Pipeline

    if importlib.util.find_spec("ftfy") is None:  # the pipeline would fail at its first prompt (NameError)
        raise ImportError("SkyReels-V2's pipeline cleans prompts with ftfy, which diffusers does not install: "
                          "pip install ftfy")

    return SkyReelsV2Pipeline(transformer=tiny_transformer(seed), **wan.tiny_parts(seed))


tiny_call_kwargs = wan.tiny_call_kwargs
TINY_NAME = "tiny-skyreels-v2"
