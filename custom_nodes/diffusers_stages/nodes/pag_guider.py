from __future__ import annotations

from .cfg_guider import CFGGuider, layer_guidance_inputs


class PAGGuider(CFGGuider):
    NODE_ID = "DS_PAGGuider"
    DISPLAY_NAME = "PAG Guider (Diffusers)"
    VERSION = "1.0.0"
    DESCRIPTION = ("Perturbed-Attention Guidance (Ahn et al. 2024) with CFG: a third prediction with the "
                   "self-attention of some layers replaced by identity, and the image pushed away from it by "
                   "pag_scale. Runs diffusers' PerturbedAttentionGuidance as its modular pipelines run it (three "
                   "denoiser calls: positive, negative, perturbed; diffusers' step windows). U-Net models (SD1.x/2.x, "
                   "SDXL): diffusers' perturbation hooks do not take the SD3/Flux attention processors.")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"].update(layer_guidance_inputs(
            "pag", "perturbed", "How far the image is pushed away from the perturbed prediction (diffusers' "
            "perturbed_guidance_scale); 0 = plain CFG."))
        return spec

    def run(self, positive, cfg, pag_scale=3.0, pag_layers="mid", pag_start_percent=0.0, pag_end_percent=1.0,
            guidance_rescale=0.0, start_percent=0.0, end_percent=1.0, negative=None):
        options = (("perturbed_guidance_scale", pag_scale), ("layers", pag_layers),
                   ("perturbed_guidance_start", pag_start_percent), ("perturbed_guidance_stop", pag_end_percent))
        return (self.guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, "pag", options),)
