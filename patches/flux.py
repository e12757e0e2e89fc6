"""FLUX (FluxTransformer2DModel): joint sequence [text, image stream] in every block, no text mask. A FLUX
ControlNet (FluxControlNetModel, alone or in a multi-ControlNet) runs the same blocks over the same tokens
beside the transformer: it is patched too.

Layout probe: ``img_ids`` (N, 3) holds (_, row, col) for each image token, row-major. The generated image
is the leading run of tokens sharing the first token's id[0]; tokens after it (FLUX.1 Kontext's
reference image, id[0] = 1) are context, like the text. Reading the ids costs a host sync, so the layout
is computed once per ``img_ids`` tensor (pipelines build it once per generation and pass the same tensor
every step).
"""

from __future__ import annotations


import torch
from diffusers import FluxControlNetModel, FluxTransformer2DModel
from diffusers.models.transformers import transformer_flux
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxIPAdapterAttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import ReadOncePerTensor, forward_argument
from ._inputs import seeded_randn
from ._latents import leading_run, row_major_plane


class GNAFluxAttnProcessor(RoutedProcessorMixin, FluxAttnProcessor):
    """FluxAttnProcessor whose attention call runs GNA over the image grid; everything else is stock."""


def layout_from_ids(ids: torch.Tensor) -> TokenLayout:
    """The layout of image-stream ids (N, 3 or 4): the generated image is the leading run of tokens sharing
    the first token's id[0], one row-major grid (row id constant along a row and increasing down, column id
    the same in every row and increasing along it: rows and columns are counted, so any scale of the
    position ids works, e.g. FLUX.3's 0.5); the rest are context. Syncs with the host."""
    leading = leading_run(ids[:, 0] == ids[0, 0])
    plane = row_major_plane(ids[:leading, 1], ids[:leading, 2])
    # One token is no grid (random ids, as diffusers' own model tests pass, give a run of one).
    if plane is not None and (leading > 1 or ids.shape[0] == 1):
        return token_layout(plane, ids.shape[0])
    raise LayoutError(
        f"the first {leading} image tokens (img_ids with id[0] = {ids[0, 0].item():g}) are not one row-major grid"
    )


