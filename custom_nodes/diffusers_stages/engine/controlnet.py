"""ControlNets: loading, control images, and their residuals inside a denoiser call.

Controls ride on a prompt (``Conditioning.controls``), as core ComfyUI attaches them. At each step
a control is on inside its window (diffusers' control_guidance_start/end) and contributes its
residuals scaled by its strength; several controls add up in the order they were applied, as
diffusers' MultiControlNetModel sums them. When CFG runs batched, a ControlNet runs once on the
whole [uncond, cond] batch with the control image doubled, as the pipelines do; a control only one
of the two prompts carries is zeroed for the other half.
"""

from __future__ import annotations

import json
import os

import torch

from .components import Control, ControlNet, Denoiser
from .errors import InputError


def load_controlnet(path: str, dtype: torch.dtype) -> ControlNet:
    """A diffusers ControlNet folder (config.json + safetensors weights)."""
    from diffusers import ControlNetModel

    from .families.folders import weights_variant
    from .families.stable_diffusion import STABLE_DIFFUSION
    from .families.stable_diffusion_xl import STABLE_DIFFUSION_XL

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise InputError("controlnet_name", f"'{os.path.basename(path)}' is a single file; this version loads "
                         "ControlNets from diffusers folders (config.json + diffusion_pytorch_model.safetensors).",
                         "put the ControlNet's diffusers folder in models/controlnet (most ControlNets on Hugging "
                         "Face are published that way).")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("_class_name") != "ControlNetModel":
        raise InputError("controlnet_name", f"'{os.path.basename(path)}' is a {config.get('_class_name')}, which this "
                         "version cannot run (SD1.x/2.x and SDXL ControlNetModel folders are supported).",
                         "use an SD1.5 or SDXL ControlNet.")
    module = ControlNetModel.from_pretrained(path, variant=weights_variant(os.path.dirname(path),
                                                                           os.path.basename(path)),
                                             torch_dtype=dtype, local_files_only=True, use_safetensors=True)
    family = STABLE_DIFFUSION_XL if config.get("addition_embed_type") == "text_time" else STABLE_DIFFUSION
    return ControlNet(family, module.eval(), path)


def check_control(denoiser: Denoiser, control: Control) -> None:
    net = control.controlnet
    if net.family is not denoiser.family or (
            net.module.config.cross_attention_dim != denoiser.module.config.cross_attention_dim):
        raise InputError("guider", f"the ControlNet '{os.path.basename(net.source)}' is for "
                         f"{net.family.display_name} (cross-attention width {net.module.config.cross_attention_dim}) "
                         f"but the denoiser is {denoiser.family.display_name} (width "
                         f"{denoiser.module.config.cross_attention_dim}).",
                         "load a ControlNet trained for the model you denoise with.")


def control_image(control: Control, height: int, width: int, batch: int, device, dtype) -> torch.Tensor:
    """The control image as the ControlNet pipelines prepare it: resized to the generated size by their image
    processor (nearest for tensors), repeated over the batch, in the ControlNet's dtype."""
    from diffusers.image_processor import VaeImageProcessor

    image = control.image
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError("image", f"the control image has shape {tuple(image.shape)}, not an IMAGE "
                         "[batch, height, width, channels].", "connect an IMAGE (e.g. from Load Image).")
    if image.shape[0] not in (1, batch):
        raise InputError("image", f"the control image batch has {image.shape[0]} images but the latent has {batch}.",
                         "give one control image, or one per latent.")
    image = image[..., :3].movedim(-1, 1).contiguous()
    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    image = processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    if image.shape[0] == 1:
        image = image.repeat_interleave(batch, dim=0)
    return image.to(device=device, dtype=dtype)


class ControlPlan:
    """The controls of one run, their prepared images, and the residual keyword arguments for each call."""

    def __init__(self, denoiser: Denoiser, positive: tuple[Control, ...], negative: tuple[Control, ...],
                 image_size: tuple[int, int], batch: int):
        self.denoiser = denoiser
        self.positive, self.negative = positive, negative
        ordered = list(positive) + [c for c in negative if c not in positive]
        for control in ordered:
            check_control(denoiser, control)
        module = denoiser.module
        self.images = {id(c): control_image(c, image_size[0], image_size[1], batch, module.device,
                                            c.controlnet.module.dtype) for c in ordered}
        self.ordered = ordered

    def __bool__(self) -> bool:
        return bool(self.ordered)

    def residuals(self, model_input: torch.Tensor, timestep, inputs: dict, halves: tuple[str, ...], step: int,
                  total: int) -> dict:
        """Extra denoiser kwargs for a call whose batch is made of ``halves`` ("negative"/"positive" parts)."""
        summed: dict | None = None
        for control in self.ordered:
            if not control.active_at(step, total):
                continue
            owners = [control in (self.positive if half == "positive" else self.negative) for half in halves]
            if not any(owners):
                continue
            image = torch.cat([self.images[id(control)]] * len(halves))
            net = control.controlnet.module
            out = self.denoiser.family.control_residuals(self.denoiser, net, model_input.to(net.dtype), timestep,
                                                         inputs, image, control.strength)
            if not all(owners):  # on one prompt only: nothing for the other half of the batch
                mask = torch.tensor(owners, dtype=model_input.dtype, device=model_input.device)
                mask = mask.repeat_interleave(model_input.shape[0] // len(halves))
                out = _map(out, lambda r, m=mask: r * m.view(-1, *([1] * (r.ndim - 1))).to(r.dtype))
            summed = out if summed is None else _add(summed, out)
        return summed or {}


def _map(kwargs: dict, fn) -> dict:
    return {k: [fn(t) for t in v] if isinstance(v, (list, tuple)) else fn(v) for k, v in kwargs.items()}


def _add(a: dict, b: dict) -> dict:
    """Residuals of two ControlNets added, first + second (MultiControlNetModel's order)."""
    return {k: [x + y for x, y in zip(a[k], b[k])] if isinstance(a[k], (list, tuple)) else a[k] + b[k] for k in a}
