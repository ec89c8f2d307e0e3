"""The offline demo: tiny models in a ComfyUI-style models folder and an input picture, built locally."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# shipped workflow (by its name's first word) -> the tiny model of its family
TINY_MODELS = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl", "sd35": "tiny-sd3", "flux": "tiny-flux",
               "zimage": "tiny-z-image", "qwenimage": "tiny-qwen-image", "flux2": "tiny-flux2-klein"}
TINY_MODELS_BY_WORKFLOW = {"flux2_dev_txt2img": "tiny-flux2-dev",  # a family with several models
                           "sd15_inpaint": "tiny-sd15-inpainting"}
# workflows made of component loaders (split files): the tiny file for each loader input, by node type
TINY_FILES = {
    "sd15": {"DS_LoadControlNet": {"controlnet_name": "tiny-sd1-controlnet"},
             "DS_LoadLoRA": {"lora_name": "tiny-sd15-lora.safetensors"}},
    "sd35": {"DS_LoadDiffusionModel": {"model_name": "tiny-sd3.5-medium.safetensors"},
             "DS_LoadTextEncoders": {"clip_l": "tiny-sd3-clip_l.safetensors", "clip_g": "tiny-sd3-clip_g.safetensors",
                                     "t5": "tiny-sd3-t5xxl.safetensors"}},
    "flux": {"DS_LoadDiffusionModel": {"model_name": "tiny-flux1-dev.safetensors"},
             "DS_LoadTextEncoders": {"clip_l": "tiny-flux-clip_l.safetensors", "t5": "tiny-flux-t5xxl.safetensors"},
             "DS_LoadVAE": {"vae_name": "tiny-flux-ae.safetensors"}},
    "zimage": {"DS_LoadDiffusionModel": {"model_name": "tiny-z-image-turbo.safetensors"},
               "DS_LoadTextEncoders": {"llm": "tiny-qwen-3.safetensors"},
               "DS_LoadVAE": {"vae_name": "tiny-z-image-ae.safetensors"}},
    "qwenimage": {"DS_LoadDiffusionModel": {"model_name": "tiny-qwen-image.safetensors"},
                  "DS_LoadTextEncoders": {"llm": "tiny-qwen-2.5-vl.safetensors"},
                  "DS_LoadVAE": {"vae_name": "tiny-qwen-image-vae.safetensors"}},
    "flux2": {"DS_LoadDiffusionModel": {"model_name": "tiny-flux-2-klein.safetensors"},
              "DS_LoadTextEncoders": {"llm": "tiny-flux2-qwen-3.safetensors"},
              "DS_LoadVAE": {"vae_name": "tiny-flux2-vae.safetensors"}},
}
# a workflow's own tiny files where its family's do not fit (Flux.1 Fill is its own transformer)
TINY_FILES_BY_WORKFLOW = {
    "flux_fill_inpaint": {"DS_LoadDiffusionModel": {"model_name": "tiny-flux1-fill-dev.safetensors"}},
    "qwenimage_edit_2511": {"DS_LoadDiffusionModel": {"model_name": "tiny-qwen-image-edit-2511.safetensors"}}}
# loaders found by their title in a shipped workflow (a second model): input and tiny model
TINY_BY_TITLE = {"Load Refiner": ("model", "diffusers/tiny-sdxl-refiner")}
TITLES = {"DS_LoadDiffusionModel": "Load Diffusion Model (Diffusers)", "DS_LoadTextEncoders": "Load Text Encoders "
          "(Diffusers)", "DS_LoadVAE": "Load VAE (Diffusers)", "DS_LoadControlNet": "Load ControlNet (Diffusers)",
          "DS_LoadLoRA": "Load LoRA (Diffusers)"}


def tiny_overrides(workflow_path: str, size: int, steps: int | None = None) -> list[str]:
    """--set overrides that run a shipped workflow on the tiny model of its family, at ``size`` px."""
    import json

    with open(workflow_path, encoding="utf-8") as f:
        nodes = json.load(f)["nodes"]
    types = {node["type"] for node in nodes}
    family = os.path.basename(workflow_path).split("_")[0]
    tiny = TINY_MODELS_BY_WORKFLOW.get(os.path.splitext(os.path.basename(workflow_path))[0], TINY_MODELS[family])
    sets = [f"Load Diffusers Model.model=diffusers/{tiny}"] if "DS_LoadModel" in types else []
    name = os.path.splitext(os.path.basename(workflow_path))[0]
    for node_type, values in {**TINY_FILES.get(family, {}), **TINY_FILES_BY_WORKFLOW.get(name, {})}.items():
        if node_type in types:
            sets += [f"{TITLES[node_type]}.{name}={value}" for name, value in values.items()]
    sets += [f"{node['title']}.{TINY_BY_TITLE[node['title']][0]}={TINY_BY_TITLE[node['title']][1]}" for node in nodes
             if node.get("title") in TINY_BY_TITLE]
    if steps:  # every Denoise the same steps (a base -> refiner hand-off splits one schedule)
        sets += [f"{node.get('title') or 'Denoise (Diffusers)'}.steps={steps}" for node in nodes
                 if node["type"] == "DS_Denoise"]
    if "DS_EmptyLatent" in types:
        sets += [f"Empty Latent (Diffusers).width={size}", f"Empty Latent (Diffusers).height={size}"]
    if "LoadImage" in types:  # a picture with a transparent area (Load Image's mask) where the workflow inpaints
        picture = "demo_inpaint.png" if "DS_InpaintConditioning" in types else "demo_input.png"
        sets.append(f"Load Image.image={picture}")
    return sets


def demo_plan(workflow_path: str) -> tuple[list[str], int]:
    """(--set overrides, runs) of a shipped workflow in the demo, at 256 px (the tiny U-Nets' attention at 512 px
    and more costs minutes on a CPU for nothing but noise): the SD1.5 ones run twice, as a batch; SD1.5
    text-to-image from the single-file checkpoint, as ComfyUI users have their models."""
    name = os.path.splitext(os.path.basename(workflow_path))[0]
    repeat = 2 if name.startswith("sd15") else 1
    sets = tiny_overrides(workflow_path, 256, steps=None if repeat == 2 else 8)
    if name == "sd15_txt2img":
        sets.append("Load Diffusers Model.model=checkpoints/tiny-sd15.safetensors")
    return sets, repeat


def prepare_demo(folder: str) -> tuple[str, str, str]:
    """(models, input, output) folders under ``folder``; models are built once (a few seconds)."""
    models, inputs, output = (os.path.abspath(os.path.join(folder, name)) for name in ("models", "input", "output"))
    newest = ("loras/tiny-sdxl-lora.safetensors", "checkpoints/tiny-sdxl-refiner.safetensors",
              "diffusion_models/tiny-z-image-turbo.safetensors", "loras/tiny-qwen-image-lora-kohya.safetensors",
              "loras/tiny-flux2-lora-ai-toolkit.safetensors", "vae/tiny-qwen-image-vae.safetensors",
              "diffusion_models/tiny-flux2-dev.safetensors", "controlnet/tiny-zimage-controlnet-2-0.safetensors",
              "text_encoders/tiny-mistral-3-small-flux2.safetensors",
              "diffusion_models/tiny-flux1-fill-dev.safetensors", "diffusers/tiny-sd15-inpainting/model_index.json",
              "diffusion_models/tiny-qwen-image-edit-2511.safetensors")
    if not all(os.path.isfile(os.path.join(models, name)) for name in newest):  # built by an older version
        from .models import write_models

        print(f"Building tiny random-weight models in {models} (no download) …")
        write_models(models)
    os.makedirs(inputs, exist_ok=True)
    picture = os.path.join(inputs, "demo_input.png")
    if not os.path.isfile(picture):
        y, x = np.mgrid[0:256, 0:256] / 255.0
        rgb = np.stack([x, y, 1.0 - (x + y) / 2], axis=-1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(picture)
    masked = os.path.join(inputs, "demo_inpaint.png")
    if not os.path.isfile(masked):  # the same picture with a transparent disc (Load Image's mask: repaint it)
        with Image.open(picture) as rgb:
            y, x = np.mgrid[0:256, 0:256]
            alpha = np.where((y - 150) ** 2 + (x - 110) ** 2 < 60 ** 2, 0, 255).astype(np.uint8)
            Image.fromarray(np.dstack([np.asarray(rgb), alpha]), "RGBA").save(masked)
    return models, inputs, output
