"""Headless stand-ins for the few core ComfyUI nodes our workflows use (Load Image, Save Image, Preview Image).

Same ids, inputs and outputs as core, our own code. Save Image writes the ``prompt`` and
``workflow`` PNG text chunks as ComfyUI does, so its files drag back into ComfyUI.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from ..engine.errors import InputError
from ..engine.weights import safe_join
from .files import atomic_file


class Folders:
    """Where headless runs read inputs and write outputs (set by the runner)."""

    input = os.path.join(os.getcwd(), "input")
    output = os.path.join(os.getcwd(), "output")


def _image_files() -> list[str]:
    if not os.path.isdir(Folders.input):
        return []
    suffixes = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
    return sorted(f for f in os.listdir(Folders.input) if f.lower().endswith(suffixes))


class LoadImage:
    DISPLAY_NAME = "Load Image"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("IMAGE", "MASK")
    FUNCTION = "load"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_image_files(), {"image_upload": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        try:
            path = safe_join(Folders.input, str(image), "image", "input")
        except InputError as error:
            return f"Load Image › image: {error.problem}"
        if not os.path.isfile(path):
            return f"Load Image › image: '{image}' is not in the input folder {Folders.input}."
        return True

    def load(self, image):
        path = safe_join(Folders.input, image, "image", "input")
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                rgb = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
                if "A" in img.getbands():
                    alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
                    mask = 1.0 - torch.from_numpy(alpha)[None]
                else:
                    mask = torch.zeros((1, 64, 64), dtype=torch.float32)
        except (OSError, SyntaxError, ValueError) as error:  # PIL: not an image, empty, truncated, broken chunks
            raise InputError("image", f"'{image}' cannot be read as an image ({error}).",
                             "use a PNG, JPEG or WebP file that opens in an image viewer.") from error
        return (rgb, mask)


def _next_counter(folder: str, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"_(\d+)_\.png$")
    numbers = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))] if os.path.isdir(folder) else []
    return max(numbers, default=0) + 1


def save_images(images, folder: str, prefix: str, prompt=None, extra_pnginfo=None) -> list[dict[str, str]]:
    subfolder, _, name = prefix.replace("\\", "/").rpartition("/")
    target = safe_join(folder, subfolder, "filename_prefix", "output") if subfolder else folder
    os.makedirs(target, exist_ok=True)
    counter = _next_counter(target, name)
    saved = []
    for image in images:
        pixels = np.clip(image.cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
        info = PngInfo()
        if prompt is not None:
            info.add_text("prompt", json.dumps(prompt))
        for key, value in (extra_pnginfo or {}).items():
            info.add_text(key, json.dumps(value))
        filename = f"{name}_{counter:05}_.png"
        with atomic_file(os.path.join(target, filename)) as partial:  # a kill never leaves half a PNG
            Image.fromarray(pixels).save(partial, format="PNG", pnginfo=info, compress_level=4)
        saved.append({"filename": filename, "subfolder": subfolder, "type": "output"})
        counter += 1
    return saved


class SaveImage:
    DISPLAY_NAME = "Save Image"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        return {"ui": {"images": save_images(images, Folders.output, filename_prefix, prompt, extra_pnginfo)}}


class PreviewImage:
    DISPLAY_NAME = "Preview Image"
    RETURN_TYPES = ()
    FUNCTION = "preview"
    OUTPUT_NODE = True
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def preview(self, images, prompt=None, extra_pnginfo=None):
        folder = os.path.join(Folders.output, "previews")
        return {"ui": {"images": save_images(images, folder, "preview", prompt, extra_pnginfo)}}


CORE_NODE_CLASSES = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage}
