"""Tiny, randomly initialised pipeline components that need no download (offline tests and the
harness's built-in default model). Tokenizers are built in memory from a character-level vocabulary."""

from __future__ import annotations

import string

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, Qwen2Tokenizer

# Characters every tiny tokenizer knows; anything else maps to its unknown token.
CHARS = string.ascii_letters + string.digits + string.punctuation


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A byte-level BPE tokenizer with one token per character (and per word-final character)."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    pieces = specials + list(CHARS) + [c + "</w>" for c in CHARS]
    tokenizer = CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[])
    tokenizer.model_max_length = max_length
    return tokenizer


def clip_text_encoder(hidden_size: int, vocab_size: int, seed: int = 0,
                      with_projection: bool = False) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A 2-layer CLIP text encoder; ``with_projection``: with its text projection (SD3's pooled prompt)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden_size,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


# A ChatML template, as Qwen2.5-VL's tokenizer carries (HunyuanVideo 1.5 formats its prompts with it); a message's
# content is a string or a list of typed parts, whose text parts it renders (Qwen-Image 2.1's system message).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen3_config(vocab_size: int, num_hidden_layers: int):
    """A tiny Qwen3 text model's config (width 16, 2 heads of 8), for the families with a Qwen3 encoder."""
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=num_hidden_layers,
                       num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=512)


def byte_level_tokenizer(extra_special_tokens: tuple[str, ...] = ()) -> Qwen2Tokenizer:
    """A Qwen2 byte-level BPE tokenizer with no merges (one token per byte) plus ChatML's special tokens and
    ``extra_special_tokens`` (e.g. a vision-language model's image placeholders)."""
    # GPT-2's reversible byte -> unicode map: printable bytes stand for themselves, the rest from U+0100.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    pieces = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokenizer = Qwen2Tokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", *extra_special_tokens]})
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = CHATML
    return tokenizer


def randomize_modulation(model: torch.nn.Module, std: float = 0.2, part: str = "modulation") -> torch.nn.Module:
    """Random values for ``model``'s modulation parameters (names containing ``part``). Initialised at zero
    (adaLN-zero), or near it in a tiny model, they gate every attention output to (almost) nothing, and an
    exactness test then passes for any attention at all; a trained model's are not that small."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if part in name:
                parameter.normal_(0.0, std)
    return model


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _image_only_processor(processor_class: type, patch_size: int, max_pixels: int):
    """A Qwen-VL processor of ``processor_class`` without its video processor (which needs torchvision: the pipelines
    pass images), over a byte-level tokenizer with the vision placeholders; and their token ids, for the model's
    config."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(processor_class):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    tokenizer = byte_level_tokenizer(VISION_TOKENS)
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                               min_pixels=(2 * patch_size) ** 2, max_pixels=max_pixels)
    processor = ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                   chat_template=tokenizer.chat_template)
    ids = dict(zip(("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"),
                   tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))))
    return processor, ids


def qwen25_vl_parts(seed: int):
    """A Qwen2-VL processor (images only, at most 112x112 pixels) and a 2-layer, 16-wide Qwen2.5-VL: Qwen-Image-Edit's
    prompt encoder, which reads the input image too."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor

    processor, ids = _image_only_processor(Qwen2VLProcessor, patch_size=14, max_pixels=112 * 112)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(processor.tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0], patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        vocab_size=len(processor.tokenizer), hidden_size=16, **ids,
    )
    torch.manual_seed(seed)
    return processor, Qwen2_5_VLForConditionalGeneration(config).eval()


def qwen3_vl_parts(seed: int, num_hidden_layers: int = 2):
    """A Qwen3-VL processor (images only) and a Qwen3-VL of ``num_hidden_layers`` 16-wide text layers whose merged
    vision tokens cover 32 pixels (Qwen-Image 2.1's pipeline takes them as one slot of 2x2 latent tokens)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    processor, ids = _image_only_processor(Qwen3VLProcessor, patch_size=16, max_pixels=256 * 256)
    tokenizer = processor.tokenizer
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16,
                         num_hidden_layers=num_hidden_layers,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        **ids,
    )
    torch.manual_seed(seed)
    return processor, Qwen3VLForConditionalGeneration(config).eval()
