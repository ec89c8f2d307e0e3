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

CONTROLNET_CLASSES = {"ControlNetModel": None, "ControlNetUnionModel": "sdxl", "SD3ControlNetModel": "sd3",
                      "FluxControlNetModel": "flux"}


def is_union(controlnet: ControlNet) -> bool:
    """A union ControlNet (one model, several control types chosen by a mode)."""
    config = controlnet.module.config
    return "num_control_type" in config or bool(config.get("num_mode"))


def load_controlnet(path: str, dtype) -> ControlNet:
    """A ControlNet from a diffusers folder (config.json + safetensors weights: SD1.x/2.x, SDXL and its union
    model, SD3, Flux) or a single file (``load_controlnet_file``)."""
    import diffusers

    from .families import all_families
    from .families.folders import weights_variant
    from .loading import resolve_dtype

    if os.path.isfile(path):
        return load_controlnet_file(path, dtype)
    config_path = os.path.join(path, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    class_name = config.get("_class_name")
    if class_name not in CONTROLNET_CLASSES:
        raise InputError("controlnet_name", f"'{os.path.basename(path)}' is a {class_name}, which this version "
                         f"cannot run (supported: {', '.join(CONTROLNET_CLASSES)}).",
                         "use a ControlNet of one of these kinds.")
    family_id = CONTROLNET_CLASSES[class_name] or ("sdxl" if config.get("addition_embed_type") == "text_time"
                                                   else "sd15")
    family = next(f for f in all_families() if f.id == family_id)
    module = getattr(diffusers, class_name).from_pretrained(
        path, variant=weights_variant(os.path.dirname(path), os.path.basename(path)),
        torch_dtype=resolve_dtype(dtype, family),
        local_files_only=True, use_safetensors=True)
    return ControlNet(family, module.eval(), path)


LDM_CONTROLNET_PREFIX = "control_model."


def load_controlnet_file(path: str, dtype) -> ControlNet:
    """A single-file SD1.x/2.x or SDXL ControlNet, in the original ControlNet layout (``control_v11p_sd15_*``:
    ``input_hint_block``, ``zero_convs``, ``middle_block_out``, with or without ``control_model.``) or in the
    diffusers layout (a folder's ``diffusion_pytorch_model.safetensors`` kept as one file, as many SDXL ControlNets
    are). The architecture comes from the tensors (``controlnet_config``)."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    from .component_files import empty, fill, read_tensors
    from .families.stable_diffusion import STABLE_DIFFUSION
    from .families.stable_diffusion_xl import STABLE_DIFFUSION_XL
    from .loading import open_safetensors, resolve_dtype

    shapes = open_safetensors(path, "controlnet_name")
    config, diffusers_layout = controlnet_config(shapes, os.path.basename(path))
    prefix = LDM_CONTROLNET_PREFIX if any(k.startswith(LDM_CONTROLNET_PREFIX) for k in shapes) else ""
    sdxl = config.get("addition_embed_type") == "text_time"
    tensors = read_tensors(path, "" if diffusers_layout else prefix)
    if diffusers_layout:
        state = tensors
    else:
        state = convert_controlnet_checkpoint(tensors, config)
        if sdxl:  # diffusers' ControlNet converter leaves SDXL's text-time embedding out (0.42): map it here
            for layer, index in (("linear_1", 0), ("linear_2", 2)):
                for kind in ("weight", "bias"):
                    state[f"add_embedding.{layer}.{kind}"] = tensors[f"label_emb.0.{index}.{kind}"]
    family = STABLE_DIFFUSION_XL if sdxl else STABLE_DIFFUSION
    module = fill(empty(ControlNetModel, config), state, resolve_dtype(dtype, family), "ControlNet",
                  "controlnet_name")
    return ControlNet(family, module, path)


def controlnet_config(shapes: dict[str, tuple[int, ...]], name: str = "the file") -> tuple[dict, bool]:
    """(ControlNetModel config, whether the keys are in the diffusers layout) from a single file's tensor shapes,
    both layouts read in original-layout terms with the U-Net rules."""
    import inspect
    import re

    from diffusers import ControlNetModel

    from .families.ldm_keys import controlnet_key_to_ldm
    from .families.stable_diffusion import _bundled_config, infer_unet_config

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
    base = _bundled_config("sdxl" if sdxl else "sd2" if cross == 1024 else "sd1")["unet"]
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


def check_control(denoiser: Denoiser, control: Control) -> None:
    net = control.controlnet
    if is_union(net) and control.mode is None:
        raise InputError("union_mode", f"'{os.path.basename(net.source)}' is a union ControlNet: it needs to know "
                         "what kind of control image it gets.", "set union_mode (0 and up; see the tooltip).")
    if not is_union(net) and control.mode is not None:
        raise InputError("union_mode", f"'{os.path.basename(net.source)}' is not a union ControlNet.",
                         "set union_mode to -1.")
    problem = None
    if net.family is not denoiser.family:
        problem = f"is for {net.family.display_name} but the denoiser is {denoiser.family.display_name}"
    else:
        problem = denoiser.family.control_problem(denoiser, net.module)
    if problem:
        raise InputError("guider", f"the ControlNet '{os.path.basename(net.source)}' {problem}.",
                         "load a ControlNet trained for the model you denoise with.")


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
    """Control pixels (-1..1) as VAE latents, as the SD3/Flux ControlNet pipelines make them: the posterior sampled
    with ``sample_with`` (its mode without one), minus ``shift`` (default: the VAE's shift factor), times the
    scaling factor; in the ControlNet's device and dtype."""
    if control.vae is None:
        raise InputError("vae", f"the ControlNet '{os.path.basename(control.controlnet.source)}' takes the control "
                         "image as latents, so Apply ControlNet needs the VAE.",
                         "connect the model's VAE to Apply ControlNet's vae input.")
    vae, net = control.vae.module, control.controlnet.module
    posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.mode() if sample_with is None else posterior.sample(sample_with)
    shift = vae.config.shift_factor if shift is None else shift
    return ((latents - shift) * vae.config.scaling_factor).to(net.device, net.dtype)


class ControlPlan:
    """The controls of one run, their prepared inputs, and the residual keyword arguments for each call."""

    def __init__(self, denoiser: Denoiser, positive: tuple[Control, ...], negative: tuple[Control, ...],
                 image_size: tuple[int, int], batch: int, copies: int, generator: torch.Generator):
        """``copies``: 2 when CFG runs batched (the prepared inputs cover [uncond, cond]), else 1."""
        self.denoiser, self.family = denoiser, denoiser.family
        self.positive, self.negative = positive, negative
        self.ordered = list(positive) + [c for c in negative if c not in positive]
        for control in self.ordered:
            check_control(denoiser, control)
        # in chain order, as a MultiControlNet pipeline prepares its images (Flux draws VAE samples from the seed)
        self.inputs = {id(c): self.family.prepare_control(c, image_size[0], image_size[1], batch, copies, generator)
                       for c in self.ordered}
        self.batch, self.copies = batch, copies
        self._positive_call: tuple[int, dict] | None = None

    def __bool__(self) -> bool:
        return bool(self.ordered)

    def _input(self, control: Control, halves: int) -> torch.Tensor:
        prepared = self.inputs[id(control)]
        if halves == self.copies:
            return prepared
        return prepared[:self.batch] if halves < self.copies else torch.cat([prepared] * halves)

    def residuals(self, model_input: torch.Tensor, timestep, inputs: dict, halves: tuple[str, ...], step: int,
                  total: int) -> dict:
        """Extra denoiser kwargs for a call whose batch is made of ``halves`` ("negative"/"positive" parts)."""
        active = [c for c in self.ordered if c.active_at(step, total)]
        if (halves == ("negative",) and self.family.control_shared_across_cfg_calls and self._positive_call
                and self._positive_call[0] == step and [c for c in active if c in self.negative]
                == [c for c in active if c in self.positive]):
            return self._positive_call[1]  # Flux's pipeline reuses the positive call's residuals for true CFG
        summed: dict | None = None
        for control in active:
            owners = [control in (self.positive if half == "positive" else self.negative) for half in halves]
            if not any(owners):
                continue
            net = control.controlnet.module
            out = self.family.control_residuals(self.denoiser, control, net, model_input.to(net.dtype), timestep,
                                                inputs, self._input(control, len(halves)), control.strength)
            if not all(owners):  # on one prompt only: nothing for the other half of the batch
                mask = torch.tensor(owners, dtype=model_input.dtype, device=model_input.device)
                mask = mask.repeat_interleave(model_input.shape[0] // len(halves))
                out = _map(out, lambda r, m=mask: r * m.view(-1, *([1] * (r.ndim - 1))).to(r.dtype))
            summed = out if summed is None else _add(summed, out)
        if halves == ("positive",):
            self._positive_call = (step, summed or {})
        return summed or {}


def _map(kwargs: dict, fn) -> dict:
    """``fn`` applied to every residual tensor (flags and missing residuals pass through)."""
    def each(value):
        if isinstance(value, (list, tuple)):
            return [each(v) for v in value]
        return fn(value) if isinstance(value, torch.Tensor) else value
    return {k: each(v) for k, v in kwargs.items()}


def _add(a: dict, b: dict) -> dict:
    """Residuals of two ControlNets added, first + second (the MultiControlNet models' order)."""
    def add(x, y):
        if isinstance(x, (list, tuple)):
            return [add(p, q) for p, q in zip(x, y)]
        return x + y if isinstance(x, torch.Tensor) else x
    return {k: add(a[k], b[k]) for k in a}
