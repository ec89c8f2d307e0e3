from __future__ import annotations

import dataclasses
import os

from .. import host
from ..engine import loading, weights
from ..engine.errors import InputError
from ..engine.memory import MEMORY_OPTIONS, MEMORY_TOOLTIP, apply_memory_option
from .base import DENOISER, SCHEDULER, TEXT_ENCODER, VAE, StageNode, category
from .model_files import locate, t5_tokenizer_dirs

FOLDER = "diffusers"
CHECKPOINTS = "checkpoints"


def available_models() -> list[str]:
    """Entries of the model list: 'diffusers/<folder>' and 'checkpoints/<file>', as found on disk."""
    folders = loading.list_diffusers_folders(host.model_roots(FOLDER))
    files = host.list_model_files(CHECKPOINTS, weights.SAFETENSORS_SUFFIXES)
    return [f"{FOLDER}/{f}" for f in folders] + [f"{CHECKPOINTS}/{f}" for f in files]


def resolve_model(name: str) -> tuple[str, str]:
    """('folder'|'file', absolute path) for a model-list entry; a clear error if it is not usable."""
    kind, _, relative = name.partition("/")
    if kind not in (FOLDER, CHECKPOINTS) or not relative:
        raise InputError("model", f"'{name}' is not an entry of the model list.",
                         "pick a model from the list (diffusers/<folder> or checkpoints/<file>), or give a repo_id.")
    if kind == FOLDER:  # a diffusers folder is a directory with a model_index.json
        return "folder", locate(kind, relative, "model", lambda p: os.path.isfile(os.path.join(p, "model_index.json")))
    return "file", locate(kind, relative, "model")


class LoadModel(StageNode):
    NODE_ID = "DS_LoadModel"
    DISPLAY_NAME = "Load Diffusers Model"
    VERSION = "1.1.0"  # 1.1.0: memory (optional, last)
    CATEGORY = category("loaders")
    DESCRIPTION = ("Loads a whole model (denoiser, text encoder, VAE and its default scheduler) from a diffusers "
                   "folder in models/diffusers, a single-file .safetensors checkpoint in models/checkpoints, or a "
                   "Hugging Face repo id (local cache first). Works offline; pickle files are refused.")
    RETURN_TYPES = (DENOISER, TEXT_ENCODER, VAE, SCHEDULER)
    RETURN_NAMES = ("denoiser", "text_encoder", "vae", "scheduler")
    OUTPUT_TOOLTIPS = (
        "The U-Net (or DiT) that predicts noise; connect to Denoise and Empty Latent.",
        "The text encoder with its tokenizer; connect to Text Encode.",
        "The VAE; connect to VAE Decode / VAE Encode.",
        "The model's own scheduler settings; connect to Scheduler (to change the sampler) or straight to Denoise.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (available_models(), {
                    "tooltip": "A diffusers folder from models/diffusers or a .safetensors checkpoint from "
                               "models/checkpoints. Ignored when repo_id is set."}),
                "repo_id": ("STRING", {
                    "default": "",
                    "tooltip": "Optional Hugging Face repo id (owner/name). Read from the local Hugging Face cache; "
                               "downloaded only if allow_download is on."}),
                "dtype": (["auto", *weights.DTYPES], {
                    "default": "auto",
                    "tooltip": "Weight precision. auto: the host's choice for the model's family (on most GPUs "
                               "bf16 for Flux, fp16 for the others; fp32 on the CPU)."}),
                "prediction": (list(loading.PREDICTIONS), {
                    "default": "auto", "advanced": True,
                    "tooltip": "What the model predicts. auto: from the model's scheduler config (single files: "
                               "epsilon for SD1, v_prediction for SD2). Set it for v-prediction fine-tunes."}),
                "allow_download": ("BOOLEAN", {
                    "default": False, "advanced": True,
                    "tooltip": "Allow downloading a repo_id that is not in the local cache (needs network)."}),
            },
            "optional": {
                "memory": (list(MEMORY_OPTIONS), {"default": "none", "tooltip": MEMORY_TOOLTIP}),
            },
        }

    @classmethod
    def model_files(cls, inputs: dict) -> list[str]:
        name = inputs.get("model")
        if (inputs.get("repo_id") or "").strip() or not isinstance(name, str):
            return []  # a repo id is a folder in the Hugging Face cache; not fingerprinted
        try:
            return [resolve_model(name)[1]]
        except InputError:
            return []

    @classmethod
    def VALIDATE_INPUTS(cls, model, repo_id):
        # Naming `model` here replaces ComfyUI's list check with ours, which says what is wrong and how to fix it.
        return True if repo_id or model is None else cls.check_call(resolve_model, model)

    def run(self, model, repo_id="", dtype="auto", prediction="auto", allow_download=False, memory="none"):
        torch_dtype = host.default_dtype if dtype == "auto" else weights.DTYPES[dtype]  # auto: by family
        if repo_id.strip():
            loaded = loading.load_repo_id(repo_id.strip(), torch_dtype, prediction, allow_download)
        else:
            kind, path = resolve_model(model)
            if kind == "folder":
                loaded = loading.load_folder(path, torch_dtype, prediction)
            else:
                loaded = loading.load_single_file(path, torch_dtype, prediction, host.clip_vocab_dirs(),
                                                  t5_tokenizer_dirs())
        text_encoder = loaded.text_encoder
        apply_memory_option(loaded.denoiser.module, memory, loaded.denoiser.module.dtype, host.compute_device())
        return (
            dataclasses.replace(loaded.denoiser, residency=host.manage([loaded.denoiser.module], "denoiser")),
            dataclasses.replace(text_encoder, residency=host.manage(text_encoder.modules, "text_encoder")),
            dataclasses.replace(loaded.vae, residency=host.manage([loaded.vae.module], "vae")),
            loaded.scheduler,
        )
