"""VAE encode/decode between ComfyUI IMAGE ([B,H,W,C], 0..1) and LATENT (raw VAE space; for a patched VAE, Flux.2's,
the patched latent normalised by the VAE's batch-norm statistics, as core ComfyUI keeps Flux.2 latents)."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from .components import Vae
from .errors import InputError, require_finite

log = logging.getLogger(__name__)


def _check_latent(vae: Vae, samples: torch.Tensor) -> None:
    if samples.ndim != 4 or samples.shape[1] != vae.latent_channels:
        shape = "x".join(str(s) for s in samples.shape)
        raise InputError("samples", f"the latent has shape {shape}, but this VAE decodes {vae.latent_channels}-channel "
                         "latents.", "decode with the VAE of the model that made the latent.")


@contextmanager
def _upcast_if_needed(module):
    """As the diffusers pipelines: a float16 VAE whose config says ``force_upcast`` (SDXL's, which overflows in
    fp16) runs in float32 for the call and goes back to float16 after (an exact round trip)."""
    upcast = module.dtype == torch.float16 and getattr(module.config, "force_upcast", False)
    if upcast:
        module.to(torch.float32)
    try:
        yield module.dtype
    finally:
        if upcast:
            module.to(torch.float16)


def _normalised_patches(vae: Vae, z: torch.Tensor) -> torch.Tensor:
    """A patched VAE's latent -> LATENT, as Flux2Pipeline encodes: 2x2 patches into channels, then (x - mean) / std of
    the VAE's batch-norm statistics."""
    ph, pw = vae.patch
    b, c, h, w = z.shape
    z = z.view(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4).reshape(b, c * ph * pw, h // ph, w // pw)
    mean, std = _batch_norm_statistics(vae, z)
    return (z - mean) / std


def _latent_from_patches(vae: Vae, z: torch.Tensor) -> torch.Tensor:
    """The inverse, as Flux2Pipeline decodes: x * std + mean, then the channels back into 2x2 patches."""
    mean, std = _batch_norm_statistics(vae, z)
    z = z * std + mean
    ph, pw = vae.patch
    b, c, h, w = z.shape
    z = z.reshape(b, c // (ph * pw), ph, pw, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c // (ph * pw), h * ph, w * pw)


def _batch_norm_statistics(vae: Vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bn = vae.module.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + vae.module.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


def decode(vae: Vae, samples: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """Raw latents [B,C,h,w] -> IMAGE [B,H,W,3] in 0..1 on the CPU, as a diffusers pipeline postprocesses."""
    _check_latent(vae, samples)
    require_finite(samples, "samples", "the latent", "it was made by a run that overflowed; see the node that made it.")
    module = vae.module
    with _upcast_if_needed(module) as dtype:
        z = samples.to(device=module.device, dtype=dtype)
        if vae.patch != (1, 1):
            z = _latent_from_patches(vae, z)
        if vae.has_frames:  # one frame: [B, C, 1, h, w] in, the frame out
            z = z.unsqueeze(2)
        image = module.tiled_decode(z, return_dict=False)[0] if tiled else module.decode(z, return_dict=False)[0]
        if vae.has_frames:
            image = image[:, :, 0]
    require_finite(image, "vae", "the decoded image", "the VAE's weights hold NaN/inf (a damaged file), or an fp16 "
                   "VAE overflowed: load the VAE in bf16 or fp32.")
    image = (image / 2 + 0.5).clamp(0, 1)
    return image.float().movedim(1, -1).cpu()


def centre_cropped(images: torch.Tensor, factor: int) -> torch.Tensor:
    """An IMAGE [B, H, W, C] or MASK [B, H, W] centre-cropped to multiples of ``factor`` pixels (what VAE Encode
    encodes of a picture of another size)."""
    height, width = images.shape[1], images.shape[2]
    crop_h, crop_w = height // factor * factor, width // factor * factor
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[:, top:top + crop_h, left:left + crop_w]


def encode(vae: Vae, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] 0..1 -> raw latents (the mode of the posterior, as ComfyUI's VAE Encode gives)."""
    if pixels.ndim != 4 or pixels.shape[-1] not in (3, 4):
        raise InputError("pixels", f"expected an IMAGE [batch, height, width, 3], got shape {tuple(pixels.shape)}.",
                         "connect an IMAGE output (e.g. Load Image).")
    factor = vae.pixel_multiple
    height, width = pixels.shape[1], pixels.shape[2]
    if height < factor or width < factor:
        raise InputError("pixels", f"the image is {width}x{height}, smaller than the {factor} px this model's "
                         "pictures are made of.", f"use an image of at least {factor}x{factor} pixels.")
    if height % factor or width % factor:
        log.warning("VAE Encode: %dx%d is not a multiple of %d; centre-cropped to %dx%d.", width, height, factor,
                    width // factor * factor, height // factor * factor)
        pixels = centre_cropped(pixels, factor)
    module = vae.module
    with _upcast_if_needed(module) as dtype:
        x = pixels[..., :3].movedim(-1, 1).to(device=module.device, dtype=dtype) * 2.0 - 1.0
        if vae.has_frames:
            return module.encode(x.unsqueeze(2), return_dict=False)[0].mode()[:, :, 0].float().cpu()
        latent = module.encode(x, return_dict=False)[0].mode()
        if vae.patch != (1, 1):
            latent = _normalised_patches(vae, latent)
        return latent.float().cpu()
