from __future__ import annotations

import dataclasses

import torch

from .. import host
from ..engine import lora
from ..engine.errors import require_finite
from ..engine.text_files import missing_text_encoders
from .base import CONDITIONING, TEXT_ENCODER, StageNode, category


class TextEncode(StageNode):
    NODE_ID = "DS_TextEncode"
    DISPLAY_NAME = "Text Encode (Diffusers)"
    VERSION = "1.1.0"  # 1.1.0: optional t5_max_length
    CATEGORY = category("conditioning")
    DESCRIPTION = ("Encodes a prompt with the model's text encoder. Understands ComfyUI's prompt syntax: "
                   "(word:1.2) to weight, (word) for x1.1, and prompts longer than 75 tokens. A short prompt "
                   "without weights gives exactly what the diffusers pipeline's encode_prompt gives.")
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The encoded prompt; connect to a guider as positive or negative.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": (TEXT_ENCODER, {"tooltip": "The text encoder from Load Diffusers Model or Load Text "
                                                                 "Encoders."}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                    "tooltip": "The prompt. (word:1.2) weights a part, (word) weights it x1.1, "
                                               "\\( and \\) are literal parentheses."}),
                "clip_skip": ("INT", {"default": 0, "min": 0, "max": 24, "advanced": True,
                                      "tooltip": "Layers to skip at the end of the text encoder, as diffusers' "
                                                 "clip_skip: 1 = penultimate layer (A1111 'Clip skip 2', ComfyUI "
                                                 "CLIPSetLastLayer -2). 0 = use the last layer."}),
            },
            "optional": {
                "t5_max_length": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 1, "advanced": True,
                                          "tooltip": "Tokens of the T5 sequence for models with a T5 encoder (SD3: "
                                                     "256, Flux: 512 by default). 0 = the model's default."}),
            },
        }

    def run(self, text_encoder, text, clip_skip=0, t5_max_length=0):
        return (encode(text_encoder, text, clip_skip, t5_max_length),)


def encode(text_encoder, text: str, clip_skip: int = 0, t5_max_length: int = 0):
    """The prompt's conditioning, with the text encoder's LoRAs active; it remembers its encoder and settings."""
    problem = missing_text_encoders(text_encoder)
    if problem:
        raise problem
    host.ensure_loaded(text_encoder.residency)
    for part in text_encoder.parts:
        lora.activate(part.module, text_encoder.loras, text_encoder=True)
    with torch.inference_mode():
        conditioning = text_encoder.family.encode_prompt(text_encoder, text, clip_skip, t5_max_length)
    for embedding in (conditioning.embeds, conditioning.pooled, conditioning.t5):
        require_finite(embedding, "text_encoder", "the prompt's embedding",
                       "the text encoder's weights hold NaN/inf (a damaged file), or an fp16 text encoder "
                       "overflowed: load it in bf16 or fp32.")
    return dataclasses.replace(conditioning, text_encoder=text_encoder, encode_settings=(clip_skip, t5_max_length))


def implicit_negative(positive):
    """What the family's pipeline guides away from when negative_prompt is None (an encoded empty prompt, or
    zeros), with the positive prompt's size conditioning and ControlNets (the pipelines apply both to the negative
    half too); None when the pipeline then runs no guidance (Flux) or the encoder is unknown."""
    encoder = positive.text_encoder
    if encoder is None:
        return None
    negative = positive.family.unconditional(positive, lambda: encode(encoder, "", *positive.encode_settings))
    return None if negative is None else dataclasses.replace(negative, size=positive.size, controls=positive.controls)
