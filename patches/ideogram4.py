"""Ideogram 4 (Ideogram4Transformer2DModel): a single-stream text-to-image model generating at 2048x2048 by default,
with two transformers, one for the prompt-conditioned branch (``transformer``) and one for the unconditional branch
(``unconditional_transformer``), both patched. Each block's ``attention`` is self-attention over the packed sequence
[left padding, prompt, image] (the unconditional branch: [image]) under a block-diagonal segment mask, which the
route carries: every image token attends to its window and to the valid prompt tokens.

Layout: the image tokens are the sequence's last ``grid_h x grid_w``, row-major. The pipeline names the grid when
it calls ``encode_prompt(prompt, grid_h, grid_w, ...)``: plain ints, so a compiled transformer needs no host sync.
A bare transformer's grid is read from ``position_ids`` (one host sync per ids tensor). The VAE (FLUX.2's)
compresses 8x and the pipeline patchifies 2x2: 2048x2048 -> a 128x128 grid (16,384 image tokens).
"""

from __future__ import annotations

import torch
from diffusers import Ideogram4Transformer2DModel
from diffusers.models.transformers import transformer_ideogram4
from diffusers.models.transformers.transformer_ideogram4 import IMAGE_POSITION_OFFSET, Ideogram4AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from . import flux
from ._forward import ReadOncePerTensor, forward_argument
from ._inputs import seeded_randn


class GNAIdeogram4AttnProcessor(RoutedProcessorMixin, Ideogram4AttnProcessor):
    """Ideogram4AttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_latents``' (B, N, C) packed latents: N image tokens, a placeholder 1-D grid that the grid
    ``encode_prompt`` was called with replaces (see ``grid_from_encode_prompt``)."""
    if not isinstance(result, torch.Tensor) or result.ndim != 3:
        return None
    return token_layout((result.shape[1],), result.shape[1])


def grid_from_encode_prompt(args: tuple, kwargs: dict):
    """From a ``Ideogram4Pipeline.encode_prompt(prompt, grid_h, grid_w, ...)`` call: the image grid, which the
    latents prepared next hold row-major."""
    names = ("prompt", "grid_h", "grid_w")
    bound = dict(zip(names, args), **kwargs)
    rows, cols = bound["grid_h"], bound["grid_w"]

    def with_grid(layout: TokenLayout) -> TokenLayout:
        return token_layout((rows, cols), rows * cols) if layout.stream_tokens == rows * cols else layout

    return with_grid


