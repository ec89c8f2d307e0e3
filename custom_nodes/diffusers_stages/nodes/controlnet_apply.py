from __future__ import annotations

import dataclasses

from ..engine.components import Control
from .base import CONDITIONING, CONTROLNET, VAE, StageNode, category, window_error


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
                "vae": (VAE, {"tooltip": "The model's VAE; SD3, Flux, Qwen-Image and Z-Image ControlNets take the "
                                         "control image as latents (SD1.x/SDXL ControlNets do not need it)."}),
                "union_mode": ("INT", {"default": -1, "min": -1, "max": 15, "advanced": True,
                                       "tooltip": "Union ControlNets only: the kind of control image (xinsir SDXL "
                                                  "union: 0 openpose, 1 depth, 2 hed/scribble, 3 canny/lineart, "
                                                  "4 normal, 5 segment, 6 tile, 7 repaint; InstantX Flux union: 0 "
                                                  "canny, 1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 low quality). "
                                                  "-1 = not a union ControlNet."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent, end_percent):
        return cls.check(window_error(start_percent, end_percent))

    def run(self, positive, controlnet, image, strength=1.0, start_percent=0.0, end_percent=1.0, negative=None,
            vae=None, union_mode=-1):
        control = Control(controlnet, image, strength, start_percent, end_percent, vae,
                          None if union_mode < 0 else union_mode)

        def attach(cond):
            return None if cond is None else dataclasses.replace(cond, controls=(*cond.controls, control))

        return attach(positive), attach(negative)
