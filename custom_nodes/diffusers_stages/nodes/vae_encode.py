from __future__ import annotations

import torch

from .. import host
from ..engine import vae as engine_vae
from .base import VAE, StageNode, category


class VAEEncode(StageNode):
    NODE_ID = "DS_VAEEncode"
    DISPLAY_NAME = "VAE Encode (Diffusers)"
    VERSION = "1.0.0"
    CATEGORY = category("latent")
    DESCRIPTION = ("Turns an IMAGE into a LATENT with the model's VAE (the posterior's mode, as core VAE Encode). "
                   "Sizes the model cannot make are centre-cropped: to a multiple of 8 px (SD, SDXL), of 16 px for "
                   "the transformer models when the VAE came with its model.")
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The encoded latent (raw VAE space); connect to Denoise with denoise below 1.0.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE, {"tooltip": "The VAE from Load Diffusers Model."}),
                "pixels": ("IMAGE", {"tooltip": "The image to encode, e.g. from core Load Image."}),
            }
        }

    def run(self, vae, pixels):
        host.ensure_loaded(vae.residency)
        with torch.inference_mode():
            samples = engine_vae.encode(vae, pixels)
        return ({"samples": samples.to(host.intermediate_device())},)
