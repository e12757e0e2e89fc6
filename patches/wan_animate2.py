"""Wan Animate 2 (WanAnimate2Transformer3DModel, 14B; diffusers ships it as a modular pipeline only): character
animation along a driving video, one segment at a time. Per segment the transformer makes two kinds of pass:

- the reference pass (``kv_cache_mode="extract"``), once: dense self-attention over the driving segment's tokens,
  whose keys and values each layer stores in a KV cache. A context pass, no denoising step: it runs stock.
- the generation passes (``kv_cache_mode="cached"``), each denoising step: the (F + 1, H, W) generation grid (the
  character image's latent frame, then the segment's F frames) attends to every generation token, and each frame
  f >= 1 also to the reference tokens of driving frame f - 1. Stock packs both into 128-aligned buffers and runs
  flex attention with a BlockMask (which needs torch.compile at video sizes).

GNA's subclass takes that packed call (an in-flight route that claims calls naming the flex backend): the
generation queries attend to their window over the generation grid (one GNA call, with its log-sum-exp) and,
frames f >= 1, to all of driving frame f - 1's tokens (a second GNA call over the F frames with a window of one
frame and the whole of H x W); the two softmaxes are merged by their log-sum-exps, which equals one softmax over
the union of both key sets. Where a segment does not fill the packed buffers (a resolution that is not a multiple
of 16, or reference latents of another size), the call runs stock with a warning.

Layout probe, from shapes (no host sync): hidden_states, a list of one (C, F + 1, 2H, 2W) latent; patch (1, 2, 2).
800x640 pixels (the pipeline's default area), 81-frame segments -> Wan's VAE (8x, 4x in time) -> 21 latent frames
plus the character's -> 22x50x40 generation tokens (44,000), and 21x50x40 reference tokens (42,000).
"""

from __future__ import annotations

from math import prod

import torch
from diffusers import WanAnimate2Transformer3DModel
from diffusers.models.attention_dispatch import AttentionBackendName
from diffusers.models.transformers import transformer_wan_animate_2
from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2AttnProcessor, WanAnimate2KVCache

from gna_diffusers.install import ModelPatch
from gna_diffusers.ops import gna_attention
from gna_diffusers.route import (GNARoute, LayoutError, RoutedProcessorMixin, TokenLayout, route_unnamed_calls,
                                 token_layout)

from . import wan
from ._forward import forward_argument
from ._inputs import seeded_randn


