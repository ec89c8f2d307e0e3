from __future__ import annotations

import torch

from .. import host
from ..engine import vae as engine_vae
from .base import VAE, StageNode, category


class VAEDecode(StageNode):
    NODE_ID = "DS_VAEDecode"
    DISPLAY_NAME = "VAE Decode (Diffusers)"
    VERSION = "1.0.0"
    CATEGORY = category("latent")
    DESCRIPTION = "Turns a LATENT into an IMAGE with the model's VAE. Tiled decoding saves memory on large images."
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The decoded images [batch, height, width, 3], 0..1; works with core Save Image.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE, {"tooltip": "The VAE from Load Diffusers Model."}),
                "samples": ("LATENT", {"tooltip": "The latent to decode (from Denoise or any core latent node)."}),
                "tiled": ("BOOLEAN", {"default": False, "advanced": True,
                                      "tooltip": "Decode in overlapping tiles: less memory for large images, "
                                                 "slightly different pixels at tile seams."}),
            }
        }

    def run(self, vae, samples, tiled=False):
        host.ensure_loaded(vae.residency)
        with torch.inference_mode():
            image = engine_vae.decode(vae, samples["samples"], tiled)
        return (image.to(host.intermediate_device()),)
