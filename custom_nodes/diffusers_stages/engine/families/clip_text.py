"""CLIP prompt encoding shared by the families that use CLIP text encoders (SD1/2, SDXL, SD3, Flux).

Each 77-token window is encoded on its own (a short prompt is one window, so it is
encoded exactly as the diffusers pipelines encode it); weighted tokens are moved away
from the empty prompt's encoding by their weight, as ComfyUI does; windows are joined
along the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components import TextPart
from ..errors import InputError
from ..prompt import token_windows


@dataclass(frozen=True)
class ClipOutput:
    embeds: torch.Tensor  # [1, 77 * windows, hidden]
    pooled: torch.Tensor | None  # [1, dim] from the first window: projected text_embeds, or pooler_output


def check_clip_skip(part: TextPart, clip_skip: int, reserved: int = 0) -> None:
    layers = part.module.config.num_hidden_layers
    top = layers - 1 - reserved
    if not 0 <= clip_skip <= top:
        raise InputError("clip_skip", f"{clip_skip} is out of range for a text encoder with {layers} layers.",
                         f"use a value from 0 (no skip) to {top}.")


def _final_norm(module):
    return getattr(module, "final_layer_norm", None) or module.text_model.final_layer_norm


def _run(part: TextPart, ids: torch.Tensor, layer: int | None, final_norm: bool):
    module, tokenizer = part.module, part.tokenizer
    mask = None
    if getattr(module.config, "use_attention_mask", False):
        eos = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] <= eos[:, None]).long()
    out = module(ids, attention_mask=mask, output_hidden_states=layer is not None)
    if layer is None:
        hidden = out[0]
    else:
        hidden = out.hidden_states[layer]
        if final_norm:
            hidden = _final_norm(module)(hidden)
    first = out[0]
    pooled = first if first.ndim == 2 else getattr(out, "pooler_output", None)
    return hidden, pooled


def encode_clip(part: TextPart, text: str, layer: int | None, final_norm: bool) -> ClipOutput:
    """``layer``: None for the model's last hidden state, else an index into ``hidden_states`` (e.g. -2)."""
    device = part.module.device
    windows = token_windows(part.tokenizer, text)
    hidden, pooled = [], None
    for ids in windows.ids:
        h, p = _run(part, torch.tensor([ids], device=device), layer, final_norm)
        hidden.append(h)
        pooled = p if pooled is None else pooled
    embeds = torch.cat(hidden)
    if windows.is_weighted:
        empty_ids = torch.tensor(token_windows(part.tokenizer, "").ids, device=device)
        empty, _ = _run(part, empty_ids, layer, final_norm)
        weights = torch.tensor(windows.weights, device=device, dtype=embeds.dtype)[..., None]
        embeds = empty + (embeds - empty) * weights
    return ClipOutput(embeds.reshape(1, -1, embeds.shape[-1]), pooled)


def repeat_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """One prompt for every image of the batch (the pipelines encode once and repeat)."""
    return tensor.repeat(batch, *([1] * (tensor.ndim - 1))) if batch > 1 else tensor


def same_length(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different window counts are repeated to a common length (as ComfyUI does)."""
    import math

    la, lb = a.shape[1], b.shape[1]
    if la == lb:
        return a, b
    common = math.lcm(la, lb)
    return a.repeat(1, common // la, 1), b.repeat(1, common // lb, 1)
