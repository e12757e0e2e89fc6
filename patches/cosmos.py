"""NVIDIA Cosmos world models on CosmosTransformer3DModel: Cosmos 1.0 Text2World / Video2World, Cosmos 2 Text2Image
/ Video2World, Cosmos 2.5 Predict and Transfer. Each block's ``attn1`` is self-attention over the video tokens alone;
``attn2`` (text, and 2.5's image context) keeps its stock processor. Transfer's ControlNet (CosmosControlNetModel)
runs blocks of the same class (``control_blocks``) over the control video's tokens, on the same grid: they are
patched with the transformer, control block i taking block i's pattern.
The stock processor calls attention without naming a backend (diffusers' default always), so GNA's subclass hands
that call to its route.
Conditioning frames are part of the grid (a condition-mask channel marks them), so they are not context.

Layout probe: hidden_states (B, C, T, H, W) (the ControlNet's ``controls_latents``) over the patch size (1, 2, 2)
-> (T, H / 2, W / 2), from shapes: Wan's.
Cosmos 2 / 2.5 use the Wan VAE (4x in time, 8x in space): 704x1280, 93 frames -> 24x44x80 = 84,480 video tokens.
"""

from __future__ import annotations

import torch
from diffusers import CosmosControlNetModel, CosmosTransformer3DModel
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers import transformer_cosmos
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin, TokenLayout

from . import wan
from ._forward import forward_argument
from ._inputs import seeded_randn


class GNACosmosAttnProcessor(RoutedProcessorMixin, CosmosAttnProcessor2_0):
    """CosmosAttnProcessor2_0 whose self-attention call runs GNA over the video grid; everything else is stock."""

    routes_unnamed_calls_of = transformer_cosmos  # the stock processor names no attention backend


def layout_probe(module, args, kwargs, prepared: TokenLayout | None) -> TokenLayout:
    """(T, H, W) / patch_size from the shape of the transformer's latents or of the ControlNet's control latents (the
    generated latents' shape: the pipeline encodes the control video at the output's size)."""
    if isinstance(module, CosmosControlNetModel):
        return wan.LAYOUT.probe(module, (forward_argument(module, args, kwargs, "controls_latents"),), {}, prepared)
    return wan.LAYOUT.probe(module, args, kwargs, prepared)


PATCH = ModelPatch(
    family="cosmos",
    transformer_class=CosmosTransformer3DModel,
    processor_class=GNACosmosAttnProcessor,
    stock_processor_class=CosmosAttnProcessor2_0,
    dispatch_module=transformer_cosmos,
    blocks={"blocks": "transformer_blocks"},
    text_first=False,  # no text in the self-attention sequence
    layout_probe=layout_probe,
    layout_from_prepared=wan.LAYOUT.from_prepared,
    video=True,
    adoptable_processors=(CosmosAttnProcessor2_0,),
    attention="attn1",
    other_transformer_classes=(CosmosControlNetModel,),
    other_class_blocks={CosmosControlNetModel: {"blocks": "control_blocks"}},
)

TEXT_WIDTH = 16  # the tiny Qwen2.5-VL's hidden size (Kandinsky 5's tiny text parts)


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> CosmosTransformer3DModel:
    """A randomly initialised Cosmos 2.5 transformer for CPU tests (2 heads x 16): 4 latent channels and the
    condition mask in; the text features of every layer of the 2-layer tiny Qwen2.5-VL (2 x 16) projected. No
    padding-mask channel: resizing it needs torchvision, which the tests do without."""
    torch.manual_seed(seed)
    return CosmosTransformer3DModel(
        in_channels=5, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        mlp_ratio=2, text_embed_dim=32, adaln_lora_dim=4, max_size=(8, 32, 32), patch_size=(1, 2, 2),
        rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type="learnable",
        use_crossattn_projection=True, crossattn_proj_in_channels=2 * TEXT_WIDTH, encoder_hidden_states_channels=32,
    ).eval()


latent_grid = wan.latent_grid  # the Wan VAE (4x in time, 8x in space) and 1x2x2 patches


def transformer_inputs(transformer, grid: tuple[int, int, int], text: int = 512, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (frames, rows, cols) grid with ``text`` tokens, as Cosmos 2.5's pipeline
    passes them: the latents, a condition mask marking the first frame, and a padding mask where the model takes one."""
    config = transformer.config
    p_t, p_h, p_w = config.patch_size
    frames, rows, cols = grid
    randn = seeded_randn(seed, device, dtype)
    width = config.crossattn_proj_in_channels if config.use_crossattn_projection else config.text_embed_dim

    size = (frames * p_t, rows * p_h, cols * p_w)
    condition = torch.zeros(batch, 1, *size, device=device, dtype=dtype)
    condition[:, :, 0] = 1
    inputs = dict(hidden_states=randn(batch, config.in_channels - 1, *size), condition_mask=condition,
                  timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                  encoder_hidden_states=randn(batch, text, width), return_dict=False)
    if config.concat_padding_mask:
        inputs["padding_mask"] = torch.zeros(1, 1, size[1], size[2], device=device, dtype=dtype)
    return inputs


# Cosmos-Predict2 2B's shape (28 blocks, 16 heads x 128, T5 text of width 1024; the latents and a condition mask
# in). The released models also concatenate a padding-mask channel, resized with torchvision, which the GPU image
# lacks: one input channel does not change a step's time, so it is left out here.
FULL_CONFIG = dict(in_channels=17, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
                   text_embed_dim=1024, rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=False,
                   extra_pos_embed_type=None)


def full_size(model_name: str):
    """(config, latent-grid function) of the full-size model a hub name refers to: Cosmos 1.0 7B (diffusers' class
    defaults, as its docs load nvidia/Cosmos-1.0-Diffusion-7B-Text2World) for names with "7b", else the 2B shape."""
    name = model_name.lower()
    if "14b" in name:
        raise ValueError(f"{model_name}: no full-size Cosmos 14B shape is known offline; --random-weights times the "
                         f"2B and 7B shapes")
    if "7b" in name:
        return dict(concat_padding_mask=False), latent_grid
    return FULL_CONFIG, latent_grid


DEFAULT_PRESET = "cosmos-720p"
PIPELINE_PRESETS = {"AnimaModularPipeline": "anima-1k"}  # compare's default for Anima's images
DEFAULT_STEPS = 35  # Cosmos2VideoToWorldPipeline's default num_inference_steps
TEXT_TOKENS = 512  # the pipelines' max_sequence_length (cross-attention only)
NAME_PATTERN = r"cosmos(?![-_.]?3)"  # hub names of this family (not Cosmos 3), for --random-weights


class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
    """Stands in for the Cosmos guardrail (``cosmos_guardrail``, a large model) in the tiny offline pipeline only:
    its random weights generate noise. Pipelines loaded from a checkpoint keep diffusers' own guardrail."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1), persistent=False)  # gives the pipeline a device to read

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, video):
        return video


