"""Titles and descriptions of the shipped example workflows (``workflows/<name>.json``), as the ComfyUI frontend's
template browser shows them. The frontend lists a pack's templates by file name and looks their title and
description up in the host's translations (``templateWorkflows.template.<pack folder>.<name>``, served from the
pack's ``locales/``); ``write_template_locale`` writes those keys under the folder name the pack was cloned as."""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

TEMPLATES = {
    "sd15_txt2img": ("SD1.5 text to image", "Stable Diffusion 1.5 from a single-file checkpoint, every stage of "
                     "StableDiffusionPipeline as a node."),
    "sd15_img2img": ("SD1.5 image to image", "Load Image, VAE Encode and Denoise at 0.6: the last 60% of the steps "
                     "on your picture, as StableDiffusionImg2ImgPipeline's strength."),
    "sd15_controlnet": ("SD1.5 with a Canny ControlNet", "A ControlNet steering SD1.5 from an edge picture, as "
                        "StableDiffusionControlNetPipeline."),
    "sd15_lora": ("SD1.5 with LCM-LoRA", "An LCM-LoRA on SD1.5: 4 steps with the LCM sampler, cfg 1.5."),
    "sd15_inpaint": ("SD1.5 inpainting", "Repaint the transparent area of a picture with the SD1.5 inpainting "
                     "model (mask and masked picture as input channels, as StableDiffusionInpaintPipeline)."),
    "sdxl_txt2img": ("SDXL text to image", "Stable Diffusion XL base with size conditioning."),
    "sdxl_refiner": ("SDXL base + refiner", "SDXL base for the first 80% of the noise, the refiner for the rest, "
                     "as diffusers' denoising_end / denoising_start hand-off."),
    "sdxl_outpaint": ("SDXL outpainting", "Widen a picture: Pad Image for Outpainting masks the new area, Denoise "
                      "paints it and keeps the picture, as StableDiffusionXLInpaintPipeline."),
    "sd35_txt2img": ("SD3.5 Medium with skip-layer guidance", "Stable Diffusion 3.5 Medium, CFG plus skip-layer "
                     "guidance as StableDiffusion3Pipeline runs it."),
    "flux_dev_txt2img": ("Flux.1 dev text to image", "Flux.1 dev from a diffusers folder, distilled guidance 3.5."),
    "flux_dev_split_files": ("Flux.1 dev from split files", "flux1-dev, clip_l, t5xxl and ae as ComfyUI keeps "
                             "them."),
    "flux_fill_inpaint": ("Flux.1 Fill inpainting", "flux1-fill-dev repaints the transparent area of a picture "
                          "(masked picture and mask as input channels, as FluxFillPipeline), Flux Guidance 30."),
    "flux_kontext_edit": ("Flux.1 Kontext editing", "Edit a picture with an instruction: Reference Image gives it to "
                          "Flux.1 Kontext as FluxKontextPipeline does."),
    "flux2_klein_split_files": ("Flux.2 klein from split files", "Flux.2 klein 4B (distilled: 4 steps), its Qwen3 "
                                "text encoder and the Flux.2 VAE as ComfyUI keeps them."),
    "flux2_dev_txt2img": ("Flux.2 dev text to image", "Flux.2 dev from a diffusers folder, Mistral 3 Small text "
                          "encoder, Flux Guidance 4."),
    "zimage_turbo_split_files": ("Z-Image Turbo from split files", "Z-Image Turbo, Qwen3 and ae as ComfyUI keeps "
                                 "them: 9 steps, no CFG."),
    "qwenimage_txt2img": ("Qwen-Image text to image", "Qwen-Image from a diffusers folder, true CFG as "
                          "QwenImagePipeline."),
    "qwenimage_split_files": ("Qwen-Image from split files", "qwen_image, qwen_2.5_vl_7b and qwen_image_vae as "
                              "ComfyUI keeps them."),
    "qwenimage_edit_2511": ("Qwen-Image-Edit-2511 editing", "Edit a picture with an instruction: Reference Image "
                            "gives it to the text encoder's vision tower and to the model, as "
                            "QwenImageEditPlusPipeline."),
}


def i18n_key(text: str) -> str:
    """The frontend's normalisation of a translation key part (dots would split the key)."""
    return text.replace(".", "_")


def write_template_locale(pack_dir: str) -> str | None:
    """Write ``<pack_dir>/locales/en/main.json`` with the templates' titles and descriptions under this clone's folder
    name (the host reads it when the frontend first asks for translations). Returns the path, or None when the
    folder cannot be written (the frontend then shows file names)."""
    module = i18n_key(os.path.basename(os.path.normpath(pack_dir)))
    content = {"templateWorkflows": {
        "template": {module: {i18n_key(name): title for name, (title, _) in TEMPLATES.items()}},
        "templateDescription": {module: {i18n_key(name): text for name, (_, text) in TEMPLATES.items()}}}}
    path = os.path.join(pack_dir, "locales", "en", "main.json")
    text = json.dumps(content, indent=1, ensure_ascii=False) + "\n"
    try:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as error:
        log.warning("Diffusers Stages: could not write template titles to %s (%s)", path, error)
        return None
    return path
