from __future__ import annotations

from .cfg_guider import CFGGuider


class CFGZeroStarGuider(CFGGuider):
    NODE_ID = "DS_CFGZeroStarGuider"
    DISPLAY_NAME = "CFG-Zero* Guider (Diffusers)"
    VERSION = "1.0.0"
    DESCRIPTION = ("CFG-Zero* (Fan et al. 2025): classifier-free guidance with the negative prediction scaled by the "
                   "optimal projection onto the positive one, and the first steps' prediction zeroed. Runs diffusers' "
                   "ClassifierFreeZeroStarGuidance as its modular pipelines run it (positive and negative as two "
                   "denoiser calls, its own step window: int(start x steps) <= step < int(end x steps)).")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"]["zero_init_steps"] = ("INT", {"default": 1, "min": 0, "max": 100, "advanced": True,
                                                       "tooltip": "Steps at the start whose prediction is zeroed "
                                                                  "(CFG-Zero*'s zero-init); 0 = none."})
        return spec

    def run(self, positive, cfg, zero_init_steps=1, guidance_rescale=0.0, start_percent=0.0, end_percent=1.0,
            negative=None):
        return (self.guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, "cfg_zero_star",
                            (("zero_init_steps", zero_init_steps),)),)
