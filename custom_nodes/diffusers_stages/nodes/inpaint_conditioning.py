from __future__ import annotations

import torch

from .. import host
from ..engine import vae as engine_vae
from ..engine.masks import MASKED_IMAGE, masked_pixels, resized_to
from .base import VAE, StageNode, category


class InpaintConditioning(StageNode):
    NODE_ID = "DS_InpaintConditioning"
    DISPLAY_NAME = "Inpaint Conditioning (Diffusers)"
    VERSION = "1.0.0"
    CATEGORY = category("latent")
    DESCRIPTION = ("Image + mask + VAE -> the LATENT an inpainting model takes (SD1.5/SDXL inpainting U-Nets, Flux.1 "
                   "Fill): the encoded image, its noise mask, and the encoded masked image (the masked area set to "
                   "mid-grey, as the diffusers inpaint pipelines do). Models without mask inputs use only the image "
                   "and the mask, as with Set Latent Noise Mask.")
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The latent to inpaint; connect to Denoise (denoise 1.0 repaints the masked area entirely).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE, {"tooltip": "The model's VAE."}),
                "pixels": ("IMAGE", {"tooltip": "The image to inpaint, e.g. from core Load Image."}),
                "mask": ("MASK", {"tooltip": "Where to repaint (1), e.g. Load Image's mask (its transparent area) "
                                             "or a mask editor's."}),
            }
        }

    def run(self, vae, pixels, mask):
        # the mask brought to the picture's size as the pipelines' mask processor does, then cropped with it to what
        # VAE Encode keeps of a size that is not a multiple of the VAE's cell, so both stay aligned
        mask = resized_to(mask, tuple(pixels.shape[1:3]))[:, 0]
        pixels, mask = (engine_vae.centre_cropped(images, vae.pixel_multiple) for images in (pixels, mask))
        host.ensure_loaded(vae.residency)
        with torch.inference_mode():
            samples = engine_vae.encode(vae, pixels)
            masked = engine_vae.encode(vae, masked_pixels(pixels, mask))
        device = host.intermediate_device()
        return ({"samples": samples.to(device), "noise_mask": mask.reshape(-1, 1, *mask.shape[-2:]).to(device),
                 MASKED_IMAGE: masked.to(device)},)
