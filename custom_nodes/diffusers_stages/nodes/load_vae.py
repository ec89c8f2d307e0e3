from __future__ import annotations

import dataclasses

from .. import host
from ..engine import weights
from ..engine.vae_loading import load_vae_file
from .base import VAE, StageNode, category
from .model_files import locate

FOLDER = "vae"


class LoadVAE(StageNode):
    NODE_ID = "DS_LoadVAE"
    DISPLAY_NAME = "Load VAE (Diffusers)"
    VERSION = "1.0.0"
    MODEL_FILE_INPUTS = {"vae_name": FOLDER}
    CATEGORY = category("loaders")
    DESCRIPTION = ("Loads a VAE file from models/vae (original or diffusers layout, any family), to use instead of "
                   "the model's own VAE in VAE Decode / VAE Encode. The denoiser keeps its own latent scaling.")
    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The VAE; connect to VAE Decode / VAE Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae_name": (host.list_model_files(FOLDER, weights.SAFETENSORS_SUFFIXES),
                             {"tooltip": "A .safetensors VAE in models/vae."}),
                "dtype": (["auto", *weights.DTYPES], {"default": "auto",
                                                      "tooltip": "Weight precision. auto: the host's choice."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, vae_name):
        return cls.check_call(cls.resolve, vae_name)

    @staticmethod
    def resolve(name: str) -> str:
        return locate(FOLDER, name, "vae_name")

    def run(self, vae_name, dtype="auto"):
        torch_dtype = host.default_dtype() if dtype == "auto" else weights.DTYPES[dtype]
        vae = load_vae_file(self.resolve(vae_name), torch_dtype)
        return (dataclasses.replace(vae, residency=host.manage([vae.module], "vae")),)
