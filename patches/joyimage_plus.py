"""JoyImage-Edit Plus (JoyImageEditPlusTransformer3DModel): JoyImage-Edit with several reference images of their own
sizes. The pipeline packs each sample's items as patches, the generated image first and its references after it,
padded to the batch's longest sample; ``shape_list`` gives each item's (t, h, w) patch grid. Each double-stream
block's ``attn`` (``JoyImageEditPlusAttnProcessor``, through diffusers' dispatch) runs over [image patches, text] with
a (B, 1, 1, S) boolean key mask over the padding and the prompt's. The references are context, as the text.

Layout probe: the generated item's grid, ``shape_list[b][0]``, the same for every sample (plain ints: no host sync),
at the front of the ``max_patches`` image tokens.
"""

from __future__ import annotations

import torch
from diffusers import JoyImageEditPlusTransformer3DModel
from diffusers.models.transformers import transformer_joyimage_edit_plus
from diffusers.models.transformers.transformer_joyimage_edit_plus import JoyImageEditPlusAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux, joyimage
from ._forward import forward_argument
from ._inputs import seeded_randn
from ._tiny import randomize_modulation


class GNAJoyImageEditPlusAttnProcessor(RoutedProcessorMixin, JoyImageEditPlusAttnProcessor):
    """JoyImageEditPlusAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The generated item's patch grid (every sample's first ``shape_list`` entry) at the front of the image tokens."""
    shapes = forward_argument(module, args, kwargs, "shape_list")
    latents = forward_argument(module, args, kwargs, "hidden_states")
    if not shapes:
        raise LayoutError("JoyImage-Edit Plus needs shape_list in the transformer call to know the image grid")
    generated = {tuple(sample[0]) for sample in shapes}
    if len(generated) != 1:
        raise LayoutError(f"the samples of this call generate images of different patch grids {sorted(generated)}")
    frames, rows, cols = generated.pop()
    return token_layout((rows, cols) if frames == 1 else (frames, rows, cols), latents.shape[1])


PATCH = ModelPatch(
    family="joyimage-plus",
    transformer_class=JoyImageEditPlusTransformer3DModel,
    processor_class=GNAJoyImageEditPlusAttnProcessor,
    stock_processor_class=JoyImageEditPlusAttnProcessor,
    dispatch_module=transformer_joyimage_edit_plus,
    blocks={"blocks": "double_blocks"},
    text_first=False,  # [image patches, text]
    layout_probe=layout_probe,
    video=False,
    adoptable_processors=(JoyImageEditPlusAttnProcessor,),
)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> JoyImageEditPlusTransformer3DModel:
    """A randomly initialised JoyImage-Edit Plus transformer for CPU tests (2 heads x 16, Wan's tiny VAE's 4 latent
    channels). Its blocks' modulation tables start at zero: they get random values."""
    torch.manual_seed(seed)
    return randomize_modulation(JoyImageEditPlusTransformer3DModel(
        in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=joyimage.TEXT_WIDTH, mlp_width_ratio=2.0,
        num_layers=num_layers, rope_dim_list=[4, 6, 6],
    ).eval())


latent_grid = flux.latent_grid  # Wan's VAE (8x) and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0, references: tuple[tuple[int, int], ...] = (),
                       valid_text: tuple[int, ...] | None = None) -> dict:
    """Keyword inputs of one call on a (rows, cols) patch grid with reference images of the given patch grids (the
    same for every sample) and ``text`` prompt tokens, the first ``valid_text[b]`` of sample b valid (all by
    default), as the pipeline passes them."""
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    shapes = [(1, *grid), *((1, *shape) for shape in references)]
    patches = sum(t * h * w for t, h, w in shapes)
    lengths = valid_text if valid_text is not None else (text,) * batch
    mask = (torch.arange(text, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()
    return dict(hidden_states=randn(len(lengths), patches, config.in_channels, *config.patch_size),
                timestep=torch.full((len(lengths),), 500.0, device=device, dtype=dtype),
                encoder_hidden_states=randn(len(lengths), text, config.text_dim), encoder_hidden_states_mask=mask,
                shape_list=[list(shapes)] * len(lengths), return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults (JoyImage-Edit's shape)

DEFAULT_PRESET = "joyimage-plus-1k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 256  # the Qwen3-VL prompt
NAME_PATTERN = r"joy-?image.*plus"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline JoyImageEditPlusPipeline with random weights (JoyImage-Edit's tiny components; sizes kept): 64x64
    pixels -> 16x16 latents -> an 8x8 grid."""
    from diffusers import JoyImageEditPlusPipeline

    pipe = JoyImageEditPlusPipeline(transformer=tiny_transformer(seed), **joyimage.tiny_components(seed))
    joyimage.keep_sizes(pipe.image_processor)
    return pipe


def tiny_call_kwargs() -> dict:
    return {}


TINY_SIZE = {"height": 64, "width": 64}  # an 8x8 grid (the tiny VAE compresses 4x)
TINY_NAME = "tiny-joyimage-plus"
