"""Cosmos 3 Omni (Cosmos3OmniTransformer): NVIDIA's omni-modal world model (text, image or video to video, with
sound and robot actions). One packed sequence per call, batch 1: the prompt (the understanding pathway), then the
generated tokens (the generation pathway): the video's latent patches, row-major over (T, H, W), then sound and
action tokens when the pipeline generates them. Each decoder layer's ``self_attn`` (Cosmos3PackedMoTAttention)
runs Cosmos3AttnProcessor, which makes two attention calls: the prompt causally among itself, and the generation
tokens against [prompt keys, generation keys], both grouped-query (8 key/value heads for 32 query heads).

GNA's subclass takes the second call (``grid_queries_alone``): the video's queries attend to their window over the
grid and to every prompt, sound and action key (context), K/V read per head group with no copies; the sound and
action queries, and the prompt's causal pathway, run as stock. Conditioning frames (image or video to world) are
frames of the same grid.

Layout probe, from the call's keyword arguments: ``vision_token_shapes`` (one (T, H, W) video), ``und_len`` (the
prompt), ``sequence_length`` and ``vision_sequence_indexes`` (the video's positions, checked to follow the prompt
once per tensor: the pipeline builds them once per generation, one for the prompt and one for the negative; a
transformer compiled whole cannot read them in its graph, and trusts the pipeline's packing, which puts them there).
720x1280x189 frames (the pipeline's default) -> Wan 2.2's VAE (16x, 4x in time) -> 48x45x80 latents -> 2x2
patches, the odd row padded -> 48x23x40 (44,160 video tokens).
"""

from __future__ import annotations

from math import ceil, prod

import torch
from diffusers import Cosmos3OmniTransformer
from diffusers.models.transformers import transformer_cosmos3
from diffusers.models.transformers.transformer_cosmos3 import Cosmos3AttnProcessor

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import LayoutError, RoutedProcessorMixin, TokenLayout, token_layout

from ._forward import ReadOncePerTensor, forward_argument
from ._inputs import seeded_randn


class GNACosmos3AttnProcessor(RoutedProcessorMixin, Cosmos3AttnProcessor):
    """Cosmos3AttnProcessor whose generation-pathway attention runs GNA for the video's queries."""


def _span(indexes: torch.Tensor) -> tuple[int, int] | None:
    """(first, count) of consecutive sequence positions, else None (one host sync)."""
    first, count = int(indexes[0]), indexes.numel()
    consecutive = torch.equal(indexes, torch.arange(first, first + count, device=indexes.device, dtype=indexes.dtype))
    return (first, count) if consecutive else None


_VIDEO_SPANS = ReadOncePerTensor(_span, keep=2)  # the prompt's and the negative prompt's positions


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """The video's (T, H, W) patch grid, right after the prompt in the joint sequence (the layout's stream)."""
    shapes = forward_argument(module, args, kwargs, "vision_token_shapes")
    indexes = forward_argument(module, args, kwargs, "vision_sequence_indexes")
    prompt = forward_argument(module, args, kwargs, "und_len")
    total = forward_argument(module, args, kwargs, "sequence_length")
    if not shapes or len(shapes) != 1 or indexes is None or prompt is None or total is None:
        raise LayoutError(f"Cosmos 3 calls need one video (vision_token_shapes {shapes}), its sequence indexes, "
                          f"und_len and sequence_length")
    grid = tuple(int(extent) for extent in shapes[0])
    prompt, total = int(prompt), int(total)
    if indexes.numel() != prod(grid):
        span = None
    elif torch.compiler.is_compiling():  # a graph cannot read positions: trust the pipeline's packing
        span = (prompt, prod(grid))
    else:
        span = _VIDEO_SPANS(indexes)
    if span != (prompt, prod(grid)):
        raise LayoutError(f"the video's {prod(grid)} tokens (grid {grid}) do not follow the {prompt}-token prompt "
                          f"consecutively in the joint sequence")
    return token_layout(grid, total, prompt)


PATCH = ModelPatch(
    family="cosmos3",
    transformer_class=Cosmos3OmniTransformer,
    processor_class=GNACosmos3AttnProcessor,
    stock_processor_class=Cosmos3AttnProcessor,
    dispatch_module=transformer_cosmos3,
    blocks={"blocks": "layers"},
    text_first=True,  # [prompt, video, sound, actions]
    layout_probe=layout_probe,
    video=True,
    attention="self_attn",
    grid_queries_alone=True,  # the generation tokens' call; the prompt's causal call runs as it comes
)

HEAD_DIM = 16
SOUND_DIM = 8  # the tiny model's sound latent channels


