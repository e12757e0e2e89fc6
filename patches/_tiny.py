"""Tiny, randomly initialised pipeline components that need no download (offline tests and the
harness's built-in default model). Tokenizers are built in memory from a character-level vocabulary."""

from __future__ import annotations

import string

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Characters every tiny tokenizer knows; anything else maps to its unknown token.
CHARS = string.ascii_letters + string.digits + string.punctuation


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A byte-level BPE tokenizer with one token per character (and per word-final character)."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    pieces = specials + list(CHARS) + [c + "</w>" for c in CHARS]
    tokenizer = CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[])
    tokenizer.model_max_length = max_length
    return tokenizer


def clip_text_encoder(hidden_size: int, vocab_size: int, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden_size,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModel(config).eval()
