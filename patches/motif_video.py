"""Motif-Video (MotifVideoTransformer3DModel): dual-stream then single-stream blocks over the joint sequence
[video tokens, text tokens] (image-to-video's SigLIP image embeddings go before the text, in the text part); one
processor class (``MotifVideoAttnProcessor2_0``) for both block types. Padded text keys are hidden by a boolean
(B, 1, 1, S) mask. The optional text cross-attentions (``MotifVideoCrossAttention``) keep their stock processor.
Single-stream *decoder* layers (``num_decoder_layers``) attend over [decoder video tokens, encoder video tokens]:
the encoder's tokens are their context.

Layout probe: hidden_states (B, C, F, H, W) over patches (patch_size_t, patch_size, patch_size), from shapes;
image-to-video's first-frame condition is concatenated along channels, so the grid is the latents'.
The Wan VAE (4x in time, 8x in space) and 1x2x2 patches: 736x1280, 121 frames -> 31x46x80 = 114,080 video tokens.
"""

from __future__ import annotations

import torch
from diffusers import MotifVideoTransformer3DModel
from diffusers.models.transformers import transformer_motif_video
from diffusers.models.transformers.transformer_motif_video import MotifVideoAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import wan
from ._inputs import seeded_randn
from ._latents import VideoLatentLayout


class GNAMotifVideoAttnProcessor(RoutedProcessorMixin, MotifVideoAttnProcessor2_0):
    """MotifVideoAttnProcessor2_0 whose joint attention runs GNA over the video grid; everything else is stock."""


LAYOUT = VideoLatentLayout(lambda t: (t.config.patch_size_t, t.config.patch_size, t.config.patch_size))

PATCH = ModelPatch(
    family="motif-video",
    transformer_class=MotifVideoTransformer3DModel,
    processor_class=GNAMotifVideoAttnProcessor,
    stock_processor_class=MotifVideoAttnProcessor2_0,
    dispatch_module=transformer_motif_video,
    blocks={"double": "transformer_blocks", "single": "single_transformer_blocks"},
    text_first=False,  # [video, text]
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=True,
    adoptable_processors=(MotifVideoAttnProcessor2_0,),
)

TEXT_WIDTH = IMAGE_WIDTH = 16  # the tiny T5Gemma 2 encoder's text and SigLIP hidden sizes
LATENT_CHANNELS = 4  # the tiny Wan VAE's


def tiny_transformer(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2,
                     num_decoder_layers: int = 0) -> MotifVideoTransformer3DModel:
    """A randomly initialised Motif-Video transformer for CPU tests (2 heads x 16): the latents, their first-frame
    condition and its mask in (2 x 4 + 1 channels), with text cross-attentions in both block types."""
    torch.manual_seed(seed)
    return MotifVideoTransformer3DModel(
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=2,
        attention_head_dim=16, num_layers=num_layers, num_single_layers=num_single_layers,
        num_decoder_layers=num_decoder_layers, patch_size=2, patch_size_t=1, text_embed_dim=TEXT_WIDTH,
        rope_axes_dim=(4, 6, 6), enable_text_cross_attention_dual=True, enable_text_cross_attention_single=True,
        image_embed_dim=IMAGE_WIDTH,
    ).eval()


latent_grid = wan.latent_grid  # the Wan VAE (4x in time, 8x in space) and 1x2x2 patches


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1,
                       valid_text: tuple[int, ...] | None = None, device="cpu", dtype=torch.float32,
                       seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) grid with ``text`` tokens (``valid_text``: each sample's
    unpadded count), as the text-to-video pipeline passes them."""
    config = transformer.config
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    valid = torch.tensor(valid_text if valid_text is not None else (text,) * batch, device=device)

    return dict(
        hidden_states=randn(len(valid), config.in_channels, frames * config.patch_size_t, rows * config.patch_size,
                            cols * config.patch_size),
        timestep=torch.full((len(valid),), 500.0, device=device, dtype=dtype),
        encoder_hidden_states=randn(len(valid), text, config.text_embed_dim),
        encoder_attention_mask=(torch.arange(text, device=device)[None, :] < valid[:, None]).long(),
        return_dict=False,
    )


# diffusers' defaults for the class (Motif-Video-2B's config was not checked offline, and these make a larger
# model): 20 dual-stream and 40 single-stream blocks of 24 heads x 128, T5Gemma 2 text features of width 4096.
FULL_CONFIG = dict(in_channels=33, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                   num_single_layers=40, patch_size=2, patch_size_t=1, text_embed_dim=4096)
DEFAULT_PRESET = "motif-video-720p"
DEFAULT_STEPS = 50  # MotifVideoPipeline's default num_inference_steps
TEXT_TOKENS = 512  # the pipeline's max_sequence_length
NAME_PATTERN = r"motif-?video"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline MotifVideoPipeline with random weights, Wan's tiny VAE and tokenizer, a tiny T5Gemma 2 encoder
    and classifier-free guidance: 32x32 pixels x 9 frames -> a 5x4x4 token grid."""
    from diffusers import MotifVideoPipeline
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import T5Gemma2Encoder, T5Gemma2EncoderConfig, T5Gemma2TextConfig

    parts = wan.tiny_parts(seed)
    text_config = T5Gemma2TextConfig(hidden_size=TEXT_WIDTH, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2, head_dim=8, intermediate_size=32,
                                     vocab_size=len(parts["tokenizer"]), max_position_embeddings=128)
    # The encoder reads these T5-style fields, which the config class does not set.
    text_config.dropout_rate, text_config.layer_norm_epsilon, text_config.dense_act_fn = 0.0, 1e-6, "gelu"
    # Its SigLIP tower (image-to-video's image embeddings): 32x32 images in 8x8 patches, 16 tokens of width 16.
    vision_config = dict(hidden_size=IMAGE_WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=32, patch_size=8)
    torch.manual_seed(seed)
    text_encoder = T5Gemma2Encoder(T5Gemma2EncoderConfig(text_config=text_config, vision_config=vision_config,
                                                         mm_tokens_per_image=4)).eval()
    return MotifVideoPipeline(transformer=tiny_transformer(seed), vae=parts["vae"], tokenizer=parts["tokenizer"],
                              text_encoder=text_encoder, scheduler=parts["scheduler"],
                              guider=ClassifierFreeGuidance(guidance_scale=5.0))


def tiny_call_kwargs() -> dict:
    return dict(num_frames=9, max_sequence_length=32)


TINY_NAME = "tiny-motif-video"