def tiny_transformer(seed: int = 0, num_layers: int = 2, vocab_size: int = 320, sound: bool = False
                     ) -> Cosmos3OmniTransformer:
    """A randomly initialised Cosmos 3 transformer for CPU tests: 4 query heads x 16 over 2 key/value heads
    (grouped-query, as the real 32 over 8), 4 latent channels in 2x2 patches; ``sound``: with the sound head."""
    torch.manual_seed(seed)
    return Cosmos3OmniTransformer(
        head_dim=HEAD_DIM, hidden_size=64, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=num_layers, latent_channel=4, patch_latent_dim=16, latent_patch_size=2,
        vocab_size=vocab_size, rope_axes_dim=(4, 2, 2), sound_gen=sound, sound_dim=SOUND_DIM if sound else None,
    ).eval()


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """Video-token grid of ``frames`` frames of height x width: Wan 2.2's VAE (16x in space, 4x in time after the
    first frame), then 2x2 patches with an odd latent row or column padded (as the transformer pads it)."""
    if height % 16 or width % 16:
        raise ValueError(f"height and width must be divisible by 16 (Cosmos 3's VAE), got {height}x{width}")
    frames = 1 if frames is None else frames
    if (frames - 1) % 4:
        raise ValueError(f"Cosmos 3 generates 4k+1 frames (its VAE compresses time 4x after the first), got {frames}")
    return (frames - 1) // 4 + 1, ceil(height / 32), ceil(width / 32)


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 256, batch: int = 1, sound: int = 0,
                       device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call, as the pipeline packs them: ``text`` prompt tokens, the (T, H, W) video's
    patches after them (every frame noisy), and ``sound`` sound tokens after the video (a model built with
    ``sound``). Positions are (t, h, w) per token, offset past the prompt as mRoPE's."""
    if batch != 1:
        raise ValueError(f"Cosmos 3 packs one sample per transformer call; got batch {batch}")
    config = transformer.config
    p, frames = config.latent_patch_size, grid[0]
    video = prod(grid)
    randn = seeded_randn(seed, device, dtype)
    ids = torch.arange(text, device=device)
    t, h, w = torch.meshgrid(*(torch.arange(extent, device=device) for extent in grid), indexing="ij")
    positions = [ids.expand(3, -1), torch.stack([t.flatten() + text, h.flatten(), w.flatten()])]
    token_ids = torch.randint(0, config.vocab_size, (text,), generator=torch.Generator().manual_seed(seed))
    inputs = dict(
        input_ids=token_ids.to(device),
        text_indexes=ids, und_len=text, sequence_length=text + video + sound,
        vision_tokens=[randn(1, config.latent_channel, frames, grid[1] * p, grid[2] * p)],
        vision_token_shapes=[tuple(grid)],
        vision_sequence_indexes=torch.arange(text, text + video, device=device),
        vision_mse_loss_indexes=torch.arange(text, text + video, device=device),
        vision_timesteps=torch.full((video,), 500.0, device=device),
        vision_noisy_frame_indexes=[torch.arange(frames, device=device)],
        return_dict=False,
    )
    if sound:
        start = text + video
        positions.append((torch.arange(sound, device=device) + start).expand(3, -1))
        inputs.update(sound_tokens=[randn(config.sound_dim, sound)], sound_token_shapes=[(sound, 1, 1)],
                      sound_sequence_indexes=torch.arange(start, start + sound, device=device),
                      sound_mse_loss_indexes=torch.arange(start, start + sound, device=device),
                      sound_timesteps=torch.full((sound,), 500.0, device=device),
                      sound_noisy_frame_indexes=[torch.arange(sound, device=device)])
    inputs["position_ids"] = torch.cat(positions, dim=1)
    return inputs


# diffusers' class defaults (the published Cosmos 3 checkpoints' configs were not checked offline): 36 layers,
# 32 heads x 128 over 8 key/value heads, width 4096, each layer's projections and MLP twice (prompt and generation
# pathways), 48 latent channels in 2x2 patches.
FULL_CONFIG: dict = {}
DEFAULT_PRESET = "cosmos3-720p"
DEFAULT_STEPS = 35  # Cosmos3OmniPipeline's default num_inference_steps
TEXT_TOKENS = 256  # the system prompt, the prompt and its duration / resolution sentences, in the chat template
NAME_PATTERN = r"cosmos[-_.]?3"  # hub names of this family, for --random-weights


def pipeline_output(result):
    """The generated video (F, H, W, C) of a Cosmos3OmniPipeline call: its output holds one sample, unbatched."""
    return result.video


def tiny_pipeline(seed: int = 0, sound: bool = False):
    """An offline Cosmos3OmniPipeline with random weights and no safety checker: a byte-level chat tokenizer, a
    Wan VAE 4x in space and 2x in time (the real one: 16x, 4x), so 64x64 pixels and 9 frames give a 5x8x8 grid, and
    UniPC on flow sigmas in [0, 1] (which diffusers' SeaCache requires of Cosmos 3's scheduler). ``sound``: with a
    sound head and a tiny 800 Hz sound tokenizer (64 samples a latent), for ``enable_sound=True``."""
    from diffusers import AutoencoderKLWan, Cosmos3AVAEAudioTokenizer, Cosmos3OmniPipeline, UniPCMultistepScheduler

    from ._tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer(("<|vision_start|>",))
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=2, scale_factor_spatial=4,
    ).eval()
    sound_tokenizer = Cosmos3AVAEAudioTokenizer(
        sampling_rate=800, vocoder_input_dim=SOUND_DIM, dec_dim=8, dec_c_mults=(1, 2), dec_strides=(2, 4), enc_dim=8,
        enc_latent_dim=2 * SOUND_DIM, enc_c_mults=(1,), enc_strides=(8,), enc_num_blocks=1, stereo=False,
    ).eval() if sound else None
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return Cosmos3OmniPipeline(transformer=tiny_transformer(seed, vocab_size=len(tokenizer), sound=sound),
                               text_tokenizer=tokenizer, vae=vae, scheduler=scheduler, sound_tokenizer=sound_tokenizer,
                               enable_safety_checker=False)


def tiny_call_kwargs() -> dict:
    return {"num_frames": 9}


TINY_NAME = "tiny-cosmos3"
