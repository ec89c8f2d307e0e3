"""A VAE on its own (ComfyUI's models/vae): single safetensors files in the original (LDM) or diffusers layout.

The architecture is read from the tensors' names and shapes (any family: SD1/2, SDXL, SD3, Flux.1, Flux.2; Qwen-Image's
Wan-layout VAE through ``wan_vae``).
A VAE alone has no family: decoding checks that the latent has the channels the VAE decodes, and
the denoiser keeps its own latent scaling, so swapping the VAE only changes how latents become pixels.
"""

from __future__ import annotations

import re

import torch

from .components import Vae
from .errors import InputError
from .wan_vae import is_wan_vae, wan_vae_state
from .weights import empty, fill, open_safetensors, read_tensors

_BASE = {"act_fn": "silu", "norm_num_groups": 32, "sample_size": 512}


def norm_groups(channels: list[int]) -> int:
    """32 groups as every released SD/SDXL/SD3/Flux model has; fewer only for narrow (test) models whose widths 32
    does not divide."""
    groups = 32
    while any(c % groups for c in channels):
        groups //= 2
    return groups


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def vae_config(shapes: dict[str, tuple[int, ...]], base: dict | None = None,
               input_name: str = "vae_name") -> tuple[dict, str, str]:
    """(AutoencoderKL config, layout 'ldm'|'diffusers', key prefix) read from tensor shapes: a VAE file, or the
    ``first_stage_model.`` part of a checkpoint. Values the tensors cannot tell (scaling factor, …) come from
    ``base``."""
    for prefix in ("", "first_stage_model.", "vae."):
        if f"{prefix}encoder.down.0.block.0.conv1.weight" in shapes:
            layout, down, block, conv2 = "ldm", "encoder.down.{}", "block", "conv2"
            break
        if f"{prefix}encoder.down_blocks.0.resnets.0.conv1.weight" in shapes:
            layout, down, block, conv2 = "diffusers", "encoder.down_blocks.{}", "resnets", "conv2"
            break
    else:
        raise InputError(input_name, "the file is not a VAE (no AutoencoderKL encoder/decoder tensors).",
                         "choose a VAE file (e.g. sdxl_vae.safetensors, ae.safetensors) from models/vae.")
    levels = _indices(shapes, re.escape(prefix + down.split("{}")[0]) + r"(\d+)\.")
    channels = [shapes[f"{prefix}{down.format(i)}.{block}.0.{conv2}.weight"][0] for i in levels]
    layers = _indices(shapes, re.escape(f"{prefix}{down.format(0)}.{block}.") + r"(\d+)\.")
    patched = f"{prefix}bn.running_mean" in shapes  # Flux.2's VAE: its latent normalised in 2x2 patches
    quant = {name: f"{prefix}{name}.weight" in shapes or f"{prefix}{side}.{name}.weight" in shapes
             for name, side in (("quant_conv", "encoder"), ("post_quant_conv", "decoder"))}
    config = dict(base or _BASE, block_out_channels=channels, layers_per_block=len(layers),
                  in_channels=shapes[f"{prefix}encoder.conv_in.weight"][1],
                  out_channels=shapes[f"{prefix}decoder.conv_out.weight"][0],
                  latent_channels=shapes[f"{prefix}encoder.conv_out.weight"][0] // 2,
                  down_block_types=["DownEncoderBlock2D"] * len(channels),
                  up_block_types=["UpDecoderBlock2D"] * len(channels), norm_num_groups=norm_groups(channels),
                  use_quant_conv=quant["quant_conv"], use_post_quant_conv=quant["post_quant_conv"])
    if patched:  # AutoencoderKLFlux2: the decoder may be wider than the encoder; BFL's patch and batch-norm eps
        decoder_in = shapes[f"{prefix}decoder.conv_in.weight"][0]
        if decoder_in != channels[-1]:
            config["decoder_block_out_channels"] = [c * decoder_in // channels[-1] for c in channels]
        config.update(patch_size=(2, 2), batch_norm_eps=1e-4, batch_norm_momentum=0.1)
        config.pop("shift_factor", None), config.pop("scaling_factor", None)
    return config, layout, prefix


def load_vae_file(path: str, dtype: torch.dtype) -> Vae:
    shapes = open_safetensors(path, "vae_name")
    if is_wan_vae(shapes):  # Qwen-Image's (the Wan 2.1 VAE layout)
        from diffusers import AutoencoderKLQwenImage

        config, state = wan_vae_state(read_tensors(path), "vae_name")
        return Vae(None, fill(empty(AutoencoderKLQwenImage, config), state, dtype, "VAE", "vae_name"), path)
    _, _, prefix = vae_config(shapes)
    return vae_from_tensors(read_tensors(path, prefix), None, dtype, path, "vae_name")


# ---- VAE ----------------------------------------------------------------------------------------------
def vae_from_tensors(tensors: dict[str, torch.Tensor], family, dtype: torch.dtype, source: str,
                     input_name: str) -> Vae:
    """A VAE from tensors in the original (LDM) or diffusers layout, prefix already removed."""
    from diffusers import AutoencoderKL, AutoencoderKLFlux2
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config, layout, _ = vae_config({k: tuple(v.shape) for k, v in tensors.items()}, input_name=input_name)
    patched = "batch_norm_eps" in config
    if family is not None and not patched:
        config["scaling_factor"], config["shift_factor"] = family.latent_scaling
    if layout == "ldm":
        # BFL's Flux.2 VAE keeps its quant convs inside encoder / decoder
        tensors = {k.removeprefix("encoder.").removeprefix("decoder.") if "quant_conv." in k else k: v
                   for k, v in tensors.items()}
        state = convert_ldm_vae_checkpoint(tensors, config)
        state.update({k: v for k, v in tensors.items() if k in ("bn.running_mean", "bn.running_var")})
    else:
        state = tensors
    if patched:  # a buffer BFL's file need not carry (eval-mode batch norm never reads it)
        state.setdefault("bn.num_batches_tracked", torch.tensor(0))
    vae = fill(empty(AutoencoderKLFlux2 if patched else AutoencoderKL, config), state, dtype, "VAE", input_name)
    return Vae(family, vae, source)
