"""Original (LDM/SGM) names of diffusers U-Net and ControlNet tensors.

Used to read a diffusers-layout ControlNet file's architecture with the same shape rules as
original-layout files, and by the tiny-model exporters that write original-layout test files.
"""

from __future__ import annotations

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _rename_resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def unet_key_to_ldm(key: str, layers_per_block: int, up_has_attention: tuple[bool, ...] = ()) -> str | None:
    """The original-layout name of a diffusers U-Net (or ControlNet encoder) tensor; None for weightless parts."""
    lpb = layers_per_block
    parts = key.split(".")
    if parts[0] == "add_time_proj":
        return None  # sinusoidal, no weights
    if parts[0] == "add_embedding":  # SDXL text-time embedding
        new = f"label_emb.0.{0 if parts[1] == 'linear_1' else 2}.{parts[2]}"
    elif parts[0] == "time_embedding":
        new = f"time_embed.{0 if parts[1] == 'linear_1' else 2}.{parts[2]}"
    elif parts[0] == "conv_in":
        new = f"input_blocks.0.0.{parts[1]}"
    elif parts[0] == "conv_norm_out":
        new = f"out.0.{parts[1]}"
    elif parts[0] == "conv_out":
        new = f"out.2.{parts[1]}"
    elif parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            new = f"input_blocks.{1 + i * (lpb + 1) + j}.0.{_rename_resnet(rest)}"
        elif kind == "attentions":
            new = f"input_blocks.{1 + i * (lpb + 1) + j}.1.{rest}"
        else:  # downsamplers.0.conv.*
            new = f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op.{rest.partition('.')[2]}"
    elif parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            new = f"middle_block.{2 * j}.{_rename_resnet(rest)}"
        else:
            new = f"middle_block.1.{rest}"
    elif parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            new = f"output_blocks.{i * (lpb + 1) + j}.0.{_rename_resnet(rest)}"
        elif kind == "attentions":
            new = f"output_blocks.{i * (lpb + 1) + j}.1.{rest}"
        else:  # upsamplers.0.conv.*
            position = 2 if up_has_attention[i] else 1
            new = f"output_blocks.{i * (lpb + 1) + lpb}.{position}.conv.{rest.partition('.')[2]}"
    else:
        raise KeyError(f"unexpected U-Net key {key}")
    return new


def controlnet_key_to_ldm(key: str, layers_per_block: int, hint_blocks: int) -> str | None:
    """The original ControlNet name (no ``control_model.``) of a diffusers ControlNetModel tensor."""
    parts = key.split(".")
    if parts[0] == "controlnet_cond_embedding":
        index = {"conv_in": 0, "conv_out": 2 * (hint_blocks + 1)}.get(parts[1])
        index = 2 * (int(parts[2]) + 1) if index is None else index
        return f"input_hint_block.{index}.{parts[-1]}"
    if parts[0] == "controlnet_down_blocks":
        return f"zero_convs.{parts[1]}.0.{parts[2]}"
    if parts[0] == "controlnet_mid_block":
        return f"middle_block_out.0.{parts[1]}"
    return unet_key_to_ldm(key, layers_per_block)
