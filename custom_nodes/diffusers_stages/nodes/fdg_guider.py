from __future__ import annotations

from .cfg_guider import CFGGuider


class FDGGuider(CFGGuider):
    NODE_ID = "DS_FDGGuider"
    DISPLAY_NAME = "FDG Guider (Diffusers)"
    VERSION = "1.0.0"
    DESCRIPTION = ("Frequency-Decoupled Guidance (Sadat et al. 2025): the guidance update split by a Laplacian "
                   "pyramid into a low- and a high-frequency part, each with its own scale; a low cfg for the low "
                   "frequencies keeps colours and composition natural, a high cfg_high sharpens details. Runs "
                   "diffusers' FrequencyDecoupledGuidance as its modular pipelines run it (two denoiser calls, its "
                   "own step window: int(start x steps) <= step < int(end x steps)). Needs the kornia package. Models "
                   "with spatial latents (SD1.x/2.x, SDXL, SD3).")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"]["cfg"] = ("FLOAT", {
            "default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
            "tooltip": "Guidance scale of the low frequencies (w_low: overall layout and colour). The paper suggests "
                       "5 for SDXL."})
        spec["required"].update({
            "cfg_high": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                   "tooltip": "Guidance scale of the high frequencies (w_high: details). The paper "
                                              "suggests 10 for SDXL."}),
            "parallel_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                          "tooltip": "Weight of each part's update parallel to the positive "
                                                     "prediction (as APG's eta); 1 = plain CFG update."}),
        })
        return spec

    def run(self, positive, cfg, cfg_high=10.0, parallel_weight=1.0, guidance_rescale=0.0, start_percent=0.0,
            end_percent=1.0, negative=None):
        options = (("guidance_scales", (cfg_high, cfg)), ("parallel_weights", parallel_weight))
        # guidance runs when either scale guides (diffusers: unless every level's scale is 1)
        return (self.guider(positive, negative, max(cfg, cfg_high), guidance_rescale, start_percent, end_percent,
                            "fdg", options),)
