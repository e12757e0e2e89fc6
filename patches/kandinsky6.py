"""Kandinsky 6 (Kandinsky6Transformer3DModel, text/image-to-video-and-audio): text blocks, then fused blocks that
denoise video and audio together. In each fused block the video stream's ``video_dec_block.self_attention`` is over
the video tokens alone: it is routed. Everything else keeps the stock processor (``Kandinsky6AttnProcessor`` serves
all of them): the text blocks, the audio self-attention, the text cross-attentions and the audio <-> video
cross-attentions.

Layout: hidden_states (B, T, H, W, C), channels last, over the patch size (1, 2, 2) -> (T, H / 2, W / 2), row-major,
from shapes. Image-to-video appends the reference image's clean latent as one more, last frame (token type 1, time
position 0): it is context, every video token attends to all of it. The pipeline's ``prepare_latents`` gives the
video's own frames, so a call with one frame more and token types is that case, with no host sync; a bare
transformer reads how many trailing frames the token types mark (one host sync per call, eager only).

The HunyuanVideo VAE compresses 4x in time and 8x in space: 480x864, 121 frames -> 31x30x54 = 50,220 video tokens.
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import Kandinsky6Transformer3DModel
from diffusers.models.transformers import transformer_kandinsky6
from diffusers.models.transformers.transformer_kandinsky6 import Kandinsky6AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import forward_argument
from ._inputs import seeded_randn


class GNAKandinsky6AttnProcessor(RoutedProcessorMixin, Kandinsky6AttnProcessor):
    """Kandinsky6AttnProcessor whose video self-attention call runs GNA over the video grid; all else stock."""


def _grid(latents: torch.Tensor, transformer) -> tuple[int, int, int]:
    """The (frames, rows, cols) token grid of (B, T, H, W, C) latents."""
    _, frames, height, width, _ = latents.shape
    p_t, p_h, p_w = transformer.config.patch_size
    return frames // p_t, height // p_h, width // p_w


def _reference_frames(token_types: torch.Tensor) -> int:
    """How many trailing latent frames the per-frame token types (B, T) mark as conditioning (type != 0)."""
    conditioning = (token_types != 0).cpu()
    if not bool((conditioning == conditioning[:1]).all()):
        raise LayoutError("the samples of the batch mark different frames as conditioning (visual_token_type_ids)")
    marked = conditioning[0].tolist()
    count = len(marked) - marked.index(True) if True in marked else 0
    if not all(marked[len(marked) - count:]):
        raise LayoutError(f"visual_token_type_ids mark conditioning frames {marked} that are not the last frames")
    return count


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The video's grid; a reference frame appended after it (image-to-video) is context."""
    frames, rows, cols = grid = _grid(forward_argument(module, args, kwargs, "hidden_states"), module)
    token_types = forward_argument(module, args, kwargs, "visual_token_type_ids")
    if token_types is None:
        return token_layout(grid, prod(grid))
    if prepared is not None and prepared.grid == (frames - 1, rows, cols):
        return token_layout(prepared.grid, prod(grid))  # the pipeline's video and its appended reference frame
    if torch.compiler.is_compiling():
        raise LayoutError("under torch.compile a bare Kandinsky 6 transformer cannot read which frames its token "
                          "types mark: apply GNA to the pipeline, or compile the blocks")
    if module.config.patch_size[0] != 1:
        raise LayoutError(f"token types are per latent frame, and the patch size {module.config.patch_size} groups "
                          f"frames")
    reference = _reference_frames(token_types)
    if reference >= frames:
        raise LayoutError(f"every one of the {frames} frames is marked as conditioning: there is no video to generate")
    return token_layout((frames - reference, rows, cols), prod(grid))


def layout_from_prepared(result, transformer) -> TokenLayout | None:
    """From ``prepare_latents``' (B, T, H, W, C) latents: the video's own frames."""
    if not isinstance(result, torch.Tensor) or result.ndim != 5:
        return None
    grid = _grid(result, transformer)
    return token_layout(grid, prod(grid))


PATCH = ModelPatch(
    family="kandinsky6",
    transformer_class=Kandinsky6Transformer3DModel,
    processor_class=GNAKandinsky6AttnProcessor,
    stock_processor_class=Kandinsky6AttnProcessor,
    dispatch_module=transformer_kandinsky6,
    blocks={"blocks": "visual_transformer_blocks"},
    text_first=False,  # no text in the video self-attention sequence
    layout_probe=layout_probe,
    layout_from_prepared=layout_from_prepared,
    video=True,
    adoptable_processors=(Kandinsky6AttnProcessor,),
    attention="video_dec_block.self_attention",
)