def tiny_pipeline(seed: int = 0):
    """An offline Cosmos2_5_PredictBasePipeline with random weights (Wan's tiny VAE, Kandinsky 5's tiny Qwen2.5-VL,
    flow UniPC): 32x32 pixels x 9 frames -> a 5x4x4 token grid."""
    from diffusers import Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler

    from . import kandinsky5

    text = kandinsky5.tiny_parts(seed)
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=5.0)
    return Cosmos2_5_PredictBasePipeline(text_encoder=text["text_encoder"], tokenizer=text["tokenizer"],
                                         transformer=tiny_transformer(seed), vae=wan.tiny_parts(seed)["vae"],
                                         scheduler=scheduler, safety_checker=PassThroughSafetyChecker())


def tiny_call_kwargs() -> dict:
    return dict(num_frames=9, max_sequence_length=64)


def tiny_transfer_pipeline(seed: int = 0, control_blocks: int = 2):
    """:func:`tiny_pipeline`'s parts as a Cosmos2_5_TransferPipeline, with a ControlNet of ``control_blocks`` blocks
    shaped as the tiny transformer's (each adds its residual to every transformer block: controlnet_block_every_n
    1), both with RoPE sized for the pipeline's default 93-frame chunks. The ControlNet's forward
    resizes a padding mask with torchvision."""
    from diffusers import Cosmos2_5_TransferPipeline

    parts = tiny_pipeline(seed).components
    torch.manual_seed(seed)
    parts["transformer"] = CosmosTransformer3DModel.from_config(
        parts["transformer"].config, max_size=(96, 32, 32), controlnet_block_every_n=1).eval()
    torch.manual_seed(seed + 1)
    controlnet = CosmosControlNetModel(
        n_controlnet_blocks=control_blocks, in_channels=9, latent_channels=6, model_channels=32, num_attention_heads=2,
        attention_head_dim=16, mlp_ratio=2, text_embed_dim=32, adaln_lora_dim=4, max_size=(96, 32, 32),
        rope_scale=(2.0, 1.0, 1.0), extra_pos_embed_type="learnable", use_crossattn_projection=True,
        crossattn_proj_in_channels=2 * TEXT_WIDTH, encoder_hidden_states_channels=32,
    ).eval()
    return Cosmos2_5_TransferPipeline(controlnet=controlnet, **parts)


def tiny_anima_denoise(seed: int = 0):
    """Anima's core denoise blocks (diffusers' modular pipeline: a Cosmos-Predict2 transformer on one-frame latents,
    its text conditioner mapping Qwen features and T5 ids, classifier-free guidance) with random weights: the tiny
    Cosmos transformer (4 channels, no padding-mask channel) and a one-layer conditioner of width 32."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner
    from diffusers.modular_pipelines.anima.modular_blocks_anima import AnimaCoreDenoiseStep

    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(8, 32, 32), patch_size=(1, 2, 2), rope_scale=(1.0, 4.0, 4.0),
        concat_padding_mask=False,
    ).eval()
    conditioner = AnimaTextConditioner(source_dim=32, target_dim=32, model_dim=32, num_layers=1, num_attention_heads=2,
                                       target_vocab_size=100, min_sequence_length=8).eval()
    pipe = AnimaCoreDenoiseStep().init_pipeline()
    pipe.update_components(transformer=transformer, text_conditioner=conditioner,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                           guider=ClassifierFreeGuidance(guidance_scale=4.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def anima_prompt_inputs(seed: int = 1, tokens: int = 6) -> dict:
    """Anima's encoded prompt and negative prompt, as its text encoder step gives them: Qwen features (width 32 for
    the tiny conditioner) and T5 token ids, with their masks."""
    generator = torch.Generator().manual_seed(seed)
    ones = torch.ones(1, tokens, dtype=torch.long)
    inputs = {}
    for prefix in ("", "negative_"):
        inputs |= {f"{prefix}qwen_prompt_embeds": torch.randn(1, tokens, 32, generator=generator),
                   f"{prefix}qwen_attention_mask": ones,
                   f"{prefix}t5_input_ids": torch.randint(0, 100, (1, tokens), generator=generator),
                   f"{prefix}t5_attention_mask": ones}
    return inputs


TINY_NAME = "tiny-cosmos"
