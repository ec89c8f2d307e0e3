"""Single-file SD1.x/2.x and SDXL ControlNets: the architecture read from the tensors in original-layout terms,
either file layout converted to diffusers' ControlNetModel. Shared by the SD and SDXL adapters."""

from __future__ import annotations

import os

from ..errors import InputError
from ..weights import empty, fill, read_tensors

LDM_CONTROLNET_PREFIX = "control_model."


def controlnet_kind(shapes: dict[str, tuple[int, ...]], name: str = "the file") -> str:
    """"sdxl" or "sd" (SD1.x/2.x) for a single-file ControlNet; refuses files that are no ControlNet of these."""
    config, _ = controlnet_config(shapes, name)
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"


def controlnet_from_file(path: str, shapes: dict[str, tuple[int, ...]], dtype):
    """A ControlNetModel from a single file, in the original ControlNet layout (``control_v11p_sd15_*``:
    ``input_hint_block``, ``zero_convs``, ``middle_block_out``, with or without ``control_model.``) or in the
    diffusers layout (a folder's ``diffusion_pytorch_model.safetensors`` kept as one file, as many SDXL ControlNets
    are). The architecture comes from the tensors (``controlnet_config``)."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    config, diffusers_layout = controlnet_config(shapes, os.path.basename(path))
    prefix = LDM_CONTROLNET_PREFIX if any(k.startswith(LDM_CONTROLNET_PREFIX) for k in shapes) else ""
    tensors = read_tensors(path, "" if diffusers_layout else prefix)
    if diffusers_layout:
        state = tensors
    else:
        state = convert_controlnet_checkpoint(tensors, config)
        if config.get("addition_embed_type") == "text_time":  # diffusers' converter leaves SDXL's text-time
            for layer, index in (("linear_1", 0), ("linear_2", 2)):  # embedding out (0.42): mapped here
                for kind in ("weight", "bias"):
                    state[f"add_embedding.{layer}.{kind}"] = tensors[f"label_emb.0.{index}.{kind}"]
    return fill(empty(ControlNetModel, config), state, dtype, "ControlNet", "controlnet_name")


def controlnet_config(shapes: dict[str, tuple[int, ...]], name: str = "the file") -> tuple[dict, bool]:
    """(ControlNetModel config, whether the keys are in the diffusers layout) from a single file's tensor shapes,
    both layouts read in original-layout terms with the U-Net rules."""
    import inspect
    import re

    from diffusers import ControlNetModel

    from .bundled_configs import bundled_config, infer_unet_config
    from .ldm_keys import controlnet_key_to_ldm

    diffusers_layout = "controlnet_cond_embedding.conv_in.weight" in shapes
    if diffusers_layout:
        if any(k.startswith(("task_embedding", "transformer_layes", "controlnet_x_embedder", "pos_embed_input"))
               for k in shapes):
            raise InputError("controlnet_name", f"'{name}' is a union, SD3 or Flux ControlNet as a single file, whose "
                             "configuration the tensors do not fully record.",
                             "use its diffusers folder (config.json + weights) in models/controlnet.")
        per_block = len({m.group(1) for k in shapes if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))})
        hint = len({m.group(1) for k in shapes
                    if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))})
        body = {}
        for key, shape in shapes.items():
            new = controlnet_key_to_ldm(key, per_block, hint)
            if new is not None:
                body[new] = shape
    else:
        prefix = LDM_CONTROLNET_PREFIX if any(k.startswith(LDM_CONTROLNET_PREFIX) for k in shapes) else ""
        body = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    if "input_hint_block.0.weight" not in body or "zero_convs.0.0.weight" not in body:
        raise InputError("controlnet_name", f"'{name}' is not a ControlNet (no control-image embedding / zero "
                         "convolutions); control-LoRAs and T2I adapters are not supported.",
                         "use a ControlNet file or its diffusers folder in models/controlnet.")
    cross = next(v[1] for k, v in body.items() if k.endswith("transformer_blocks.0.attn2.to_k.weight"))
    sdxl = "label_emb.0.0.weight" in body
    base = bundled_config("sdxl" if sdxl else "sd2" if cross == 1024 else "sd1")["unet"]
    # SD2 and SDXL use 64-wide heads, SD1 8 heads; SDXL's time ids are 256 wide (a file does not record it)
    unet = infer_unet_config(base, body, "per64" if sdxl or cross == 1024 else "fixed", at="")
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    config = {k: v for k, v in unet.items() if k in accepted}
    if "middle_block.1.proj_in.weight" not in body:
        config["mid_block_type"] = "UNetMidBlock2D"  # the small SDXL ControlNets have no mid-block attention
    hint_convs = sorted(int(k.split(".")[1]) for k in body if k.startswith("input_hint_block.")
                        and k.endswith(".weight"))
    # hint convs: conv_in, then (same width, stride-2 to the next width) pairs, then conv_out to the U-Net's width
    config.update(conditioning_channels=body["input_hint_block.0.weight"][1],
                  conditioning_embedding_out_channels=[body[f"input_hint_block.{hint_convs[0]}.weight"][0]] + [
                      body[f"input_hint_block.{i}.weight"][0] for i in hint_convs[2:-1:2]])
    return config, diffusers_layout
