from __future__ import annotations

import dataclasses

from ..engine.components import Control
from ..engine.errors import InputError
from .base import CONDITIONING, CONTROLNET, StageNode, category


class ApplyControlNet(StageNode):
    NODE_ID = "DS_ApplyControlNet"
    DISPLAY_NAME = "Apply ControlNet (Diffusers)"
    VERSION = "1.0.0"
    CATEGORY = category("conditioning")
    DESCRIPTION = ("Attaches a ControlNet with its control image to the prompts, as diffusers' ControlNet pipelines "
                   "apply it: the strength is controlnet_conditioning_scale, start/end percent are "
                   "control_guidance_start/end. Chain several to combine ControlNets (their residuals add up in "
                   "chain order). A control image of another size is resized to the generated size as the "
                   "pipeline's image processor does.")
    RETURN_TYPES = (CONDITIONING, CONDITIONING)
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("The positive prompt with the ControlNet attached.",
                       "The negative prompt with the ControlNet attached (empty if no negative was connected).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": (CONDITIONING, {"tooltip": "The positive prompt from Text Encode."}),
                "controlnet": (CONTROLNET, {"tooltip": "From Load ControlNet."}),
                "image": ("IMAGE", {"tooltip": "The control image (an edge map, depth map, pose, … as the "
                                               "ControlNet expects), e.g. from Load Image."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "How strongly the control steers (diffusers' "
                                                  "controlnet_conditioning_scale). 0 = off."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                            "tooltip": "Fraction of the steps before the control starts "
                                                       "(control_guidance_start)."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                          "tooltip": "Fraction of the steps after which the control stops "
                                                     "(control_guidance_end)."}),
            },
            "optional": {
                "negative": (CONDITIONING, {"tooltip": "The negative prompt; connect it so the control also "
                                                       "steers the unconditional half of CFG, as the pipelines do."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent, end_percent):
        if start_percent > end_percent:
            return cls.check(InputError("start_percent", f"start {start_percent} is after end {end_percent}.",
                                        "make start_percent at most end_percent."))
        return True

    def run(self, positive, controlnet, image, strength=1.0, start_percent=0.0, end_percent=1.0, negative=None):
        control = Control(controlnet, image, strength, start_percent, end_percent)

        def attach(cond):
            return None if cond is None else dataclasses.replace(cond, controls=(*cond.controls, control))

        return attach(positive), attach(negative)
