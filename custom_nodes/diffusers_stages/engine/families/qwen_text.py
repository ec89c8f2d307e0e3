"""LLM text encoders (Z-Image's and Flux.2 klein's Qwen3): hidden states for a prompt written as a chat turn of the
tokenizer's template. (Reading a Qwen3 from its file is ``text_files``' work, as for CLIP and T5.)"""

from __future__ import annotations

import torch

from ..components import TextPart
from ..errors import InputError


def chat_hidden_states(part: TextPart, text: str, max_length: int, thinking: bool, bool_mask: bool = False):
    """(every layer's hidden states, attention mask) for ``text`` as a user turn of the tokenizer's chat template,
    padded to ``max_length`` tokens, as ZImagePipeline (a boolean mask) and Flux2KleinPipeline (the tokenizer's
    integer mask) run their text encoders."""
    tokenizer, module = part.tokenizer, part.module
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("text_encoder", "the text encoder's tokenizer has no chat template, which this model's "
                         "prompts are written with.", "use the tokenizer of the model's diffusers folder "
                         "(tokenizer/ with chat_template.jinja or tokenizer_config.json).")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=thinking)
    tokens = tokenizer([chat], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids, mask = tokens.input_ids.to(module.device), tokens.attention_mask.to(module.device)
    mask = mask.bool() if bool_mask else mask
    model = getattr(module, "model", module)  # a ...ForCausalLM's hidden states are its base model's (no logits)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
    return hidden, mask


def encode_chat_prompt(part: TextPart, text: str, max_length: int, layer: int = -2) -> torch.Tensor:
    """Hidden states ``layer`` of the real tokens only ([1, tokens, width]), thinking on, as ZImagePipeline."""
    hidden, mask = chat_hidden_states(part, text, max_length, thinking=True, bool_mask=True)
    return hidden[layer][0][mask[0]].unsqueeze(0)


def stacked_layers(part: TextPart, text: str, max_length: int, layers: tuple[int, ...]) -> torch.Tensor:
    """Hidden states of several layers side by side for every (padded) token ([1, max_length, width x layers]),
    thinking off, as Flux2KleinPipeline."""
    hidden, _ = chat_hidden_states(part, text, max_length, thinking=False)
    if max(layers) >= len(hidden):
        raise InputError("text_encoder", f"the text encoder has {len(hidden) - 1} layers, but this model reads the "
                         f"hidden states of layers {', '.join(map(str, layers))}.",
                         "use the text encoder this model was released with.")
    out = torch.stack([hidden[k] for k in layers], dim=1)  # [1, layers, tokens, width]
    batch, count, tokens, width = out.shape
    return out.permute(0, 2, 1, 3).reshape(batch, tokens, count * width)


def mistral_layers(part: TextPart, text: str, max_length: int, layers: tuple[int, ...],
                   system_message: str) -> torch.Tensor:
    """Flux2Pipeline's Mistral 3 prompt: BFL's system message and the prompt through the tokenizer's chat template,
    padded to ``max_length``; the hidden states of ``layers`` side by side ([1, max_length, width x layers]).
    Hidden state k is layer k-1's output, read from the layers themselves, so a file pruned to the layers Flux.2
    reads gives what the whole model gives (transformers would hand back the final norm's output as the last one)."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    tokenizer, module = part.tokenizer, part.module
    inputs = tokenizer.apply_chat_template(format_input(prompts=[text], system_message=system_message),
                                           add_generation_prompt=False, tokenize=True, return_dict=True,
                                           return_tensors="pt", padding="max_length", truncation=True,
                                           max_length=max_length)
    blocks = getattr(module, "language_model", module).layers
    if max(layers) > len(blocks):
        raise InputError("text_encoder", f"the text encoder has {len(blocks)} layers, but Flux.2 reads the hidden "
                         f"states of layers {', '.join(map(str, layers))}.", "use Flux.2 dev's Mistral 3 Small.")
    captured = {}
    hooks = [blocks[k - 1].register_forward_hook(
        lambda _m, _a, output, k=k: captured.__setitem__(k, output[0] if isinstance(output, tuple) else output))
        for k in layers]
    try:
        with torch.no_grad():
            module(input_ids=inputs["input_ids"].to(module.device),
                   attention_mask=inputs["attention_mask"].to(module.device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    out = torch.stack([captured[k] for k in layers], dim=1)
    batch, count, tokens, width = out.shape
    return out.permute(0, 2, 1, 3).reshape(batch, tokens, count * width)
