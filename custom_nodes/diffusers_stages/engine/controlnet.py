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
from .families import all_families
from .weights import open_safetensors, resolve_dtype


def is_union(controlnet: ControlNet) -> bool:
    """A union ControlNet (one model, several control types chosen by a mode)."""
    config = controlnet.module.config
    return "num_control_type" in config or bool(config.get("num_mode"))


def load_controlnet(path: str, dtype) -> ControlNet:
    """A ControlNet from a diffusers folder (config.json + safetensors weights: SD1.x/2.x, SDXL and its union
    model, SD3, Flux) or a single file (``load_controlnet_file``)."""
    import diffusers

    from .families.folders import weights_variant

    if os.path.isfile(path):
        return load_controlnet_file(path, dtype)
    config_path = os.path.join(path, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    class_name = config.get("_class_name")
    family = next((f for f in all_families() if f.claims_controlnet(class_name, config)), None)
    if family is None:
        supported = sorted({name for f in all_families() for name in f.controlnet_classes})
        raise InputError("controlnet_name", f"'{os.path.basename(path)}' is a {class_name}, which this version "
                         f"cannot run (supported: {', '.join(supported)}).",
                         "use a ControlNet of one of these kinds.")
    module = getattr(diffusers, class_name).from_pretrained(
        path, variant=weights_variant(os.path.dirname(path), os.path.basename(path)),
        torch_dtype=resolve_dtype(dtype, family),
        local_files_only=True, use_safetensors=True)
    return ControlNet(family, module.eval(), path)


def load_controlnet_file(path: str, dtype) -> ControlNet:
    """A single-file ControlNet, read by the family adapter that claims it (SD1.x/2.x, SDXL, Z-Image)."""
    shapes = open_safetensors(path, "controlnet_name")
    family, refusal = None, None
    for candidate in all_families():  # a family that refuses the file says why, unless another claims it
        try:
            if candidate.claims_controlnet_file(shapes, os.path.basename(path)):
                family = candidate
                break
        except InputError as error:
            refusal = refusal or error
    if family is None:
        raise refusal or InputError("controlnet_name", f"'{os.path.basename(path)}' is not a single-file ControlNet "
                                    "this version can read.", "use its diffusers folder (config.json + weights) in "
                                    "models/controlnet.")
    return ControlNet(family, family.controlnet_from_file(path, shapes, resolve_dtype(dtype, family)), path)


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
        if isinstance(value, dict):  # Z-Image's: residuals by the index of the layer they are added to
            return {k: each(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [each(v) for v in value]
        return fn(value) if isinstance(value, torch.Tensor) else value
    return {k: each(v) for k, v in kwargs.items()}


def _add(a: dict, b: dict) -> dict:
    """Residuals of two ControlNets added, first + second (the MultiControlNet models' order)."""
    def add(x, y):
        if isinstance(x, dict):  # by layer index: two ControlNets may steer different layers
            return {k: add(x[k], y[k]) if k in x and k in y else x.get(k, y.get(k)) for k in {**x, **y}}
        if isinstance(x, (list, tuple)):
            return [add(p, q) for p, q in zip(x, y)]
        return x + y if isinstance(x, torch.Tensor) else x
    return {k: add(a[k], b[k]) for k in a}
