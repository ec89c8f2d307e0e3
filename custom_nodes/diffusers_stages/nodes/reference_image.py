from __future__ import annotations

import dataclasses
import logging

import torch

from .. import host
from ..engine import lora
from ..engine import vae as engine_vae
from ..engine.errors import InputError
from .base import CONDITIONING, VAE, StageNode, category

log = logging.getLogger(__name__)
CELL = 16  # pixels per token of the models that take reference images (Flux.1's 2x2 patches of 8 px, Flux.2's 16 px)


class ReferenceImage(StageNode):
    NODE_ID = "DS_ReferenceImage"
    DISPLAY_NAME = "Reference Image (Diffusers)"
    VERSION = "1.0.0"
    CATEGORY = category("conditioning")
    DESCRIPTION = ("Attaches reference images to the prompts for editing, as the diffusers editing pipelines give "
                   "them to the model: encoded by the VAE (the posterior's mode) and seen by the model as extra "
                   "tokens beside the picture it makes. Flux.1 Kontext takes one (FluxKontextPipeline); Flux.2 any "
                   "number (Flux2Pipeline, Flux2KleinPipeline); Qwen-Image-Edit any number "
                   "(QwenImageEditPlusPipeline: the prompt is also encoded again with the pictures through its "
                   "vision-language text encoder, so connect it after Text Encode). Each image of a batch is one "
                   "reference; chain nodes to add more, in order. A size that is not a multiple of 16 is "
                   "centre-cropped; scale large pictures down first (the pipelines bring references to about 1 "
                   "megapixel).")
    RETURN_TYPES = (CONDITIONING, CONDITIONING)
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("The positive prompt with the reference images attached.",
                       "The negative prompt with the reference images attached (empty if no negative was "
                       "connected).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": (CONDITIONING, {"tooltip": "The positive prompt from Text Encode (the edit "
                                                       "instruction)."}),
                "vae": (VAE, {"tooltip": "The model's VAE."}),
                "image": ("IMAGE", {"tooltip": "The reference picture(s), e.g. from core Load Image; each image of "
                                               "a batch is one reference."}),
            },
            "optional": {
                "negative": (CONDITIONING, {"tooltip": "The negative prompt; connect it so CFG's negative call also "
                                                       "sees the references, as the pipelines run it."}),
            },
        }

    def run(self, positive, vae, image, negative=None):
        if image.ndim != 4 or image.shape[1] < CELL or image.shape[2] < CELL:
            raise InputError("image", f"expected an IMAGE [batch, height, width, 3] of at least {CELL}x{CELL} pixels, "
                             f"got shape {tuple(image.shape)}.", "connect a picture (e.g. from core Load Image).")
        if image.shape[1] % CELL or image.shape[2] % CELL:
            log.warning("Reference Image: %dx%d is not a multiple of %d; centre-cropped to %dx%d.", image.shape[2],
                        image.shape[1], CELL, image.shape[2] // CELL * CELL, image.shape[1] // CELL * CELL)
            image = engine_vae.centre_cropped(image, CELL)
        host.ensure_loaded(vae.residency)
        with torch.inference_mode():
            raw = engine_vae.encode(vae, image)

        def attach(cond):
            if cond is None:
                return None
            if cond.text_encoder is not None:  # a family may encode the prompt again with the pictures
                host.ensure_loaded(cond.text_encoder.residency)
                for part in cond.text_encoder.parts:  # with the text encoder's LoRAs, as Text Encode did
                    lora.activate(part.module, cond.text_encoder.loras, text_encoder=True)
            with torch.inference_mode():
                cond = cond.family.with_references(cond, vae, image, raw)
            return dataclasses.replace(cond, references=tuple(r.to(host.intermediate_device())
                                                              for r in cond.references))

        return attach(positive), attach(negative)