TEXT_WIDTH, POOLED_WIDTH = 16, 8  # the tiny Qwen2.5-VL's and CLIP's hidden sizes (Kandinsky 5's tiny parts)
AUDIO_CHANNELS = 4


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> Kandinsky6Transformer3DModel:
    """A randomly initialised Kandinsky 6 transformer for CPU tests (video and audio streams of 2 heads x 16, 4 latent
    channels each), with the released models' options: image conditioning (token types), cross-modal RoPE and
    gates. Its modulation layers get random values, as a trained model has."""
    from ._tiny import randomize_modulation

    torch.manual_seed(seed)
    model = Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=TEXT_WIDTH, in_text_dim2=POOLED_WIDTH, time_dim=16,
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=num_layers, axes_dims=(4, 6, 6),
        in_audio_dim=AUDIO_CHANNELS, out_audio_dim=AUDIO_CHANNELS, text_token_padding=True, ca_rope=True,
        cross_gates=True, fix_modulation=True, visual_token_type_num_embeddings=2,
    ).eval()
    return randomize_modulation(model)


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid: the VAE compresses 4x in time (frames = 4k + 1) and 8x in space, patches 1x2x2."""
    frames = 1 if frames is None else frames
    if (frames - 1) % 4:
        raise ValueError(f"Kandinsky 6 needs a frame count of the form 4k + 1 (e.g. 121), got {frames}")
    if height % 16 or width % 16:
        raise ValueError(f"Kandinsky 6 needs height and width divisible by 16, got {height}x{width}")
    return (frames - 1) // 4 + 1, height // 16, width // 16


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1, audio: int = 0,
                       reference: bool = False, device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) video grid with ``text`` Qwen2.5-VL tokens, ``audio``
    audio latent frames (0: video alone), and with ``reference``, an image-to-video call's appended reference
    frame, marked by its token type and time position 0, as the pipeline passes them."""
    config = transformer.config
    p_t, p_h, p_w = config.patch_size
    frames, rows, cols = grid
    frames += reference
    randn = seeded_randn(seed, device, dtype)

    inputs = dict(
        hidden_states=randn(batch, frames * p_t, rows * p_h, cols * p_w, 2 * config.in_visual_dim + 1),
        encoder_hidden_states=randn(batch, text, config.in_text_dim),
        pooled_projections=randn(batch, config.in_text_dim2),
        timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
        audio_hidden_states=randn(batch, audio, config.in_audio_dim) if audio else None,
        return_dict=False,
    )
    if reference:
        token_types = torch.zeros(batch, frames * p_t, dtype=torch.long, device=device)
        token_types[:, -1] = 1
        time = torch.cat([torch.arange(grid[0], device=device), torch.zeros(1, dtype=torch.long, device=device)])
        inputs.update(visual_token_type_ids=token_types,
                      visual_rope_pos=(time, torch.arange(rows, device=device), torch.arange(cols, device=device)))
    return inputs


# diffusers' defaults for the class with the released models' options (the Kandinsky 6.0 Pro config was not
# checked offline): 60 fused blocks, video and audio streams of 32 heads x 128 (the audio stream as wide as the
# video's: 48.2B in all), Qwen2.5-VL text of width 3584.
FULL_CONFIG = dict(in_visual_dim=16, out_visual_dim=16, time_dim=1024, model_dim=4096, ff_dim=16384,
                   num_text_blocks=4, num_visual_blocks=60, axes_dims=(32, 48, 48), text_token_padding=True,
                   ca_rope=True, cross_gates=True, fix_modulation=True, visual_token_type_num_embeddings=2)
DEFAULT_PRESET = "kandinsky6-480p"
DEFAULT_STEPS = 16  # the distilled Pro model's steps in diffusers' example
TEXT_TOKENS = 256  # the pipeline's max_sequence_length (Qwen2.5-VL): cross-attention only
NAME_PATTERN = r"kandinsky-?6"  # hub names of this family, for --random-weights
UNSCORED = "the audio track"  # what compare does not score


def tiny_pipeline(seed: int = 0):
    """An offline Kandinsky6TI2VAPipeline with random weights, audio included (a tiny MMAudio VAE and vocoder):
    32x32 pixels x 5 frames -> a 2x4x4 token grid (the tiny VAE compresses 4x in space) and 11 audio latents."""
    from diffusers import Kandinsky6TI2VAPipeline, MMAudioVAE, MMAudioVocoder

    from . import kandinsky5

    torch.manual_seed(seed)
    audio_vae = MMAudioVAE(mel_bins=8, latent_channels=AUDIO_CHANNELS, hidden_channels=8, channel_multipliers=(1, 2),
                           layers_per_block=1, sample_rate=1600, n_fft=64, hop_length=16).eval()
    vocoder = MMAudioVocoder(num_mels=8, upsample_initial_channel=8, upsample_rates=(4, 4),
                             upsample_kernel_sizes=(8, 8), resblock_kernel_sizes=(3,),
                             resblock_dilation_sizes=((1,),)).eval()
    return Kandinsky6TI2VAPipeline(transformer=tiny_transformer(seed), audio_vae=audio_vae, vocoder=vocoder,
                                   **kandinsky5.tiny_parts(seed))


def tiny_call_kwargs() -> dict:
    """Pipeline call arguments for the tiny pipeline: a text budget that holds the whole prompt template (one token
    per byte here, so no truncation warning), 5 frames."""
    return dict(max_sequence_length=1024, num_frames=5)


TINY_NAME = "tiny-kandinsky6"
