from __future__ import annotations

import dataclasses

from ..engine.errors import InputError
from .base import CONDITIONING, StageNode, category


class AestheticScore(StageNode):
    NODE_ID = "DS_AestheticScore"
    DISPLAY_NAME = "Aesthetic Score (Diffusers SDXL Refiner)"
    VERSION = "1.0.0"
    CATEGORY = category("conditioning")
    DESCRIPTION = ("The aesthetic score the SDXL refiner is conditioned on, diffusers' "
                   "StableDiffusionXLImg2ImgPipeline aesthetic_score (positive prompt, default 6.0) and "
                   "negative_aesthetic_score (negative prompt, default 2.5). Attach it to the prompt it is for; "
                   "without this node the pipeline's defaults are used. Only the refiner takes it: an SDXL base "
                   "model refuses a prompt that carries one.")
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The prompt with its aesthetic score; connect to CFG Guider.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": (CONDITIONING, {"tooltip": "A prompt encoded with the SDXL refiner's text encoder."}),
                "aesthetic_score": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                              "tooltip": "The score the image should look like it earned (the "
                                                         "refiner was trained on 0-10 ratings): 6.0 is the "
                                                         "pipeline's positive default, 2.5 its negative one."}),
            }
        }

    def run(self, conditioning, aesthetic_score):
        if not conditioning.family.takes_size_conditioning:
            raise InputError("conditioning", f"{conditioning.family.display_name} takes no aesthetic score (an SDXL "
                             "refiner input); it would be ignored.", "connect a prompt of the SDXL refiner, or remove "
                             "this node.")
        return (dataclasses.replace(conditioning, aesthetic_score=aesthetic_score),)
