"""LLM text encoders (Z-Image's Qwen3): the hidden states for a prompt written as a chat turn of the tokenizer's
template. (Reading a Qwen3 from its file is ``text_files``' work, as for CLIP and T5.)"""

from __future__ import annotations

import torch

from ..components import TextPart
from ..errors import InputError


def encode_chat_prompt(part: TextPart, text: str, max_length: int, layer: int = -2) -> torch.Tensor:
    """An LLM text encoder's hidden states ``layer`` for ``text`` as a user turn of the tokenizer's chat template,
    the real tokens only ([1, tokens, width]), as ZImagePipeline encodes prompts."""
    tokenizer, module = part.tokenizer, part.module
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("text_encoder", "the text encoder's tokenizer has no chat template, which this model's "
                         "prompts are written with.", "use the tokenizer of the model's diffusers folder "
                         "(tokenizer/ with chat_template.jinja or tokenizer_config.json).")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=True)
    tokens = tokenizer([chat], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids, mask = tokens.input_ids.to(module.device), tokens.attention_mask.to(module.device).bool()
    with torch.no_grad():
        hidden = module(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    return hidden[0][mask[0]].unsqueeze(0)
