from __future__ import annotations

import dataclasses
import os

from .. import host
from ..engine import weights
from ..engine.controlnet import load_controlnet
from .base import CONTROLNET, StageNode, category
from .model_files import locate

FOLDER = "controlnet"


def available_controlnets() -> list[str]:
    """Diffusers ControlNet folders (a config.json beside the weights) and single .safetensors files in
    models/controlnet."""
    found = set()
    for root in host.model_roots(FOLDER):
        if not os.path.isdir(root):
            continue
        for current, dirs, files in os.walk(root, followlinks=True):
            relative = os.path.relpath(current, root).replace(os.sep, "/")
            if "config.json" in files and any(f.endswith(".safetensors") for f in files):
                found.add(relative)
                dirs.clear()  # the folder's weights are not models of their own
                continue
            found.update(f if relative == "." else f"{relative}/{f}" for f in files
                         if f.lower().endswith(weights.SAFETENSORS_SUFFIXES))
    return sorted(found)


class LoadControlNet(StageNode):
    NODE_ID = "DS_LoadControlNet"
    DISPLAY_NAME = "Load ControlNet (Diffusers)"
    VERSION = "1.0.0"
    MODEL_FILE_INPUTS = {"controlnet_name": FOLDER}
    CATEGORY = category("loaders")
    DESCRIPTION = ("Loads a ControlNet from models/controlnet: a diffusers folder (config.json + "
                   "diffusion_pytorch_model.safetensors) for SD1.x/2.x, SDXL (also union), SD3, Flux.1, "
                   "Qwen-Image (InstantX, also union) or Z-Image (VideoX-Fun Union 1.0/2.0/2.1), or a single file: "
                   "SD1.x/2.x or SDXL (original or diffusers layout), Z-Image-Turbo-Fun-Controlnet-Union*. Attach "
                   "it to prompts with Apply ControlNet.")
    RETURN_TYPES = (CONTROLNET,)
    RETURN_NAMES = ("controlnet",)
    OUTPUT_TOOLTIPS = ("The ControlNet; connect to Apply ControlNet.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "controlnet_name": (available_controlnets(), {
                    "tooltip": "A diffusers ControlNet folder in models/controlnet (e.g. "
                               "lllyasviel/control_v11p_sd15_canny, diffusers/controlnet-canny-sdxl-1.0), or an "
                               "SD1.x/2.x or SDXL ControlNet .safetensors file."}),
                "dtype": (["auto", *weights.DTYPES], {"default": "auto",
                                                      "tooltip": "Weight precision. auto: the host's choice."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, controlnet_name):
        return cls.check_call(cls.resolve, controlnet_name)

    @staticmethod
    def resolve(name: str) -> str:
        return locate(FOLDER, name, "controlnet_name", os.path.exists)

    def run(self, controlnet_name, dtype="auto"):
        torch_dtype = host.default_dtype if dtype == "auto" else weights.DTYPES[dtype]  # auto: by family
        controlnet = load_controlnet(self.resolve(controlnet_name), torch_dtype)
        return (dataclasses.replace(controlnet, residency=host.manage([controlnet.module], "denoiser")),)
