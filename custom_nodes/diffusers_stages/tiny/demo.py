"""The offline demo: tiny models in a ComfyUI-style models folder and an input picture, built locally."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# shipped workflow (by its name's first word) -> the tiny model of its family
TINY_MODELS = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl", "sd35": "tiny-sd3", "flux": "tiny-flux"}


def tiny_overrides(workflow_path: str, size: int, steps: int | None = None) -> list[str]:
    """--set overrides that run a shipped workflow on the tiny model of its family, at ``size`` px."""
    import json

    with open(workflow_path, encoding="utf-8") as f:
        types = {node["type"] for node in json.load(f)["nodes"]}
    family = os.path.basename(workflow_path).split("_")[0]
    sets = [f"Load Diffusers Model.model=diffusers/{TINY_MODELS[family]}"]
    if steps:
        sets.append(f"Denoise (Diffusers).steps={steps}")
    if "DS_EmptyLatent" in types:
        sets += [f"Empty Latent (Diffusers).width={size}", f"Empty Latent (Diffusers).height={size}"]
    if "LoadImage" in types:
        sets.append("Load Image.image=demo_input.png")
    return sets


def prepare_demo(folder: str) -> tuple[str, str, str]:
    """(models, input, output) folders under ``folder``; models are built once (a few seconds)."""
    models, inputs, output = (os.path.abspath(os.path.join(folder, name)) for name in ("models", "input", "output"))
    if not os.path.isfile(os.path.join(models, "checkpoints", "tiny-sd15.safetensors")):
        from .models import write_models

        print(f"Building tiny random-weight models in {models} (no download) …")
        write_models(models)
    os.makedirs(inputs, exist_ok=True)
    picture = os.path.join(inputs, "demo_input.png")
    if not os.path.isfile(picture):
        y, x = np.mgrid[0:256, 0:256] / 255.0
        rgb = np.stack([x, y, 1.0 - (x + y) / 2], axis=-1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(picture)
    return models, inputs, output
