"""ChronoEdit (ChronoEditTransformer3DModel): image editing as a short image-to-video generation, on Wan
2.1's architecture with a copy of its processor (``transformer_chronoedit.WanAttnProcessor``, another
class than Wan's). Each block's ``attn1`` is self-attention over the video tokens alone; ``attn2`` (text
and CLIP image cross-attention) keeps its stock processor. The temporal-reasoning RoPE only moves
positions: the token grid is Wan's.

Layout probe: hidden_states (B, C, F, H, W) with patch (1, 2, 2) -> (F, H / 2, W / 2), from shapes; the
condition is concatenated along channels, so the grid is the latents'.
"""

from __future__ import annotations

import torch
from diffusers import ChronoEditTransformer3DModel
from diffusers.models.transformers import transformer_chronoedit
from diffusers.models.transformers.transformer_chronoedit import WanAttnProcessor as ChronoEditAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import wan
from ._inputs import seeded_randn


class GNAChronoEditAttnProcessor(RoutedProcessorMixin, ChronoEditAttnProcessor):
    """ChronoEdit's WanAttnProcessor whose self-attention call runs GNA over the video grid; all else stock."""


LAYOUT = wan.LAYOUT  # Wan's (F, H, W) / patch_size grid from the latents' shape

PATCH = ModelPatch(
    family="chronoedit",
    transformer_class=ChronoEditTransformer3DModel,
    processor_class=GNAChronoEditAttnProcessor,
    stock_processor_class=ChronoEditAttnProcessor,
    dispatch_module=transformer_chronoedit,
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    adoptable_processors=(ChronoEditAttnProcessor,),
    attention="attn1",
)

CLIP_WIDTH = 16  # the tiny CLIP vision encoder's hidden size


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> ChronoEditTransformer3DModel:
    """A randomly initialised ChronoEdit transformer for CPU tests (2 heads x 16): 4 noise + 2 mask + 4
    condition latent channels in (the tiny Wan VAE compresses 2x in time), CLIP image tokens of width 16."""
    torch.manual_seed(seed)
    config = dict(wan.TINY_CONFIG, in_channels=10, image_dim=CLIP_WIDTH, added_kv_proj_dim=32)
    return ChronoEditTransformer3DModel(**config, num_layers=num_layers).eval()


latent_grid = wan.latent_grid  # the Wan VAE (4x in time, 8x in space) and 1x2x2 patches


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Wan's inputs plus 257 CLIP image tokens (a 224-pixel ViT-H/14's)."""
    inputs = wan.transformer_inputs(transformer, grid, text=text, batch=batch, device=device, dtype=dtype, seed=seed)
    randn = seeded_randn(seed + 1, device, dtype)
    inputs["encoder_hidden_states_image"] = randn(batch, 257, transformer.config.image_dim)
    return inputs


# ChronoEdit-14B: Wan 2.1 I2V 14B's shape (36 latent channels in, CLIP ViT-H/14 image tokens of width 1280).
FULL_CONFIG = dict(
    wan.FULL_CONFIG, in_channels=36, image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024,
)
DEFAULT_PRESET = "chronoedit-720p"
DEFAULT_STEPS = 50  # ChronoEditPipeline's default num_inference_steps
TEXT_TOKENS = 512  # UMT5, as Wan
NAME_PATTERN = r"chronoedit"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline ChronoEditPipeline with Wan's tiny parts and a tiny CLIP vision encoder: a 32x32 input
    image and 9 frames -> a 3x4x4 token grid."""
    from diffusers import ChronoEditPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=CLIP_WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=CLIP_WIDTH,
    )).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ChronoEditPipeline(transformer=tiny_transformer(seed), image_encoder=image_encoder,
                              image_processor=image_processor, **wan.tiny_parts(seed))


def tiny_call_kwargs() -> dict:
    """The image to edit (ChronoEdit's only mode), and Wan's short UMT5 sequence and 9 frames."""
    from PIL import Image

    pixels = (torch.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).to(torch.uint8).numpy()
    return dict(image=Image.fromarray(pixels), **wan.tiny_call_kwargs())


TINY_NAME = "tiny-chronoedit"
