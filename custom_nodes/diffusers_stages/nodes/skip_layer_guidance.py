from __future__ import annotations

import dataclasses

from ..engine.errors import InputError
from .base import GUIDER, StageNode, category


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
    DISPLAY_NAME = "Skip Layer Guidance (Diffusers SD3)"
    VERSION = "1.0.0"
    CATEGORY = category("guidance")
    DESCRIPTION = ("Skip-layer guidance for SD3/SD3.5, as StableDiffusion3Pipeline's skip_guidance_layers: inside "
                   "the step window, one more transformer call leaves out these layers, and the guided prediction "
                   "is pushed away from it. Works on top of CFG (cfg above 1).")
    RETURN_TYPES = (GUIDER,)
    RETURN_NAMES = ("guider",)
    OUTPUT_TOOLTIPS = ("The guider with skip-layer guidance; connect to Denoise.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "guider": (GUIDER, {"tooltip": "A CFG guider of an SD3 model."}),
                "layers": ("STRING", {"default": "7, 8, 9",
                                      "tooltip": "Transformer layers to skip, comma-separated "
                                                 "(SD3.5 Medium: 7, 8, 9)."}),
                "scale": ("FLOAT", {"default": 2.8, "min": 0.0, "max": 10.0, "step": 0.1,
                                    "tooltip": "Strength of the push away from the layer-skipped prediction."}),
                "start_percent": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Window start (fraction of the steps; strictly after)."}),
                "end_percent": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Window end (fraction of the steps; strictly before)."}),
            }
        }

    def run(self, guider, layers, scale, start_percent=0.01, end_percent=0.2):
        if not guider.positive.family.supports_skip_layers:
            raise InputError("guider", f"skip-layer guidance is an SD3 feature; this guider is for "
                             f"{guider.positive.family.display_name}.", "use it with an SD3/SD3.5 model.")
        return (dataclasses.replace(guider, skip_layers=parse_layers(layers), skip_scale=scale,
                                    skip_start=start_percent, skip_stop=end_percent),)
