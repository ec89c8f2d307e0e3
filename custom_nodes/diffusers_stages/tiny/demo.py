"""The offline demo: tiny models in a ComfyUI-style models folder and an input picture, built locally."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


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
