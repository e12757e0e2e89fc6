"""Hunyuan-DiT (HunyuanDiT2DModel, 1.5B): Hunyuan-DiT v1.0 to v1.2 text-to-image at 1024x1024 (and other sizes).
Each block's ``attn1`` is a self-attention over the image tokens alone, with RoPE (the CLIP-Bert and mT5 prompt comes
in through ``attn2``, a cross-attention, which stays stock); the second half of the blocks take long skip
connections, which change nothing in the attention. A Hunyuan-DiT ControlNet (HunyuanDiT2DControlNetModel, the first
half's blocks over the same tokens) is patched beside the transformer.

The stock processor (HunyuanAttnProcessor2_0) calls ``F.scaled_dot_product_attention`` itself: while GNA is
installed, the ``F`` of diffusers' attention_processor module is a stand-in whose SDPA hands a GNA processor's calls
to its route (as CogVideoX's); the cross-attention's processor is another instance, not GNA's, so its calls pass.

Layout probe: hidden_states (B, C, H, W) over the 2x2 patch, row-major: 1024x1024 -> 128x128 latents -> 64x64.
"""

from __future__ import annotations

import torch
from diffusers import HunyuanDiT2DControlNetModel, HunyuanDiT2DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import HunyuanAttnProcessor2_0

from gna_diffusers.install import ModelPatch
from gna_diffusers.route import RoutedProcessorMixin

from . import flux
from ._inputs import seeded_randn
from ._latents import ImageLatentLayout


class GNAHunyuanAttnProcessor2_0(RoutedProcessorMixin, HunyuanAttnProcessor2_0):
    """HunyuanAttnProcessor2_0 whose self-attention runs GNA over the image grid; everything else is stock."""

    routes_sdpa_calls_of = attention_processor  # the stock processor calls its F.scaled_dot_product_attention


LAYOUT = ImageLatentLayout(lambda transformer: (transformer.config.patch_size,) * 2)

PATCH = ModelPatch(
    family="hunyuan-dit",
    transformer_class=HunyuanDiT2DModel,
    processor_class=GNAHunyuanAttnProcessor2_0,
    stock_processor_class=HunyuanAttnProcessor2_0,
    dispatch_module=attention_processor,
    calls_sdpa=True,  # the processor calls F.scaled_dot_product_attention itself: that F is routed
    blocks={"blocks": "blocks"},
    text_first=False,  # no text in the self-attention: the sequence is the grid
    layout_probe=LAYOUT.probe,
    layout_from_prepared=LAYOUT.from_prepared,
    video=False,
    attention="attn1",
    # Its ControlNets run Hunyuan-DiT blocks over the same image tokens.
    other_transformer_classes=(HunyuanDiT2DControlNetModel,),
)

BERT_WIDTH, T5_WIDTH = 16, 32  # the tiny encoders' widths


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> HunyuanDiT2DModel:
    """A randomly initialised Hunyuan-DiT transformer for CPU tests (2 heads x 16, 2x2 patches, 4 latent channels
    and the learned variance's 4 more out; the skip connections start at the second block)."""
    torch.manual_seed(seed)
    return HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, patch_size=2, sample_size=16, hidden_size=32,
        num_layers=num_layers, cross_attention_dim=BERT_WIDTH, cross_attention_dim_t5=T5_WIDTH,
        pooled_projection_dim=16, text_len=77, text_len_t5=256,
    ).eval()


latent_grid = flux.latent_grid  # an 8x VAE and 2x2 patches: 16 pixels per image token


def transformer_inputs(transformer, grid: tuple[int, int], text: int = 77, batch: int = 1, device="cpu",
                       dtype=torch.float32, seed: int = 0) -> dict:
    """Keyword inputs of one call on a (rows, cols) grid, as the pipeline passes them: latents (B, C, H, W), the
    Bert prompt (the model's ``text_len`` tokens) and the mT5 one (``text_len_t5``), their masks, the size and
    style conditions and the 2-D RoPE (``text`` is ignored: the model's text lengths are fixed)."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    rows, cols = grid
    config = transformer.config
    p = config.patch_size
    randn = seeded_randn(seed, device, dtype)
    size = [rows * p * 8, cols * p * 8]
    inputs = dict(hidden_states=randn(batch, config.in_channels, rows * p, cols * p),
                  timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
                  encoder_hidden_states=randn(batch, config.text_len, config.cross_attention_dim),
                  text_embedding_mask=torch.ones(batch, config.text_len, device=device, dtype=torch.long),
                  encoder_hidden_states_t5=randn(batch, config.text_len_t5, config.cross_attention_dim_t5),
                  text_embedding_mask_t5=torch.ones(batch, config.text_len_t5, device=device, dtype=torch.long),
                  image_rotary_emb=get_2d_rotary_pos_embed(config.hidden_size // config.num_attention_heads,
                                                           ((0, 0), (rows, cols)), (rows, cols), use_real=True),
                  return_dict=False)
    if config.use_style_cond_and_image_meta_size:
        inputs["image_meta_size"] = torch.tensor([size + size + [0, 0]], device=device, dtype=dtype).repeat(batch, 1)
        inputs["style"] = torch.zeros(batch, device=device, dtype=torch.long)
    return inputs


# Hunyuan-DiT v1.2 (Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers): 40 blocks, 16 heads x 88, CLIP-Bert (1024) and mT5
# (2048) prompts, no style or size conditions (v1.0 and v1.1 have them).
FULL_CONFIG = dict(in_channels=4, patch_size=2, sample_size=128, hidden_size=1408, num_layers=40,
                   use_style_cond_and_image_meta_size=False)

DEFAULT_PRESET = "hunyuan-dit-1k"
DEFAULT_STEPS = 50  # the pipeline's default num_inference_steps
TEXT_TOKENS = 77  # cross-attention only: not in the self-attention
NAME_PATTERN = r"hunyuan-?dit"  # hub names of this family, for --random-weights


def tiny_pipeline(seed: int = 0):
    """An offline HunyuanDiTPipeline with random weights (a 1-layer Bert, the tiny T5 in mT5's place, a 4-channel VAE
    that downsamples 8x as the real one, which the pipeline's RoPE assumes; no safety checker): 64x64 pixels -> a 4x4
    grid."""
    from diffusers import DDPMScheduler, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel, BertTokenizer

    from ._tiny import CHARS

    tokenizer = BertTokenizer(vocab={piece: i for i, piece in
                                     enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS])})
    torch.manual_seed(seed)
    text_encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=BERT_WIDTH, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32)).eval()
    tokenizer_2, text_encoder_2 = flux.tiny_t5(seed)
    return HunyuanDiTPipeline(
        vae=flux.tiny_vae(latent_channels=4, blocks=4), text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=tiny_transformer(seed), scheduler=DDPMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def tiny_call_kwargs() -> dict:
    # The pipeline bins sizes to the real model's (1024-ish) unless told not to.
    return dict(use_resolution_binning=False)


TINY_NAME = "tiny-hunyuan-dit"
TINY_SIZE = {"height": 64, "width": 64}  # its VAE downsamples 8x
