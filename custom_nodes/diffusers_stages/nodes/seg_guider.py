from __future__ import annotations

from .cfg_guider import CFGGuider, layer_guidance_inputs


class SEGGuider(CFGGuider):
    NODE_ID = "DS_SEGGuider"
    DISPLAY_NAME = "SEG Guider (Diffusers)"
    VERSION = "1.1.0"  # 1.1.0: layers selected as PAG Guider selects them (any pattern; mid/up.N/down.N unchanged)
    DESCRIPTION = ("Smoothed Energy Guidance (Hong 2024) with CFG: a third prediction with the self-attention "
                   "queries of some layers blurred (a Gaussian of seg_blur_sigma), and the image pushed away from it "
                   "by seg_scale. Runs diffusers' SmoothedEnergyGuidance as its modular pipelines run it (three "
                   "denoiser calls; diffusers' step windows). U-Net models (SD1.x/2.x, SDXL).")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"].update(layer_guidance_inputs(
            "seg", "blurred", "How far the image is pushed away from the blurred-attention prediction (diffusers' "
            "seg_guidance_scale)."))
        spec["required"]["seg_blur_sigma"] = ("FLOAT", {
            "default": 9999999.0, "min": 0.0, "max": 9999999.0, "step": 0.1,
            "tooltip": "Blur of the attention queries; at or above 9999 the queries are replaced by their mean "
                       "(infinite blur, the paper's default)."})
        return spec

    def run(self, positive, cfg, seg_scale=3.0, seg_blur_sigma=9999999.0, seg_layers="mid", seg_start_percent=0.0,
            seg_end_percent=1.0, guidance_rescale=0.0, start_percent=0.0, end_percent=1.0, negative=None):
        options = (("seg_guidance_scale", seg_scale), ("seg_blur_sigma", seg_blur_sigma), ("layers", seg_layers),
                   ("seg_guidance_start", seg_start_percent), ("seg_guidance_stop", seg_end_percent))
        return (self.guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, "seg", options),)
