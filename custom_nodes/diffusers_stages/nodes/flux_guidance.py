from __future__ import annotations

import dataclasses

from ..engine.errors import InputError
from .base import CONDITIONING, StageNode, category


class FluxGuidance(StageNode):
    NODE_ID = "DS_FluxGuidance"
    DISPLAY_NAME = "Flux Guidance (Diffusers)"
    VERSION = "1.0.0"
    CATEGORY = category("conditioning")
    DESCRIPTION = ("The guidance value a guidance-distilled Flux model (dev) is given as an input: diffusers' "
                   "FluxPipeline guidance_scale (default 3.5). It is not CFG: for true CFG with a negative prompt "
                   "set cfg above 1 in CFG Guider. Flux schnell ignores it.")
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The positive prompt with the guidance value attached; connect to CFG Guider.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": (CONDITIONING, {"tooltip": "A Flux prompt from Text Encode (the positive one)."}),
                "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1,
                                       "tooltip": "Distilled guidance; 3.5 is usual for Flux dev."}),
            }
        }

    def run(self, conditioning, guidance):
        if not conditioning.family.takes_distilled_guidance:
            raise InputError("conditioning", f"the guidance value is a Flux input; this prompt was encoded for "
                             f"{conditioning.family.display_name}.", "connect the prompt of a Flux model.")
        return (dataclasses.replace(conditioning, guidance=guidance),)