# :func:`layout_from_ids` of a call's ``img_ids`` ((N, C) or (B, N, C)), read once per tensor: one host sync when
# a new ids tensor comes; ``ids_layout.cached(img_ids)`` is the layout already read from it, or None.
ids_layout = ReadOncePerTensor(lambda img_ids: layout_from_ids(img_ids[0] if img_ids.ndim == 3 else img_ids))


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_latents``' result: its (N, 3) id tensors (or (B, N, 3), the same ids per sample: Bria's), in
    order, are the ``img_ids`` the pipeline passes (FLUX.1 Kontext returns the generated image's ids, then the
    reference image's)."""
    parts = [t if t.ndim == 2 else t[0] for t in (result if isinstance(result, tuple) else (result,))
             if isinstance(t, torch.Tensor) and t.ndim in (2, 3) and t.shape[-1] == 3]
    if not parts:
        return None
    try:
        return layout_from_ids(torch.cat(parts))
    except LayoutError:
        return None  # the transformer call's own probe reports it


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The layout of this call, read from ``img_ids`` (one host sync per ids tensor). Under torch.compile,
    where a sync would break the graph, the grid the pipeline prepared is used, and tokens beyond it (the
    reference images FLUX.1 Kontext and FLUX.2 append) are context."""
    img_ids = forward_argument(module, args, kwargs, "img_ids")
    if img_ids is None:
        raise LayoutError("FLUX needs img_ids in the transformer call to know the image grid")
    if torch.compiler.is_compiling():
        if prepared is not None and img_ids.shape[-2] >= prepared.stream_tokens:
            # Reference images (FLUX.1 Kontext, FLUX.2) are appended after the generated image: context.
            return token_layout(prepared.grid, img_ids.shape[-2], prepared.grid_offset)
        raise LayoutError(
            "under torch.compile the FLUX image grid comes from the pipeline's prepare_latents, and this call has "
            "none; apply GNA to the pipeline that runs (gna_diffusers.apply(pipe, ...)), or compile the blocks "
            "only (transformer.compile_repeated_blocks(...))"
        )
    return ids_layout(img_ids)


def architecture_patch(family: str, transformer_class: type, processor_class: type, stock_processor_class: type,
                       dispatch_module, **extra) -> ModelPatch:
    """The ModelPatch of FLUX's architecture under a family's own classes: double- and single-stream blocks over
    [text, image stream], the grid from ``img_ids``, the stock processor adoptable (Chroma, Ovis-Image, LongCat-Image,
    Bria). ``extra``: further ModelPatch fields."""
    return ModelPatch(
        family=family, transformer_class=transformer_class, processor_class=processor_class,
        stock_processor_class=stock_processor_class, dispatch_module=dispatch_module,
        blocks={"double": "transformer_blocks", "single": "single_transformer_blocks"}, text_first=True,
        layout_probe=layout_probe, layout_from_prepared=layout_from_prepared, video=False,
        **{"adoptable_processors": (stock_processor_class,), **extra},
    )


PATCH = architecture_patch(
    "flux", FluxTransformer2DModel, GNAFluxAttnProcessor, FluxAttnProcessor, transformer_flux,
    # IP-Adapter's processor (load_ip_adapter puts it on the double blocks) and the stock one
    # (unload_ip_adapter puts it back): both make the same self-attention call.
    adoptable_processors=(FluxIPAdapterAttnProcessor, FluxAttnProcessor),
    # FLUX ControlNets (e.g. the upscaler ones, used at 2-4K) run FLUX blocks over the same image tokens.
    other_transformer_classes=(FluxControlNetModel,),
)


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2) -> FluxTransformer2DModel:
    """A randomly initialised FLUX transformer small enough for CPU tests (2 heads x 16, 4 latent channels)."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int]:
    """Image-token grid of a height x width image: the VAE downsamples 8x, the pipeline packs 2x2 patches
    (16 pixels per token; shared by the image families built that way)."""
    if height % 16 or width % 16:
        raise ValueError(f"height and width must be divisible by 16 (16 x 16 pixels per image token), got "
                         f"{height}x{width}")
    return height // 16, width // 16


def image_ids(grid: tuple[int, int], device="cpu", dtype=torch.float32) -> torch.Tensor:
    """FLUX's ``img_ids`` of a (rows, cols) grid: (rows * cols, 3) of (0, row, col), row-major."""
    rows, cols = grid
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(-1, 3).to(dtype)


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one transformer call on a (rows, cols) image-token grid with ``text`` T5 tokens."""
    rows, cols = grid
    config = transformer.config
    randn = seeded_randn(seed, device, dtype)
    inputs = dict(
        hidden_states=randn(batch, rows * cols, config.in_channels),
        encoder_hidden_states=randn(batch, text, config.joint_attention_dim),
        pooled_projections=randn(batch, config.pooled_projection_dim),
        timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
        img_ids=image_ids(grid, device, dtype),
        txt_ids=torch.zeros(text, 3, device=device, dtype=dtype),
        return_dict=False,
    )
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
    return inputs


# The FLUX.1-dev transformer (for timing with random weights: no checkpoint needed).
FULL_CONFIG = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
DEFAULT_PRESET = "flux-4k"  # what `gna-diffusers compare` uses when no preset is given
DEFAULT_STEPS = 28  # the pipeline's default num_inference_steps
TEXT_TOKENS = 512  # FLUX.1-dev's T5 sequence length


def tiny_t5(seed: int = 0):
    """An in-memory T5 tokenizer (one token per character) and a 2-layer T5 encoder (d_model 32)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from ._tiny import CHARS

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in CHARS]
    torch.manual_seed(seed)
    encoder = T5EncoderModel(
        T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    ).eval()
    return T5Tokenizer(vocab=vocab, extra_ids=0), encoder


def tiny_vae(latent_channels: int = 1, blocks: int = 2, **config):
    """An AutoencoderKL that downsamples 2 ** (blocks - 1) times: with 2 blocks, 32x32 pixels -> 16x16 latents
    (-> 8x8 packed tokens, 1 channel for FLUX's pipeline; the families that take (B, C, H, W) latents use 4); 4 blocks
    downsample 8x, as the real VAE (for pipelines that assume it). ``config``: further AutoencoderKL arguments (e.g.
    the latent statistics a pipeline reads)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{
        **dict(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8,) * blocks,
               layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * blocks,
               up_block_types=("UpDecoderBlock2D",) * blocks, norm_num_groups=4, use_quant_conv=False,
               use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0, sample_size=32),
        **config,
    }).eval()


def tiny_pipeline(seed: int = 0):
    """An offline FluxPipeline with random weights: 32x32 images -> an 8x8 latent token grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from ._tiny import clip_text_encoder, clip_tokenizer

    tokenizer = clip_tokenizer()
    tokenizer_2, text_encoder_2 = tiny_t5(seed)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(),
        text_encoder=clip_text_encoder(32, len(tokenizer), seed),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=tiny_transformer(seed),
    )


def tiny_call_kwargs() -> dict:
    """Pipeline call arguments for the tiny pipeline (short T5 sequence: the tokenizer is per character)."""
    return dict(max_sequence_length=48)


TINY_NAME = "tiny-flux"
# Hub names of this family, for --random-weights (FLUX.2 is another architecture).
NAME_PATTERN = r"flux(?![.-]?[23])"
