from __future__ import annotations

import dataclasses

from ..engine.errors import InputError
from .base import CONDITIONING, StageNode, category
from .empty_latent import MAX_SIZE


def _size(name: str, tooltip: str):
    return ("INT", {"default": 0, "min": 0, "max": MAX_SIZE, "step": 8, "tooltip": tooltip})


class SizeConditioning(StageNode):
    NODE_ID = "DS_SizeConditioning"
    DISPLAY_NAME = "Size Conditioning (Diffusers SDXL)"
    VERSION = "1.0.1"  # 1.0.1: refuses SD3/Flux prompts (was: accepted, size ignored)
    CATEGORY = category("conditioning")
    DESCRIPTION = ("SDXL micro-conditioning: tells the UNet the original image size, the crop and the target size "
                   "(diffusers' original_size, crops_coords_top_left, target_size). Sizes left at 0 mean the size "
                   "being generated. A negative prompt without its own size conditioning uses the positive's, as "
                   "the diffusers pipeline does.")
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The conditioning with the size information attached.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": (CONDITIONING, {"tooltip": "An SDXL prompt from Text Encode."}),
                "original_width": _size("original_width", "Width of the 'original' image (0 = the generated width). "
                                                          "Larger than the output often adds detail."),
                "original_height": _size("original_height", "Height of the 'original' image (0 = generated height)."),
                "crop_left": ("INT", {"default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                                      "tooltip": "Left edge of the crop in the original (0 = centred subject)."}),
                "crop_top": ("INT", {"default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                                     "tooltip": "Top edge of the crop in the original (0 = centred subject)."}),
                "target_width": _size("target_width", "Target width (0 = the generated width)."),
                "target_height": _size("target_height", "Target height (0 = the generated height)."),
            }
        }

    def run(self, conditioning, original_width=0, original_height=0, crop_left=0, crop_top=0, target_width=0,
            target_height=0):
        if not conditioning.family.takes_size_conditioning:
            raise InputError("conditioning", f"{conditioning.family.display_name} takes no size conditioning (an "
                             "SDXL input); the size would be ignored.", "connect the prompt of an SDXL model, or "
                             "remove this node.")
        size = (original_height, original_width, crop_top, crop_left, target_height, target_width)
        return (dataclasses.replace(conditioning, size=size),)
