"""T5 prompt encoding (SD3, Flux): one window of ``max_length`` tokens, ComfyUI weight syntax understood.

Unweighted text gives the ids the diffusers pipelines give (tokens, ``</s>``, padding, truncated
to ``max_length``). Weighted tokens are moved away from the empty prompt's encoding by their
weight, as for CLIP.
"""

from __future__ import annotations

import torch

from ..components import TextPart
from ..prompt import parse_weights


def t5_ids(tokenizer, text: str, max_length: int) -> tuple[list[int], list[float]]:
    ids, weights = [], []
    for segment, weight in parse_weights(text):
        tokens = tokenizer(segment, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    ids, weights = ids[:max_length - 1] + [tokenizer.eos_token_id], weights[:max_length - 1] + [1.0]
    padding = max_length - len(ids)
    return ids + [tokenizer.pad_token_id] * padding, weights + [1.0] * padding


def encode_t5(part: TextPart, text: str, max_length: int) -> torch.Tensor:
    device = part.module.device
    ids, weights = t5_ids(part.tokenizer, text, max_length)
    embeds = part.module(torch.tensor([ids], device=device))[0]
    if any(w != 1.0 for w in weights):
        empty_ids, _ = t5_ids(part.tokenizer, "", max_length)
        empty = part.module(torch.tensor([empty_ids], device=device))[0]
        embeds = empty + (embeds - empty) * torch.tensor(weights, device=device, dtype=embeds.dtype)[None, :, None]
    return embeds
