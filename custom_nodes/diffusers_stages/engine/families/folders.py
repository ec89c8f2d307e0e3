"""Loading helpers shared by the family adapters: diffusers folders and the LoadedModel they become."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..components import Denoiser, TextEncoder, TextPart, Vae
from ..errors import InputError
from ..family import Family, LoadedModel
from ..schedulers import spec_from_config
from ..text_files import with_chat_template


def weights_variant(folder: str, component: str) -> str | None:
    """None for plain weights, "fp16"/"bf16" when only variant files exist; refuses pickle-only components."""
    sub = os.path.join(folder, component)
    files = [f for f in os.listdir(sub) if f.endswith(".safetensors")] if os.path.isdir(sub) else []
    if any(f.count(".") == 1 for f in files):
        return None
    for variant in ("fp16", "bf16"):
        if any(f".{variant}." in f for f in files):
            return variant
    if os.path.isdir(sub) and any(f.endswith((".bin", ".ckpt", ".pt", ".pth")) for f in os.listdir(sub)):
        raise InputError(
            "model",
            f"'{component}' in {folder} has only pickle weights (.bin/.ckpt), which can run code when loaded.",
            "convert the folder to safetensors (diffusers: `pipe.save_pretrained(dir, safe_serialization=True)`).",
        )
    if not files:
        raise InputError("model", f"the diffusers folder {folder} has no weights for '{component}'.",
                         "re-download the model folder; each component needs its .safetensors file.")
    return None


def load_component(path: str, cls, subfolder: str, dtype: torch.dtype):
    """One model of a diffusers folder, offline, safetensors only."""
    return cls.from_pretrained(path, subfolder=subfolder, variant=weights_variant(path, subfolder),
                               torch_dtype=dtype, local_files_only=True, use_safetensors=True)


def load_tokenizer(path: str, cls, subfolder: str):
    return cls.from_pretrained(path, subfolder=subfolder, local_files_only=True)


def with_prediction(config: dict[str, Any], prediction: str) -> dict[str, Any]:
    """A scheduler config with the user's prediction type ("auto": the config's own)."""
    return config if prediction == "auto" else dict(config, prediction_type=prediction)


def scheduler_config(path: str, prediction: str = "auto") -> dict[str, Any]:
    with open(os.path.join(path, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
        return with_prediction(json.load(f), prediction)


def load_llm_folder(family: Family, path: str, dtype: torch.dtype, transformer_class, text_class,
                    vae_class) -> LoadedModel:
    """A diffusers folder of a family with one LLM text encoder: tokenizer/, text_encoder/, transformer/, vae/."""
    from transformers import AutoTokenizer

    tokenizer = with_chat_template(load_tokenizer(path, AutoTokenizer, "tokenizer"), os.path.join(path, "tokenizer"))
    part = TextPart(tokenizer, load_component(path, text_class, "text_encoder", dtype))
    return assemble(family, load_component(path, transformer_class, "transformer", dtype), (part,),
                    load_component(path, vae_class, "vae", dtype), scheduler_config(path), path)


def assemble(family: Family, denoiser, parts: tuple[TextPart, ...], vae, scheduler: dict[str, Any],
             source: str) -> LoadedModel:
    loaded = Denoiser(family, denoiser, source)
    channels = family.latent_channels_of(loaded)
    if channels != family.latent_channels:
        raise InputError("model", f"'{os.path.basename(source)}' is a {family.display_name} model whose denoiser takes "
                         f"{channels} input channels, not {family.latent_channels} (or "
                         f"{family.inpainting_input_channels} for an inpainting model): a specialised model (e.g. "
                         "InstructPix2Pix's 8), which this version of the pack does not run.",
                         "load a text-to-image model of the family.")
    # eval() only: requires_grad_(False) would change CPU numerics (about 7e-7 on SD2's linear projections,
    # measured), so the parameters keep the flag they have in a diffusers pipeline.
    for module in (denoiser, vae, *(part.module for part in parts)):
        module.eval()
    return LoadedModel(
        denoiser=Denoiser(family, denoiser, source, *family.vae_latent_scaling(vae)),
        text_encoder=TextEncoder(family, parts, source),
        vae=Vae(family, vae, source),
        scheduler=spec_from_config(scheduler),
    )

