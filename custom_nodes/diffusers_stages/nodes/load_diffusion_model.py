from __future__ import annotations

import dataclasses

from .. import host
from ..engine import weights
from ..engine.component_files import load_denoiser_file
from ..engine.memory import MEMORY_OPTIONS, MEMORY_TOOLTIP, apply_memory_option
from ..engine.schedulers import spec_from_config
from .base import DENOISER, SCHEDULER, StageNode, category
from .model_files import locate

FOLDER = "diffusion_models"  # ComfyUI also lists the legacy models/unet folder under this name


class LoadDiffusionModel(StageNode):
    NODE_ID = "DS_LoadDiffusionModel"
    DISPLAY_NAME = "Load Diffusion Model (Diffusers)"
    VERSION = "1.2.0"  # 1.1.0: Z-Image and Qwen-Image files; 1.2.0: memory (optional, last); GGUF files
    MODEL_FILE_INPUTS = {"model_name": FOLDER}
    CATEGORY = category("loaders")
    DESCRIPTION = ("Loads a denoiser on its own from models/diffusion_models, as the model makers release them "
                   "(flux1-dev.safetensors, flux1-schnell.safetensors, sd3.5_large.safetensors, "
                   "z_image_turbo_bf16.safetensors, qwen_image_bf16.safetensors, an SD1.x/SDXL U-Net in the "
                   "original layout), also fp8, int8 and GGUF files, whose weights stay quantized in memory. Combine "
                   "it with Load Text Encoders and Load VAE. The architecture is read from the file; nothing is "
                   "downloaded.")
    RETURN_TYPES = (DENOISER, SCHEDULER)
    RETURN_NAMES = ("denoiser", "scheduler")
    OUTPUT_TOOLTIPS = (
        "The transformer that predicts the image; connect to Denoise and Empty Latent.",
        "The model family's default scheduler (Flux dev shifts with the image size, schnell does not); connect to "
        "Scheduler or straight to Denoise.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (host.list_model_files(FOLDER, weights.WEIGHT_SUFFIXES), {
                    "tooltip": "A diffusion model file from models/diffusion_models (Flux.1, Flux.2, SD3/3.5, Z-Image, "
                               "Qwen-Image, SD1.x/2.x or SDXL U-Net, in the layout the makers release)."}),
                "dtype": (["auto", *weights.DTYPES], {
                    "default": "auto",
                    "tooltip": "Compute precision. auto: the host's choice for the family (on most GPUs bf16 for "
                               "Flux, fp16 for the others; fp32 on the CPU). Quantized files (fp8, int8, GGUF) keep "
                               "their weights quantized and compute in this precision."}),
            },
            "optional": {
                "memory": (list(MEMORY_OPTIONS), {"default": "none", "tooltip": MEMORY_TOOLTIP}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return cls.check_call(locate, FOLDER, model_name, "model_name")

    def run(self, model_name, dtype="auto", memory="none"):
        torch_dtype = host.default_dtype if dtype == "auto" else weights.DTYPES[dtype]  # auto: by family
        denoiser, scheduler = load_denoiser_file(locate(FOLDER, model_name, "model_name"), torch_dtype)
        apply_memory_option(denoiser.module, memory, denoiser.module.dtype, host.compute_device())
        return (dataclasses.replace(denoiser, residency=host.manage([denoiser.module], "denoiser")),
                spec_from_config(scheduler))
