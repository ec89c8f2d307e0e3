"""Models as separate files, as ComfyUI users keep them: a denoiser in ``models/diffusion_models``, text encoders
in ``models/text_encoders``, a VAE in ``models/vae``; and the same components bundled in one checkpoint.

Each component is built from the tensors' shapes (nothing is downloaded), on the meta device first so
a 12B transformer is not allocated twice, then filled with the file's tensors.
"""

from __future__ import annotations

import os

from .components import Denoiser
from .errors import InputError
from .weights import WEIGHT_SUFFIXES, open_safetensors


# ---- denoisers ----------------------------------------------------------------------------------------
def load_denoiser_file(path: str, dtype, input_name: str = "model_name") -> tuple[Denoiser, dict]:
    """(Denoiser, scheduler config) from a diffusion model file of any supported family. ``dtype``: a dtype, or a
    function of the family (weights.DtypeChoice)."""
    from .families import all_families
    from .loading import supported_families
    from .weights import resolve_dtype

    shapes = open_safetensors(path, input_name, WEIGHT_SUFFIXES)
    family = next((f for f in all_families() if f.claims_denoiser(shapes)), None)
    if path.lower().endswith(".gguf") and (family is None or family.dit_layout is None):
        from .gguf_files import architecture

        arch = architecture(path, input_name)
        what = (f"a GGUF of the '{arch}' architecture, not the diffusion model of a supported family" if family is None
                else f"a GGUF {family.display_name} U-Net, which this version reads only as safetensors")
        raise InputError(input_name, f"'{os.path.basename(path)}' is {what} (GGUF is read for the DiT families: "
                         "Flux.1, Flux.2, SD3, Qwen-Image, Z-Image).",
                         "choose a GGUF of one of those, or the model's safetensors release.")
    if family is None:
        raise InputError(input_name, f"'{os.path.basename(path)}' is not the diffusion model (U-Net/DiT) of a "
                         f"supported family (supported: {supported_families()}).",
                         "choose the denoiser file (e.g. flux1-dev.safetensors, sd3.5_medium.safetensors); "
                         "text encoders go in Load Text Encoders, VAEs in Load VAE, LoRAs and ControlNets have "
                         "loaders of their own.")
    module, scheduler = family.denoiser_from_file(path, shapes, resolve_dtype(dtype, family), input_name)
    scale, shift = family.latent_scaling
    return Denoiser(family, module, path, latent_scale=scale, latent_shift=shift), scheduler


