"""Headless stand-ins for the few core ComfyUI nodes our workflows use (Load Image, Save Image, Preview Image, Pad
Image for Outpainting).

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


class ImagePadForOutpaint:
    """The picture on a larger mid-grey canvas and the MASK of what to paint (1 outside the picture); inside, along
    the padded sides, the mask fades in over ``feathering`` pixels as ((feathering - distance) / feathering)^2, when
    the picture is more than twice that in both directions (core's behaviour)."""

    DISPLAY_NAME = "Pad Image for Outpainting"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "pad"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        side = ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8})
        return {"required": {"image": ("IMAGE",), "left": side, "top": side, "right": side, "bottom": side,
                             "feathering": ("INT", {"default": 40, "min": 0, "max": 16384, "step": 1})}}

    def pad(self, image, left, top, right, bottom, feathering):
        batch, height, width, channels = image.shape
        canvas = torch.full((batch, height + top + bottom, width + left + right, channels), 0.5)
        canvas[:, top:top + height, left:left + width] = image
        mask = torch.ones(canvas.shape[1:3])
        inside = torch.zeros(height, width)
        if 0 < feathering and 2 * feathering < min(height, width):
            rows, columns = torch.arange(height)[:, None], torch.arange(width)[None, :]
            far_rows, far_columns = torch.full_like(rows, height), torch.full_like(columns, width)
            distance = torch.minimum(
                torch.minimum(rows if top else far_rows, height - rows if bottom else far_rows),
                torch.minimum(columns if left else far_columns, width - columns if right else far_columns))
            fade = (feathering - distance).double() / feathering  # in double precision, rounded once to float
            inside = torch.where(distance < feathering, fade * fade, inside.double()).float()
        mask[top:top + height, left:left + width] = inside
        return canvas, mask[None]


CORE_NODE_CLASSES = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage,
                     "ImagePadForOutpaint": ImagePadForOutpaint}