def _read_grid(position_ids: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of the image grid ending ``position_ids`` (B, S, 3): its last token is at (rows - 1, cols - 1)
    past IMAGE_POSITION_OFFSET. A host sync."""
    rows, cols = (position_ids[0, -1, 1:] - IMAGE_POSITION_OFFSET + 1).tolist()
    return int(rows), int(cols)


_grid_from_ids = ReadOncePerTensor(_read_grid)  # a bare transformer's grid, read once per position_ids tensor


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The pipeline's prepared grid when the call's image tokens match it, else the grid read from
    ``position_ids``; the image tokens are the sequence's last."""
    position_ids = forward_argument(module, args, kwargs, "position_ids")
    if prepared is not None and len(prepared.grid) == 2 and position_ids.shape[1] >= prepared.stream_tokens:
        return prepared
    if torch.compiler.is_compiling():
        raise LayoutError("Ideogram 4: a compiled bare transformer cannot read its grid from position_ids without a "
                          "host sync; run it in its pipeline, which names the grid")
    rows, cols = _grid_from_ids(position_ids)
    if rows < 1 or cols < 1 or rows * cols > position_ids.shape[1]:
        raise LayoutError(f"Ideogram 4: position_ids end at grid ({rows}, {cols}), which does not fit "
                          f"{position_ids.shape[1]} tokens")
    return token_layout((rows, cols), rows * cols)


PATCH = ModelPatch(
    family="ideogram4",
    transformer_class=Ideogram4Transformer2DModel,
    processor_class=GNAIdeogram4AttnProcessor,
    stock_processor_class=Ideogram4AttnProcessor,
    dispatch_module=transformer_ideogram4,
    blocks={"blocks": "layers"},
    text_first=True,  # [padding, prompt, image]
    layout_probe=layout_probe,
    layout_from_prepared=layout_from_prepared,
    video=False,
    attention="attention",
    pipeline_transformers=("transformer", "unconditional_transformer"),
    pipeline_observers={"encode_prompt": grid_from_encode_prompt},
)

TEXT_WIDTH = 16  # the tiny Qwen3-VL's hidden size
TEXT_TAPS = 13  # the pipeline stacks 13 of the text encoder's layers (QWEN3_VL_ACTIVATION_LAYERS)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> Ideogram4Transformer2DModel:
    """A randomly initialised Ideogram 4 transformer for CPU tests (2 heads x 16, 4-channel latents patchified
    2x2, the tiny Qwen3-VL's 13 stacked 16-wide layers as text features)."""
    torch.manual_seed(seed)
    return Ideogram4Transformer2DModel(
        in_channels=16, num_layers=num_layers, attention_head_dim=16, num_attention_heads=2, intermediate_size=32,
        adaln_dim=8, llm_features_dim=TEXT_TAPS * TEXT_WIDTH, mrope_section=(4, 2, 2),
    ).eval()


latent_grid = flux.latent_grid  # 8x VAE and 2x2 patches: (height / 16, width / 16)


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 256, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one prompt-conditioned call on a (rows, cols) grid with ``text`` prompt tokens, as the
    pipeline packs them: [text, image] with the ids, segments and per-token roles it builds (no padding)."""
    config = transformer.config
    rows, cols = grid
    image = rows * cols
    randn = seeded_randn(seed, device, dtype)
    text_positions = torch.arange(text, device=device)[:, None].expand(text, 3)
    axes = torch.meshgrid(torch.zeros(1, dtype=torch.long), torch.arange(rows), torch.arange(cols), indexing="ij")
    image_positions = torch.stack(axes, -1).reshape(image, 3).to(device) + IMAGE_POSITION_OFFSET
    indicator = torch.full((batch, text + image), transformer_ideogram4.OUTPUT_IMAGE_INDICATOR, device=device)
    indicator[:, :text] = transformer_ideogram4.LLM_TOKEN_INDICATOR
    return dict(hidden_states=randn(batch, text + image, config.in_channels),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                encoder_hidden_states=randn(batch, text + image, config.llm_features_dim),
                position_ids=torch.cat([text_positions, image_positions])[None].expand(batch, -1, -1),
                segment_ids=torch.ones(batch, text + image, dtype=torch.long, device=device), indicator=indicator,
                return_dict=False)


FULL_CONFIG: dict = {}  # diffusers' class defaults (34 blocks, 18 heads x 256: 9.3B), the released shape unverified


DEFAULT_PRESET = "ideogram4-2k"
DEFAULT_STEPS = 48  # the pipeline's default num_inference_steps (its guidance schedule has 48 entries)
TEXT_TOKENS = 256  # a typical prompt region; the pipeline's max_sequence_length bounds it
NAME_PATTERN = r"ideogram"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline Ideogram4Pipeline with random weights (a byte-level tokenizer, a 36-layer 16-wide Qwen3-VL whose 13
    tapped layers make the text features, FLUX.2's tiny VAE: 2x, then 2x2 patches): 64x64 pixels -> a 16x16 grid."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline
    from transformers import Qwen3VLConfig, Qwen3VLModel

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=36,
                num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
                rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2], "mrope_interleaved": True})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_WIDTH,
                  deepstack_visual_indexes=[])
    text_encoder = Qwen3VLModel(Qwen3VLConfig(text_config=text, vision_config=vision)).eval()
    vae = AutoencoderKLFlux2(
        latent_channels=4, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, sample_size=32,
    ).eval()
    return Ideogram4Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=tiny_transformer(seed),
                             unconditional_transformer=tiny_transformer(seed + 1))


def steps_call_kwargs(steps: int | None) -> dict:
    """Pipeline arguments for a run of ``steps`` steps (the harness's): the default schedule (7.0 for 45 steps, then
    3.0) has one entry per default step, so another count takes a constant guidance scale of 7.0."""
    return {} if steps in (None, DEFAULT_STEPS) else dict(guidance_scale=7.0, guidance_schedule=None)


TINY_SIZE = {"height": 64, "width": 64}  # a 16x16 grid


def tiny_call_kwargs() -> dict:
    """A short prompt region (with few steps, add ``steps_call_kwargs(steps)``)."""
    return dict(max_sequence_length=64)


TINY_NAME = "tiny-ideogram4"