def _packed_length(tokens: int) -> int:
    """A segment of ``tokens`` tokens in stock's packed buffer: padded to the BlockMask's 128-token blocks."""
    return -(-tokens // 128) * 128


class PackedReferenceAttention:
    """The generation pass's packed flex call as GNA: in flight during a GNA processor's call (the dispatch stand-in
    hands it the calls naming the flex backend whose sizes are this segment's packed buffers)."""

    named_backend = AttentionBackendName.FLEX

    def __init__(self, route: GNARoute):
        grid = route.layout.grid
        self.route, self.grid, self.frame_tokens = route, grid, grid[1] * grid[2]
        self.queries = _packed_length(prod(grid))  # the generation buffer: F + 1 frames
        self.keys = self.queries + _packed_length(prod(grid) - self.frame_tokens)  # and the F driving frames after it

    def _routable(self, queries: int, keys: int) -> bool:
        return queries == self.queries and keys == self.keys

    def __call__(self, dispatch, query, key, value, attn_mask, kwargs) -> torch.Tensor:
        """(B, packed, H, D) output rows of the generation tokens (the padding's rows, which stock drops, are 0)."""
        if getattr(kwargs.get("parallel_config"), "context_parallel_config", None) is not None:
            self.route.warn_once("runs dense: Wan Animate 2's packed reference attention under context parallelism")
            return dispatch(query, key, value, attn_mask=attn_mask, **kwargs)
        pattern, grid, hw, backend = self.route.pattern, self.grid, self.frame_tokens, self.route.backend
        n, scale = prod(grid), kwargs.get("scale")
        q, k, v = query[:, :n], key[:, :n], value[:, :n]
        # Eager inference writes into the output buffer and merges in place (no grid-sized float32 temporaries; only
        # the padding rows are zeroed); autograd and compiled graphs take the out-of-place ops.
        training = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        in_place = not training and not torch.compiler.is_compiling()
        packed = query.new_empty(query.shape) if in_place else None
        if packed is not None:
            packed[:, n:].zero_()
        out, lse = gna_attention(q, k, v, grid, pattern.window, pattern.stride, pattern.dilation, scale=scale,
                                 backend=backend, return_lse=True, out=None if packed is None else packed[:, :n])
        # Frames 1..F attend to driving frames 0..F-1, one frame to one frame: a window of one frame, all of H x W.
        references = slice(self.queries, self.queries + n - hw)
        out_ref, lse_ref = gna_attention(q[:, hw:], key[:, references], value[:, references], (grid[0] - 1, *grid[1:]),
                                         (1, *grid[1:]), scale=scale, backend=backend, return_lse=True)
        # One softmax over both key sets: each part weighted by its share exp(lse_part - lse_union) of the total.
        union = torch.logaddexp(lse[:, hw:], lse_ref)
        own, driving = torch.exp(lse[:, hw:] - union)[..., None], torch.exp(lse_ref - union)[..., None]
        if packed is None:
            return torch.cat([out[:, :hw], out[:, hw:] * own + out_ref * driving, query.new_zeros(
                query.shape[0], query.shape[1] - n, *query.shape[2:])], dim=1).to(query.dtype)
        rows = packed[:, hw:n]
        rows.mul_(own)
        rows.addcmul_(out_ref, driving)
        return packed


class GNAWanAnimate2AttnProcessor(RoutedProcessorMixin, WanAnimate2AttnProcessor):
    """WanAnimate2AttnProcessor whose generation pass attends with GNA (:class:`PackedReferenceAttention`); its
    reference pass, and the dense steps, run as stock."""

    def __call__(self, attn, hidden_states, *args, **kwargs):
        route = self.route
        if route is None or route.pattern is None or kwargs.get("kv_cache_mode") != "cached":
            return super().__call__(attn, hidden_states, *args, **kwargs)
        problem = _packed_buffer_problem(route.layout.grid, hidden_states, kwargs)
        if problem is not None:
            route.warn_once(f"runs dense: {problem}")
            return super().__call__(attn, hidden_states, *args, **kwargs)
        return route_unnamed_calls(transformer_wan_animate_2, PackedReferenceAttention(route), super().__call__, attn,
                                   hidden_states, *args, **kwargs)


def _packed_buffer_problem(grid: tuple[int, int, int], hidden_states: torch.Tensor, kwargs: dict) -> str | None:
    """Why a generation call's segment does not fill stock's packed buffers, or None: stock attends to the buffers'
    unfilled slots as zero keys, which GNA does not reproduce."""
    frames = kwargs.get("origin_latent_frames")
    frame_tokens = kwargs.get("origin_latent_hw")
    reference_tokens = kwargs["kv_cache"].get()[0].shape[1]
    if (frames, frame_tokens) != (grid[0] - 1, grid[1] * grid[2]):
        return (f"the segment's grid {grid} does not fill the packed buffer of {frames} + 1 frames of {frame_tokens} "
                f"tokens")
    if hidden_states.shape[1] != prod(grid) or reference_tokens != frames * frame_tokens:
        return (f"{hidden_states.shape[1]} generation tokens and {reference_tokens} reference tokens are not the grid "
                f"{grid}'s {prod(grid)} and {frames} frames of {frame_tokens}")
    return None


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout | None:
    """The generation grid (F + 1, H, W) of a generation pass; None for the reference pass (context: no step)."""
    if forward_argument(module, args, kwargs, "kv_cache_mode") == "extract":
        return None
    latents = forward_argument(module, args, kwargs, "hidden_states")
    if not isinstance(latents, (list, tuple)) or len(latents) != 1 or latents[0].ndim != 4:
        raise LayoutError("Wan Animate 2 calls hold one (C, F, H, W) latent per call")
    p_t, p_h, p_w = module.config.patch_size
    _, frames, height, width = latents[0].shape
    grid = (frames // p_t, height // p_h, width // p_w)
    if grid[0] < 2:
        raise LayoutError(f"{grid[0]} latent frame(s) hold the character's frame and no segment to generate")
    return token_layout(grid, prod(grid))


PATCH = ModelPatch(
    family="wan-animate2",
    transformer_class=WanAnimate2Transformer3DModel,
    processor_class=GNAWanAnimate2AttnProcessor,
    stock_processor_class=WanAnimate2AttnProcessor,
    dispatch_module=transformer_wan_animate_2,
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=layout_probe,
    video=True,
    attention="self_attn",
)

TINY_TEXT_WIDTH = 16


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> WanAnimate2Transformer3DModel:
    """A randomly initialised Wan Animate 2 transformer for CPU tests: 2 heads x 16, 4 latent channels and 8
    condition channels in 1x2x2 patches, no CLIP image branch."""
    torch.manual_seed(seed)
    return WanAnimate2Transformer3DModel(
        text_len=8, in_dim=12, dim=32, ffn_dim=32, freq_dim=16, text_dim=TINY_TEXT_WIDTH, out_dim=4, num_heads=2,
        num_layers=num_layers, use_img_emb=False,
    ).eval()


def tiny_vae():
    """A Wan VAE 8x in space and 4x in time, as the modular blocks' packed sizes assume (the tiny transformer's 2x2
    patches then make 16 pixels a token)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                            latents_std=[1.0] * 4).eval()


def tiny_pipeline(seed: int = 0):
    """diffusers' whole Wan Animate 2 modular pipeline (WanAnimate2Blocks: prompt, character image and driving video
    encoders, segments, decoder) on tiny components: Wan's tiny UMT5, a 2-layer 16-wide CLIP vision tower (the tiny
    transformer has no image branch, so only its shape matters), :func:`tiny_vae`. 64x64 pixels, 5-frame segments ->
    a (2 + 1)x4x4 generation grid; call with ``max_sequence_length`` <= 8 (the transformer's text length)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines.wan_animate_2.modular_blocks_wan_animate_2 import WanAnimate2Blocks
    from transformers import CLIPVisionConfig, CLIPVisionModel

    parts = wan.tiny_parts(seed)
    torch.manual_seed(seed)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=224, patch_size=32)).eval()
    pipe = WanAnimate2Blocks().init_pipeline()
    pipe.update_components(transformer=tiny_transformer(seed), vae=tiny_vae(), text_encoder=parts["text_encoder"],
                           tokenizer=parts["tokenizer"], image_encoder=image_encoder,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    return pipe


def latent_grid(height: int, width: int, frames: int | None = None) -> tuple[int, int, int]:
    """The generation grid of ``frames``-frame segments (81, the pipeline's default, when None): Wan's, plus the
    character image's latent frame in front."""
    segment, rows, cols = wan.latent_grid(height, width, 81 if frames is None else frames)
    return segment + 1, rows, cols


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one generation pass over the (F + 1, H, W) ``grid``, as the modular pipeline makes them,
    with the KV cache every layer's reference pass would fill (random keys and values of the F driving frames)."""
    if batch != 1:
        raise ValueError(f"Wan Animate 2 takes one sample per transformer call; got batch {batch}")
    config = transformer.config
    frames, rows, cols = grid
    heads, head_dim = config.num_heads, config.dim // config.num_heads
    randn = seeded_randn(seed, device, dtype)
    cache = WanAnimate2KVCache(config.num_layers)
    for layer in range(config.num_layers):
        cache.get(layer).store(randn(1, (frames - 1) * rows * cols, heads, head_dim),
                               randn(1, (frames - 1) * rows * cols, heads, head_dim))
    latent_size = (frames, 2 * rows, 2 * cols)
    inputs = dict(
        hidden_states=[randn(config.out_dim, *latent_size)], timestep=torch.tensor([500.0], device=device),
        encoder_hidden_states=[randn(text, config.text_dim)],
        condition_latents=[randn(config.in_dim - config.out_dim, *latent_size)],
        kv_cache=cache, kv_cache_mode="cached", seq_len=prod(grid),
        reference_grid_sizes=torch.tensor([[frames - 1, rows, cols]]), origin_len=(frames - 2) * 4 + 1,
        origin_area=[16 * rows, 16 * cols], return_dict=False,
    )
    if config.use_img_emb:
        inputs["encoder_hidden_states_image"] = randn(1, 257, 1280)  # CLIP ViT-H's 257 tokens
    return inputs


# diffusers' class defaults (Wan 14B's shape: 40 layers, 40 heads x 128, width 5120, CLIP image branch); the
# published checkpoint's config was not read offline.
FULL_CONFIG: dict = {}
DEFAULT_PRESET = "wan-animate2-800x640"
DEFAULT_STEPS = 40  # the modular pipeline's default num_inference_steps
TEXT_TOKENS = 512  # UMT5, padded to text_len
NAME_PATTERN = r"wan.*animate.?2"  # hub names of this family, for --random-weights
# compare runs it with weights (diffusers' modular pipeline): the character image from --image, the driving video
# from --call-arg driving_video=@PATH.
WEIGHTS_GAP = None
# Why `compare --random-weights` compiles its blocks on a GPU (as diffusers tells its users to) before timing both.
COMPILED_TO_RUN = "stock's generation attention is flex with a BlockMask, which uncompiled materializes every score"
