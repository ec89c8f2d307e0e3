from __future__ import annotations

from ..engine.components import Guider
from ..engine.errors import InputError
from .base import CONDITIONING, GUIDER, StageNode, category, window_error
from .text_encode import implicit_negative


def layer_guidance_inputs(prefix: str, what: str, scale_tooltip: str) -> dict:
    """The inputs of a guider that perturbs some U-Net blocks (PAG, SEG): its scale, the blocks, its own window."""
    return {
        f"{prefix}_scale": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": scale_tooltip}),
        f"{prefix}_layers": ("STRING", {"default": "mid", "tooltip": f"Self-attention layers {what}, as diffusers' "
                                        "PAG pipelines select them (pag_applied_layers): comma-separated patterns "
                                        "searched in the layer names. U-Nets: mid, up.N, down.N (short for "
                                        "up_blocks.N, down_blocks.N); SD3: blocks.N (a pattern: blocks.1 also takes "
                                        "blocks.10-19; write blocks.1\\. for one)."}),
        f"{prefix}_start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                              "tooltip": f"{prefix.upper()} starts at this fraction of the steps."}),
        f"{prefix}_end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                            "tooltip": f"{prefix.upper()} stops at this fraction of the steps."}),
    }


class CFGGuider(StageNode):
    NODE_ID = "DS_CFGGuider"
    DISPLAY_NAME = "CFG Guider (Diffusers)"
    VERSION = "1.2.0"  # 1.1.0: negative is optional; 1.2.0: without one, the pipeline's own empty negative
    CATEGORY = category("guidance")
    DESCRIPTION = ("Classifier-free guidance: steers the denoiser towards the positive prompt and away from the "
                   "negative. As in diffusers, guidance is applied when cfg is above 1; with cfg 1 or below only "
                   "the positive prompt is used (one denoiser call per step). Without a negative prompt it does "
                   "what the model's diffusers pipeline does with negative_prompt=None: guide away from an encoded "
                   "empty prompt (SD1.x/2.x, SD3, Z-Image), from zeros (SDXL with force_zeros_for_empty_prompt), or "
                   "not at all (Flux, Qwen-Image: their true CFG needs a negative). Each family combines the "
                   "predictions as its pipeline does (Z-Image: pos + (cfg-1)(pos-neg); Qwen-Image: rescaled to the "
                   "positive prediction's norm).")
    RETURN_TYPES = (GUIDER,)
    RETURN_NAMES = ("guider",)
    OUTPUT_TOOLTIPS = ("The guidance settings with both prompts; connect to Denoise.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": (CONDITIONING, {"tooltip": "What the image should show."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Guidance scale. Higher follows the prompt more closely; 5-9 is usual "
                                             "for SD1.5. 1 or less turns guidance off."}),
                "guidance_rescale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                               "advanced": True,
                                               "tooltip": "Rescales the guided prediction towards the positive one's "
                                                          "spread (Lin et al. 2023); 0.7 helps v-prediction models "
                                                          "avoid over-exposure. 0 = off."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                            "tooltip": "Guidance starts at this fraction of the steps."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "advanced": True,
                                          "tooltip": "Guidance stops at this fraction of the steps; outside the "
                                                     "interval only the positive prompt is used."}),
            },
            "optional": {
                "negative": (CONDITIONING, {"tooltip": "What the image should avoid. Left unconnected: the "
                                                       "pipeline's own default (an empty prompt, or zeros for "
                                                       "SDXL); Flux then runs without CFG."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent, end_percent):
        return cls.check(window_error(start_percent, end_percent))

    def run(self, positive, cfg, guidance_rescale=0.0, start_percent=0.0, end_percent=1.0, negative=None):
        return (self.guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent),)

    @staticmethod
    def guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, method: str = "cfg",
               options: tuple = ()) -> Guider:
        """The Guider of a CFG-style node (this one, or a node for one of diffusers' guiders)."""
        if negative is None and Guider.scale_guides(cfg):  # as the family's pipeline with negative_prompt=None
            negative = implicit_negative(positive)
        if negative is not None and positive.family is not negative.family:
            raise InputError("negative", f"the negative prompt was encoded for {negative.family.display_name} but "
                             f"the positive for {positive.family.display_name}.",
                             "encode both prompts with the same model's text encoder.")
        if start_percent > end_percent:
            raise InputError("start_percent", f"start ({start_percent}) is after end ({end_percent}).",
                             "make start_percent less than or equal to end_percent.")
        return Guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, method=method,
                      method_options=options)
