"""Masks, as core ComfyUI passes them (``MASK`` [B, H, W]; ``LATENT["noise_mask"]`` [B, 1, H, W] from Set Latent
Noise Mask, 1 = repaint), made into what the diffusers inpaint pipelines use: the mask processor's resize to the
image size (nearest), its binarisation at 0.5, then the resize to the latent size (``prepare_mask_latents``; nearest,
bilinear for Flux.2).
A soft (blurred) mask is therefore binarised, as the pipelines do.

During the run, the pipelines keep the area outside the mask on the original image: after each step the latents
become (1 - mask) x the image latents re-noised to the next timestep (clean after the last) + mask x the latents
(``blend``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError

MASKED_IMAGE = "diffusers_stages_masked_image"  # LATENT key: the masked image's raw latents (Inpaint Conditioning)


def latent_mask(noise_mask: torch.Tensor, latent_shape: torch.Size, factor: int, mode: str = "nearest",
                input_name: str = "latent") -> torch.Tensor:
    """[B, 1, h, w] mask at the latent's size for a latent batch of ``latent_shape`` [B, C, h, w]: binarised, then
    resized in the family's ``mode`` (nearest: 0/1; Flux.2's bilinear: soft at the edges)."""
    mask = image_mask(noise_mask, latent_shape, factor, input_name)
    return F.interpolate(mask, size=tuple(latent_shape[2:]), mode=mode)


def image_mask(noise_mask: torch.Tensor, latent_shape: torch.Size, factor: int,
               input_name: str = "latent") -> torch.Tensor:
    """[B, 1, H, W] 0/1 mask at the image size of a latent batch of ``latent_shape`` (``factor`` pixels per latent
    cell), one per latent: the pipelines' mask processor (resize, binarise)."""
    mask = as_batch(noise_mask.detach().float().cpu())
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise InputError(input_name, f"its noise mask has the shape {tuple(noise_mask.shape)}, not [B, H, W] or "
                         "[B, 1, H, W].", "make the mask with core's mask nodes (Load Image's mask, Set Latent Noise "
                         "Mask).")
    batch, _, height, width = latent_shape
    if mask.shape[0] not in (1, batch):
        raise InputError(input_name, f"its noise mask holds {mask.shape[0]} masks for a batch of {batch} latents.",
                         "give one mask, or one per latent.")
    mask = binarised_at(mask, (height * factor, width * factor))
    return mask.repeat(batch // mask.shape[0], 1, 1, 1)


def renoised(scheduler, image_latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The image latents noised to ``timestep`` (one per latent, or one for all), as the img2img and inpaint
    pipelines noise them: flow matching's scale_noise, else the scheduler's add_noise."""
    if hasattr(scheduler, "scale_noise"):  # flow matching
        return scheduler.scale_noise(image_latents, timestep, noise)
    return scheduler.add_noise(image_latents, noise, timestep)


def blend(mask: torch.Tensor, latents: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
    return (1 - mask) * image_latents + mask * latents


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """A MASK [H, W] or [B, H, W] as [B, 1, H, W] (other shapes as they are)."""
    return mask[None, None] if mask.ndim == 2 else mask[:, None] if mask.ndim == 3 else mask


def resized_to(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] mask at ``size``, resized as the pipelines' mask processor resizes (nearest)."""
    mask = as_batch(mask.detach().float())
    return mask if tuple(mask.shape[-2:]) == tuple(size) else F.interpolate(mask, size=size)


def binarised_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] 0/1 mask at ``size``: the pipelines' mask processor (nearest resize, then >= 0.5)."""
    mask = resized_to(mask, size)
    return (mask >= 0.5).to(mask.dtype)


def masked_pixels(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] with the masked area set to 0.5 (0 once normalised to [-1, 1]), as the inpaint
    pipelines build ``masked_image = image * (mask < 0.5)`` from their [-1, 1] image."""
    keep = binarised_at(mask.to(pixels.device), tuple(pixels.shape[1:3])) < 0.5  # [B, 1, H, W]
    return torch.where(keep.movedim(1, -1), pixels, torch.full_like(pixels, 0.5))
