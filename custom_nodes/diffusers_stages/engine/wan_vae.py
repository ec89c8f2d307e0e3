"""The Wan 2.1 VAE layout (Qwen-Image's VAE, ``qwen_image_vae.safetensors``): its original key names and the
architecture read from the shapes.

The original (Wan) names nest residual blocks as ``residual.<n>`` sequences and keep the decoder's levels as one
flat ``upsamples`` list; diffusers' AutoencoderKLQwenImage names them ``norm1/conv1/…`` and groups the decoder into
``up_blocks.<level>.resnets / upsamplers``. The renaming here works for any widths, level count and residual blocks
per level (diffusers' own converter assumes the released 4 levels x 2 blocks; a test checks both agree there).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .errors import InputError

_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2": "conv1", "residual.3.gamma": "norm2.gamma",
             "residual.6": "conv2", "shortcut": "conv_shortcut"}
_SIDES = {"conv1": "quant_conv", "conv2": "post_quant_conv"}  # the top-level 1x1 convolutions


def is_wan_vae(keys) -> bool:
    return "decoder.middle.0.residual.0.gamma" in keys or "decoder.mid_block.resnets.0.norm1.gamma" in keys


def _block(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def to_diffusers_key(key: str, blocks: int) -> str:
    """An original key -> diffusers' (``blocks``: residual blocks per encoder level)."""
    side, _, rest = key.partition(".")
    if side in _SIDES:
        return _SIDES[side] + "." + rest
    if rest.startswith("conv1."):
        return f"{side}.conv_in.{rest[6:]}"
    if rest.startswith("head.0."):
        return f"{side}.norm_out.{rest[7:]}"
    if rest.startswith("head.2."):
        return f"{side}.conv_out.{rest[7:]}"
    if m := re.match(r"middle\.(\d)\.(.*)", rest):
        index, inner = int(m.group(1)), m.group(2)
        if index == 1:
            return f"{side}.mid_block.attentions.0.{inner}"
        return f"{side}.mid_block.resnets.{index // 2}.{_block(inner, _RESIDUAL)}"
    if m := re.match(r"downsamples\.(\d+)\.(.*)", rest):
        return f"{side}.down_blocks.{m.group(1)}.{_block(m.group(2), _RESIDUAL)}"
    if m := re.match(r"upsamples\.(\d+)\.(.*)", rest):
        level, position = divmod(int(m.group(1)), blocks + 2)  # blocks + 1 residual blocks, then the upsampler
        if position <= blocks:
            return f"{side}.up_blocks.{level}.resnets.{position}.{_block(m.group(2), _RESIDUAL)}"
        return f"{side}.up_blocks.{level}.upsamplers.0.{m.group(2)}"
    return key


def to_original_key(key: str, blocks: int) -> str:
    """The inverse of ``to_diffusers_key``."""
    inverse_residual = {new: old for old, new in _RESIDUAL.items()}
    side, _, rest = key.partition(".")
    if side in _SIDES.values():
        return {v: k for k, v in _SIDES.items()}[side] + "." + rest
    for new, old in (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2.")):
        if rest.startswith(new):
            return f"{side}.{old}{rest[len(new):]}"
    if m := re.match(r"mid_block\.(attentions|resnets)\.(\d)\.(.*)", rest):
        if m.group(1) == "attentions":
            return f"{side}.middle.1.{m.group(3)}"
        return f"{side}.middle.{2 * int(m.group(2))}.{_block(m.group(3), inverse_residual)}"
    if m := re.match(r"down_blocks\.(\d+)\.(.*)", rest):
        return f"{side}.downsamples.{m.group(1)}.{_block(m.group(2), inverse_residual)}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        index = int(m.group(1)) * (blocks + 2) + int(m.group(2))
        return f"{side}.upsamples.{index}.{_block(m.group(3), inverse_residual)}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest):
        return f"{side}.upsamples.{int(m.group(1)) * (blocks + 2) + blocks + 1}.{m.group(2)}"
    return key


def _blocks_per_level(keys, down: str) -> int:
    """Residual blocks per encoder level: the index of the first resampler (or all blocks, for one level)."""
    indices = sorted({int(m.group(1)) for k in keys if (m := re.match(rf"encoder\.{down}\.(\d+)\.", k))})
    resamplers = [i for i in indices if f"encoder.{down}.{i}.resample.1.weight" in keys]
    return resamplers[0] if resamplers else len(indices)


def wan_vae_state(tensors: dict[str, torch.Tensor], input_name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(AutoencoderKLQwenImage config, its state dict) from a Wan-layout VAE in the original or diffusers names.
    latents_mean / latents_std leave no tensor: diffusers' defaults, the released Wan 2.1 / Qwen-Image values."""
    original = "decoder.middle.0.residual.0.gamma" in tensors
    blocks = _blocks_per_level(tensors, "downsamples" if original else "down_blocks")
    state = {to_diffusers_key(k, blocks): v for k, v in tensors.items()} if original else dict(tensors)
    keys = set(state)
    down = sorted({int(m.group(1)) for k in keys if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    resamplers = [i for i in down if f"encoder.down_blocks.{i}.resample.1.weight" in keys]
    base = state["encoder.conv_in.weight"].shape[0]
    ends = [i - 1 for i in resamplers] + [down[-1]]  # each level's last residual block
    try:
        widths = [state[f"encoder.down_blocks.{i}.conv2.weight"].shape[0] for i in ends]
    except KeyError as exc:
        raise InputError(input_name, "the file is laid out as a Wan / Qwen-Image VAE but its encoder blocks could "
                         f"not be read ({exc}).", "use the original release file (qwen_image_vae.safetensors)."
                         ) from exc
    config = {"base_dim": base, "z_dim": state["post_quant_conv.weight"].shape[0],
              "dim_mult": [w // base for w in widths], "num_res_blocks": blocks, "attn_scales": [],
              "temperal_downsample": [f"encoder.down_blocks.{i}.time_conv.weight" in keys for i in resamplers],
              "input_channels": state["encoder.conv_in.weight"].shape[1]}
    return config, state
