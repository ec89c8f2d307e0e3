from __future__ import annotations

from .cfg_guider import CFGGuider


class APGGuider(CFGGuider):
    NODE_ID = "DS_APGGuider"
    DISPLAY_NAME = "APG Guider (Diffusers)"
    VERSION = "1.0.0"
    DESCRIPTION = ("Adaptive Projected Guidance (Sadat et al. 2024): the guidance update split into parts parallel "
                   "and orthogonal to the positive prediction, the parallel part damped by eta, its norm capped, "
                   "optionally with momentum; high cfg without over-saturation. Runs diffusers' "
                   "AdaptiveProjectedGuidance as its modular pipelines run it (two denoiser calls, its own step "
                   "window: int(start x steps) <= step < int(end x steps)).")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"].update({
            "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "Weight of the update's part parallel to the positive prediction (1 = kept, "
                                         "0 = removed, the paper's recommendation for high cfg)."}),
            "norm_threshold": ("FLOAT", {"default": 15.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                         "tooltip": "Cap on the update's norm (diffusers' "
                                                    "adaptive_projected_guidance_rescale); 0 = no cap."}),
            "momentum": ("FLOAT", {"default": 0.0, "min": -1.0, "max": 1.0, "step": 0.01, "advanced": True,
                                   "tooltip": "Momentum of the update across steps (the paper uses negative values, "
                                              "e.g. -0.5); 0 = none."}),
        })
        return spec

    def run(self, positive, cfg, eta=1.0, norm_threshold=15.0, momentum=0.0, guidance_rescale=0.0,
            start_percent=0.0, end_percent=1.0, negative=None):
        options = (("eta", eta), ("adaptive_projected_guidance_rescale", norm_threshold),
                   ("adaptive_projected_guidance_momentum", momentum or None))
        return (self.guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, "apg", options),)
