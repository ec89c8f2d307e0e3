from __future__ import annotations

import dataclasses

from ..engine.errors import InputError
from .base import GUIDER, StageNode, category, window_error


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as error:
        raise InputError("layers", f"'{text}' is not a list of layer numbers.", "write e.g. 7, 8, 9.") from error
    if not layers or min(layers) < 0:
        raise InputError("layers", f"'{text}' names no layer.", "write layer numbers from 0, e.g. 7, 8, 9.")
    return layers


class SkipLayerGuidance(StageNode):
    NODE_ID = "DS_SkipLayerGuidance"
    DISPLAY_NAME = "Skip Layer Guidance (Diffusers)"
    VERSION = "1.1.0"  # 1.1.0: Flux.1, Z-Image and Qwen-Image (diffusers' SkipLayerGuidance) besides SD3
    CATEGORY = category("guidance")
    DESCRIPTION = ("Skip-layer guidance on DiT models: inside the step window, one more transformer call leaves out "
                   "these layers, and the guided prediction is pushed away from it. SD3/SD3.5 as "
                   "StableDiffusion3Pipeline's skip_guidance_layers; Flux.1, Z-Image and Qwen-Image through diffusers' "
                   "SkipLayerGuidance (run as its modular pipelines run guiders). Works on top of CFG: cfg above 1 "
                   "and a negative prompt (Flux, Qwen-Image: true CFG).")
    RETURN_TYPES = (GUIDER,)
    RETURN_NAMES = ("guider",)
    OUTPUT_TOOLTIPS = ("The guider with skip-layer guidance; connect to Denoise.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "guider": (GUIDER, {"tooltip": "A CFG Guider of an SD3 or Flux.1 model."}),
                "layers": ("STRING", {"default": "7, 8, 9",
                                      "tooltip": "Transformer blocks to skip, comma-separated (SD3.5 Medium: 7, 8, "
                                                 "9). Flux.1: numbers are double-stream blocks, single.N "
                                                 "single-stream blocks."}),
                "scale": ("FLOAT", {"default": 2.8, "min": 0.0, "max": 10.0, "step": 0.1,
                                    "tooltip": "Strength of the push away from the layer-skipped prediction."}),
                "start_percent": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Window start (fraction of the steps; strictly after)."}),
                "end_percent": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Window end (fraction of the steps; strictly before)."}),
            }
        }

    def run(self, guider, layers, scale, start_percent=0.01, end_percent=0.2):
        family = guider.positive.family
        if guider.method != "cfg" or guider.skip_layers:
            raise InputError("guider", "skip-layer guidance adds to plain CFG, and this guider already guides "
                             f"another way ({guider.method}).", "feed it from a CFG Guider node.")
        if family.supports_skip_layers:  # the family's own pipeline runs it
            return (dataclasses.replace(guider, skip_layers=parse_layers(layers), skip_scale=scale,
                                        skip_start=start_percent, skip_stop=end_percent),)
        if not family.skip_layer_lists:
            raise InputError("guider", f"skip-layer guidance skips a DiT's transformer blocks; a "
                             f"{family.display_name} model has none to skip.",
                             "use it with an SD3/SD3.5, Flux.1, Z-Image or Qwen-Image model.")
        problem = window_error(start_percent, end_percent)
        if problem:
            raise problem
        options = (("skip_layer_guidance_scale", scale), ("skip_layer_guidance_start", start_percent),
                   ("skip_layer_guidance_stop", end_percent), ("layers", layers))
        return (dataclasses.replace(guider, method="slg", method_options=options),)
