from __future__ import annotations

import dataclasses
import os

from .. import host
from ..engine import weights
from ..engine.errors import InputError
from ..engine.lora import load_lora
from .base import DENOISER, TEXT_ENCODER, StageNode, category
from .model_files import locate

FOLDER = "loras"


class LoadLoRA(StageNode):
    NODE_ID = "DS_LoadLoRA"
    DISPLAY_NAME = "Load LoRA (Diffusers)"
    VERSION = "1.0.0"
    MODEL_FILE_INPUTS = {"lora_name": FOLDER}
    CATEGORY = category("loaders")
    DESCRIPTION = ("Adds a LoRA from models/loras to the denoiser and text encoder (diffusers/peft, kohya/A1111 and "
                   "ComfyUI formats), with a strength for each. Chain several to stack them. Non-destructive: the "
                   "inputs still run without the LoRA (bit-identical to never loading it), so other branches and "
                   "later runs are unaffected. SD1.x/2.x, SDXL, SD3 and Flux.1.")
    RETURN_TYPES = (DENOISER, TEXT_ENCODER)
    RETURN_NAMES = ("denoiser", "text_encoder")
    OUTPUT_TOOLTIPS = ("The denoiser with the LoRA on; connect to Denoise.",
                       "The text encoder with the LoRA on; connect to Text Encode.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "denoiser": (DENOISER, {"tooltip": "The denoiser to add the LoRA to."}),
                "text_encoder": (TEXT_ENCODER, {"tooltip": "The text encoder to add the LoRA to (if the LoRA has "
                                                           "text encoder weights)."}),
                "lora_name": (host.list_model_files(FOLDER, weights.SAFETENSORS_SUFFIXES),
                              {"tooltip": "A LoRA .safetensors file from models/loras."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "Strength on the denoiser (diffusers' adapter weight). "
                                                        "0 = off."}),
                "strength_text_encoder": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                                    "tooltip": "Strength on the text encoder. 0 = off."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        return cls.check_call(locate, FOLDER, lora_name, "lora_name")

    def run(self, denoiser, text_encoder, lora_name, strength_model=1.0, strength_text_encoder=1.0):
        if text_encoder.family is not denoiser.family:
            raise InputError("text_encoder", f"the text encoder is {text_encoder.family.display_name} but the "
                             f"denoiser is {denoiser.family.display_name}.",
                             "connect the text encoder and denoiser of the same model.")
        path = locate(FOLDER, lora_name, "lora_name")
        host.ensure_loaded(denoiser.residency, text_encoder.residency)
        report = load_lora(path, denoiser.family, denoiser.module, denoiser.family.lora_text_targets(text_encoder))
        if report.layers_matched >= 0:
            print(f"[Diffusers Stages] LoRA {os.path.basename(path)}: {report.layers_matched} of "
                  f"{report.layers_in_file} layers matched")
        return (dataclasses.replace(denoiser, loras=(*denoiser.loras, (report.adapter, strength_model))),
                dataclasses.replace(text_encoder, loras=(*text_encoder.loras, (report.adapter, strength_text_encoder))))
