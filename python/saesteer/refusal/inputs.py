"""Batches of text for a model: left-padded tokenization, the id to pad with, the model's device.

Shared by the chat helpers and the model judges (which tokenize their own classifier prompts).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["tokenize_texts", "pad_token_id", "model_device"]


def tokenize_texts(tokenizer, texts: Sequence[str], device=None):
    """Left-padded batch of already formatted ``texts``: ``{input_ids, attention_mask}``."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) if device is not None else v for k, v in enc.items()}


def pad_token_id(tokenizer) -> int:
    """The id generation pads with: the tokenizer's pad token, else its EOS."""
    # `pad_token_id or eos` would drop a pad id of 0 (the organism's <pad> is id 0).
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def model_device(model) -> torch.device:
    """The device of ``model``'s first parameter (where its inputs go)."""
    return next(model.parameters()).device
