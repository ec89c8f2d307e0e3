from __future__ import annotations

import torch

from .. import host
from ..engine.errors import InputError
from .base import DENOISER, StageNode, category

MAX_SIZE = 16384


def size_problem(name: str, value: int, multiple: int) -> InputError | None:
    if value % multiple:
        lower, upper = value // multiple * multiple, (value // multiple + 1) * multiple
        return InputError(name, f"{value} is not a multiple of {multiple}.",
                          f"use {lower or multiple} or {upper} (this model needs sizes in steps of {multiple} px).")
    return None


class EmptyLatent(StageNode):
    NODE_ID = "DS_EmptyLatent"
    DISPLAY_NAME = "Empty Latent (Diffusers)"
    VERSION = "1.0.0"
    CATEGORY = category("latent")
    DESCRIPTION = ("An empty (all-zero) LATENT of the size and channel count the model needs. Denoise at 1.0 "
                   "starts text-to-image from it. It is a core LATENT, so core latent nodes work on it.")
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Zero latents [batch, channels, height/8, width/8] in raw VAE space.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "denoiser": (DENOISER, {"tooltip": "The model the latent is for (sets channels and size rules)."}),
                "width": ("INT", {"default": 512, "min": 8, "max": MAX_SIZE, "step": 8,
                                  "tooltip": "Image width in pixels (a multiple of 8 for SD1.x/2.x)."}),
                "height": ("INT", {"default": 512, "min": 8, "max": MAX_SIZE, "step": 8,
                                   "tooltip": "Image height in pixels (a multiple of 8 for SD1.x/2.x)."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096,
                                       "tooltip": "How many images to make at once."}),
            }
        }

    def run(self, denoiser, width, height, batch_size):
        family = denoiser.family
        for name, value in (("width", width), ("height", height)):
            error = size_problem(name, value, family.size_multiple)
            if error:
                raise error
        channels = family.latent_channels_of(denoiser)
        shape = (batch_size, channels, height // family.spatial_factor, width // family.spatial_factor)
        return ({"samples": torch.zeros(shape, device=host.intermediate_device())},)
