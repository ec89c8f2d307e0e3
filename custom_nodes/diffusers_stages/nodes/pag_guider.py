from __future__ import annotations

from .cfg_guider import CFGGuider, layer_guidance_inputs


class PAGGuider(CFGGuider):
    NODE_ID = "DS_PAGGuider"
    DISPLAY_NAME = "PAG Guider (Diffusers)"
    VERSION = "1.1.0"  # 1.1.0: runs as the PAG pipelines (every step of its window, one batched call); adaptive scale
    DESCRIPTION = ("Perturbed-Attention Guidance (Ahn et al. 2024): one more prediction with the self-attention of "
                   "some layers replaced by identity, and the image pushed away from it by pag_scale; on top of CFG "
                   "when cfg is above 1, alone otherwise. Runs as diffusers' PAG pipelines run it "
                   "(StableDiffusionPAGPipeline, StableDiffusionXLPAGPipeline, StableDiffusion3PAGPipeline): the "
                   "perturbed half batched after CFG's halves in one denoiser call, with their PAG attention "
                   "processors. SD1.x/2.x, SDXL and SD3 models.")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"].update(layer_guidance_inputs(
            "pag", "perturbed", "How far the image is pushed away from the perturbed prediction (the pipelines' "
            "pag_scale); 0 = plain CFG."))
        spec["required"]["pag_adaptive_scale"] = ("FLOAT", {
            "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "advanced": True,
            "tooltip": "Fades pag_scale over the run: at timestep t the scale is pag_scale - adaptive * (1000 - t), "
                       "never below 0 (the pipelines' pag_adaptive_scale). 0 = constant."})
        return spec

    def run(self, positive, cfg, pag_scale=3.0, pag_layers="mid", pag_start_percent=0.0, pag_end_percent=1.0,
            guidance_rescale=0.0, start_percent=0.0, end_percent=1.0, pag_adaptive_scale=0.0, negative=None):
        options = (("scale", pag_scale), ("layers", pag_layers), ("start", pag_start_percent),
                   ("end", pag_end_percent), ("adaptive_scale", pag_adaptive_scale))
        return (self.guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, "pag", options),)
