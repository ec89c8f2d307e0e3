from __future__ import annotations

import torch

from .. import host
from ..engine import denoise as engine_denoise
from ..engine import lora, schedulers
from ..engine.masks import MASKED_IMAGE
from .base import DENOISER, GUIDER, SCHEDULER, StageNode, category

MAX_SEED = 0xFFFFFFFFFFFFFFFF


class Denoise(StageNode):
    NODE_ID = "DS_Denoise"
    DISPLAY_NAME = "Denoise (Diffusers)"
    VERSION = "1.2.0"  # 1.1.0: denoising_start / denoising_end (optional, advanced); 1.2.0: a latent's noise_mask
    CATEGORY = category("sampling")
    DESCRIPTION = ("Runs the sampler: from an empty latent at denoise 1.0 (text-to-image), or from an encoded "
                   "image with denoise below 1.0 (image-to-image, like diffusers' strength); a latent with a noise "
                   "mask (Set Latent Noise Mask) is repainted inside the mask only, as diffusers' inpaint pipelines "
                   "do (the mask binarised at 0.5). Gives the same latents "
                   "as the diffusers pipeline for the same weights, seed and settings. Reports progress every step, "
                   "can be interrupted every step, and sends live previews when the host has them on.")
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised latent (raw VAE space); connect to VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "denoiser": (DENOISER, {"tooltip": "The U-Net/DiT from Load Diffusers Model."}),
                "guider": (GUIDER, {"tooltip": "Prompts and guidance, from CFG Guider."}),
                "scheduler": (SCHEDULER, {"tooltip": "From Scheduler, or the model's default from the loader."}),
                "latent": ("LATENT", {"tooltip": "Where to start: Empty Latent for text-to-image, VAE Encode for "
                                                 "image-to-image; with a noise mask (Set Latent Noise Mask) for "
                                                 "inpainting."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the noise (drawn on the CPU, so the same on every device)."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 10000,
                                  "tooltip": "Number of sampler steps."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "How much to change the input. 1.0 on an empty latent is "
                                                 "text-to-image; below 1.0 runs the last steps x denoise steps on "
                                                 "the input, rounded as the model's diffusers img2img pipeline "
                                                 "rounds its strength."}),
            },
            "optional": {
                "denoising_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                              "tooltip": "Continue a partly denoised latent from this fraction of "
                                                         "the noise range, adding no noise (diffusers' "
                                                         "denoising_start): the refiner's half of an SDXL base -> "
                                                         "refiner hand-off. 0 = start from the top."}),
                "denoising_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                            "tooltip": "Stop at this fraction of the noise range and hand the still "
                                                       "noisy latent on (diffusers' denoising_end): the base's half "
                                                       "of an SDXL base -> refiner hand-off. 1 = denoise fully."}),
            },
        }

    @classmethod
    def CHECK_LINKED_INPUTS(cls, inputs, linked):
        """Before anything loads (headless runner): steps within what the sampler picked in a linked Scheduler
        node takes. ``linked(name)`` gives (class_type, inputs) of the node an input is linked to."""
        source = linked("scheduler")
        steps = inputs.get("steps")
        if source is None or source[0] != "DS_Scheduler" or not isinstance(steps, int):
            return True
        class_name = schedulers.sampler_of(source[1].get("sampler_name"))
        return cls.check(schedulers.steps_error(class_name, steps) if class_name else None)

    def run(self, denoiser, guider, scheduler, latent, seed, steps, denoise=1.0, denoising_start=0.0,
            denoising_end=1.0):
        controls = guider.positive.controls + (guider.negative.controls if guider.negative else ())
        host.ensure_loaded(denoiser.residency, *(c.controlnet.residency for c in controls),
                           *(c.vae.residency for c in controls if c.vae is not None))  # SD3/Flux control latents
        lora.activate(denoiser.module, denoiser.loras, text_encoder=False)
        progress = host.Progress(0, denoiser.family.host_latent_format, self.DISPLAY_NAME)
        try:
            with torch.inference_mode():
                result = engine_denoise.run(denoiser, guider, scheduler, latent["samples"], seed, steps, denoise,
                                            progress.step, engine_denoise.Window(denoising_start, denoising_end),
                                            handed_over(latent, denoiser), latent.get("noise_mask"),
                                            latent.get(MASKED_IMAGE))
        finally:
            progress.close()
        out = {k: v for k, v in latent.items() if k not in ("samples", HANDOFF)}
        out["samples"] = result.raw.to(device=host.intermediate_device(), dtype=torch.float32)  # core: fp32 latents
        out[HANDOFF] = {"samples": out["samples"], "scale": denoiser.latent_scale, "shift": denoiser.latent_shift,
                        "model": result.model.to(device=host.intermediate_device())}
        return (out,)


# A LATENT our Denoise made also carries its latents in the denoiser's own (scaled) space: the next Denoise on the
# same VAE scaling continues from those exactly (raw / scale * scale is not exact in floating point), as diffusers
# hands latents from the SDXL base to the refiner. A node that changes "samples" (any core latent node) breaks
# the link, and the raw samples are used as always.
HANDOFF = "diffusers_stages_model_space"


def handed_over(latent: dict, denoiser):
    entry = latent.get(HANDOFF)
    if (isinstance(entry, dict) and entry.get("samples") is latent["samples"]
            and denoiser.same_scaling(entry.get("scale"), entry.get("shift"))):
        return entry["model"]
    return None
