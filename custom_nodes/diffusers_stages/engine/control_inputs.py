"""A control's input as the ControlNet pipelines prepare it: the control image resized and normalised, and (SD3,
Flux) its VAE latents. Shared by the family adapters and the ControlNet loop."""

from __future__ import annotations

import os

import torch

from .components import Control
from .errors import InputError


def control_pixels(control: Control, height: int, width: int, batch: int, normalize: bool) -> torch.Tensor:
    """The control image as the ControlNet pipelines' image processors prepare it: resized to the generated size
    (nearest, for tensors), in 0..1 (UNet ControlNets) or -1..1 (``normalize``: SD3/Flux, for the VAE), repeated
    over the batch; float32, on the CPU."""
    from diffusers.image_processor import VaeImageProcessor

    image = control.image
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError("image", f"the control image has shape {tuple(image.shape)}, not an IMAGE "
                         "[batch, height, width, channels].", "connect an IMAGE (e.g. from Load Image).")
    if image.shape[0] not in (1, batch):
        raise InputError("image", f"the control image batch has {image.shape[0]} images but the latent has {batch}.",
                         "give one control image, or one per latent.")
    image = image[..., :3].movedim(-1, 1).contiguous()
    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=normalize)
    image = processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    return image.repeat_interleave(batch, dim=0) if image.shape[0] == 1 else image


def control_latents(control: Control, pixels: torch.Tensor, shift: float | None = None,
                    sample_with: torch.Generator | None = None) -> torch.Tensor:
    """Control pixels (-1..1) as VAE latents, as the SD3/Flux/Qwen-Image ControlNet pipelines make them: the
    posterior sampled with ``sample_with`` (its mode without one), minus ``shift`` (default: the VAE's shift, per
    channel for VAEs that normalise each), times the scale, as the family scales its latents; one frame for
    video-style VAEs; in the ControlNet's device and dtype."""
    if control.vae is None:
        raise InputError("vae", f"the ControlNet '{os.path.basename(control.controlnet.source)}' takes the control "
                         "image as latents, so Apply ControlNet needs the VAE.",
                         "connect the model's VAE to Apply ControlNet's vae input.")
    vae, net = control.vae.module, control.controlnet.module
    frames = control.vae.has_frames
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    posterior = vae.encode(pixels.unsqueeze(2) if frames else pixels).latent_dist
    latents = posterior.mode() if sample_with is None else posterior.sample(sample_with)
    scale, default_shift = control.controlnet.family.vae_latent_scaling(vae)
    shift = default_shift if shift is None else shift

    def per_channel(value):
        if not isinstance(value, torch.Tensor):
            return value
        return value.to(latents.device).view(1, -1, *([1] * (latents.ndim - 2)))
    latents = (latents - per_channel(shift)) * per_channel(scale)
    return (latents[:, :, 0] if frames else latents).to(net.device, net.dtype)
