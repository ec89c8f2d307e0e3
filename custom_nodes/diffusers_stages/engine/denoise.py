"""The denoise loop: one function per concern, driven by the family adapter.

It follows the diffusers pipelines step for step so that, given the same weights,
seed and settings, it produces the same latents bit for bit on the CPU:
* a fresh scheduler per run, timesteps from ``set_timesteps``;
* the initial noise from a CPU generator seeded by the node; the same generator
  then feeds the scheduler's step noise (ancestral/SDE samplers);
* txt2img (an all-zero latent at denoise 1.0) starts from noise × ``init_noise_sigma``
  (unit noise for flow matching); anything else is img2img: the last ``int(steps × denoise)``
  steps, noise added at the first of them, as the img2img pipelines do with ``strength``;
* CFG as the family's pipeline runs it: one batched [uncond, cond] call (SD, SDXL, SD3) or
  two calls, positive first (Flux); rescale and skip-layer guidance as in diffusers.
The family adapter supplies the schedule, the model inputs and the latent layout (Flux packing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .components import Denoiser, Guider, SchedulerSpec
from .controlnet import ControlPlan
from .errors import InputError, require_finite
from .family import Family
from .guidance import Guidance, check_guider
from .masks import blend, latent_mask, renoised
from .schedulers import build_scheduler, is_flow, steps_error, uses_generator
from .sigmas import apply_schedule

StepCallback = Callable[[int, int, "torch.Tensor | None"], None]  # (step index, total, x0 prediction or None)


@dataclass(frozen=True)
class Plan:
    timesteps: torch.Tensor
    start_latents: torch.Tensor
    noise: torch.Tensor | None = None  # the noise the start latents got (img2img, inpainting), for re-noising


@dataclass(frozen=True)
class Window:
    """diffusers' denoising_start / denoising_end: fractions of the noise range (of the training timesteps) a run
    covers, for handing a partly denoised latent from one model to another (SDXL base -> refiner)."""

    start: float = 0.0
    end: float = 1.0

    def cutoff(self, fraction: float, scheduler) -> int:
        total = scheduler.config.num_train_timesteps
        return int(round(total - fraction * total))

    def first_step(self, scheduler) -> int:
        """The index of the first timestep below the start cutoff, as StableDiffusionXLImg2ImgPipeline finds it
        (a second-order scheduler never starts between its two evaluations)."""
        remaining = int((scheduler.timesteps < self.cutoff(self.start, scheduler)).sum().item())
        if scheduler.order == 2 and remaining % 2 == 0:
            remaining += 1
        return len(scheduler.timesteps) - remaining

    def clip_end(self, timesteps: torch.Tensor, scheduler) -> torch.Tensor:
        """The timesteps at or above the end cutoff, as StableDiffusionXLPipeline keeps them."""
        if self.end >= 1.0:
            return timesteps
        cutoff = self.cutoff(self.end, scheduler)
        return timesteps[:len([t for t in timesteps if t >= cutoff])]


@dataclass(frozen=True)
class Denoised:
    raw: torch.Tensor  # raw VAE space, what LATENT holds
    model: torch.Tensor  # the same in the denoiser's space (scaled/shifted): handed on exactly to the next run


def check_inputs(denoiser: Denoiser, guider: Guider, samples: torch.Tensor) -> None:
    family = denoiser.family
    for name, cond in (("guider", guider.positive), ("guider", guider.negative)):
        if cond is None:
            continue
        problem = family.conditioning_problem(denoiser, cond)
        if problem:
            raise InputError(name, f"{problem}.",
                             "encode both prompts with the text encoder of the model you denoise with.")
    check_guider(guider, family)
    if not family.takes_reference_images and any(cond is not None and cond.references
                                                 for cond in (guider.positive, guider.negative)):
        raise InputError("guider", f"its prompt carries reference images, which {family.display_name} models do not "
                         "take.", "remove the Reference Image node (Flux.1 Kontext and Flux.2 take reference images; "
                         "for image-to-image with this model use VAE Encode and denoise below 1).")
    channels = family.latent_channels_of(denoiser)
    cells = family.size_multiple // family.spatial_factor
    if samples.ndim == 4 and samples.shape[1] == channels and (samples.shape[2] % cells or samples.shape[3] % cells):
        pixels = f"{samples.shape[3] * family.spatial_factor}x{samples.shape[2] * family.spatial_factor}"
        raise InputError("latent", f"the latent is {pixels} px, but {family.display_name} makes pictures in "
                         f"multiples of {family.size_multiple} px (its transformer works on 2x2 latent patches).",
                         f"scale or crop the picture to a multiple of {family.size_multiple} px before VAE Encode "
                         "(core's Upscale Image or Image Crop), or use the VAE that came with the model (Load "
                         "Diffusers Model's), which crops to fit.")
    if samples.ndim != 4 or samples.shape[1] != channels:
        shape = "x".join(str(s) for s in samples.shape)
        raise InputError("latent", f"the latent has shape {shape}, but this {family.display_name} denoiser works on "
                         f"{channels}-channel latents [batch, {channels}, height/{family.spatial_factor}, "
                         f"width/{family.spatial_factor}].",
                         "make the latent with this model's Empty Latent or VAE Encode node (a latent from another "
                         "model family does not fit).")


def check_scheduler(denoiser: Denoiser, spec: SchedulerSpec, steps: int) -> None:
    """The scheduler fits the model (flow matching or not) and takes this many steps."""
    family = denoiser.family
    if is_flow(spec) != family.flow_matching:
        kind = "a flow-matching" if is_flow(spec) else "a noise-prediction (non-flow-matching)"
        raise InputError("scheduler", f"the scheduler ({spec.class_name}) is {kind} sampler made for another model "
                         f"family, and cannot drive this {family.display_name} model.",
                         "connect the scheduler output of this model's own loader (or a Scheduler node fed by it).")
    problem = steps_error(spec.class_name, steps, spec.config_dict)
    if problem:
        raise problem


def plan_run(family: Family, scheduler, samples_model: torch.Tensor, steps: int, strength: float,
             generator: torch.Generator, txt2img: bool, explicit_schedule: str = "", window: Window = Window(),
             inpaint: bool = False) -> Plan:
    """Timesteps and starting latents (model space, [B, C, h, w]); noise is drawn in that shape, as the pipelines do.
    A window start continues a partly denoised latent: no noise is added (diffusers' add_noise=False). Inpainting
    at full strength starts from pure noise, as the inpaint pipelines do (``is_strength_max``)."""
    from diffusers.utils.torch_utils import randn_tensor

    try:
        family.set_timesteps(scheduler, steps, samples_model)
        if explicit_schedule:
            apply_schedule(scheduler, explicit_schedule, steps, samples_model.device)
    except ValueError as exc:  # diffusers refuses step counts a scheduler cannot take (DDIM, LCM, …)
        raise InputError("steps", f"the {type(scheduler).__name__} sampler refused {steps} steps ({exc}).",
                         "use fewer steps or another sampler.") from exc
    if window.start > 0.0:
        begin = window.first_step(scheduler)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        return Plan(window.clip_end(scheduler.timesteps[begin:], scheduler), samples_model)
    if txt2img:
        if family.begin_index_on_full_run and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        noise = randn_tensor(samples_model.shape, generator=generator, device=samples_model.device,
                             dtype=samples_model.dtype)
        sigma = getattr(scheduler, "init_noise_sigma", None)  # flow-matching schedulers start at unit noise
        return Plan(window.clip_end(scheduler.timesteps, scheduler), noise if sigma is None else noise * sigma)
    run_steps = family.strength_steps(steps, strength)
    begin = max(steps - run_steps, 0) * scheduler.order
    timesteps = window.clip_end(scheduler.timesteps[begin:], scheduler)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    if len(timesteps) == 0:
        return Plan(timesteps, samples_model)
    noise = randn_tensor(samples_model.shape, generator=generator, device=samples_model.device,
                         dtype=samples_model.dtype)
    first = timesteps[:1].repeat(samples_model.shape[0])
    sigma = getattr(scheduler, "init_noise_sigma", None)
    if inpaint and strength >= 1.0:
        start = noise if sigma is None else noise * sigma
    else:  # flow matching: sigma * noise + (1 - sigma) * sample; otherwise the scheduler's add_noise
        start = renoised(scheduler, samples_model, noise, first)
    return Plan(timesteps, start, noise)


def guided_prediction(denoiser: Denoiser, guidance: Guidance, scheduler, latents: torch.Tensor, t,
                      controls: ControlPlan | None = None, step: int = 0, total: int = 1,
                      extra_channels: torch.Tensor | None = None) -> torch.Tensor:
    """One step's prediction: the calls ``guidance`` says this step needs, run in its order, combined by it.
    ``extra_channels`` (an inpainting model's mask and masked-image latents) join each call's input."""
    family = denoiser.family
    scaled = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
    predictions = {}
    for call in guidance.calls(step, total, t):
        call_inputs = guidance.call_inputs(call)
        if call.halves == ("skip",):  # as StableDiffusion3Pipeline: the unscaled latents, no ControlNet
            predictions[call.names[0]] = family.predict(denoiser, latents, t, call_inputs)
            continue
        model_input = torch.cat([scaled] * len(call.halves)) if len(call.halves) > 1 else scaled
        if controls:
            call_inputs = {**call_inputs, **controls.residuals(model_input, t, call_inputs, call.halves, step, total)}
        if extra_channels is not None:  # channels: dim 1 of a latent grid, the last dim of packed tokens
            copies = extra_channels.repeat(len(call.halves), *[1] * (extra_channels.ndim - 1))
            model_input = torch.cat([model_input, copies], dim=-1 if family.packs_latents else 1)
        with call.applied(denoiser.module):
            output = family.predict(denoiser, model_input, t, call_inputs)
        predictions.update(zip(call.names, output.chunk(len(call.halves)) if len(call.halves) > 1 else (output,)))
    return guidance.combine(predictions)


def preview_x0(scheduler, output, latents: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor | None:
    """The clean-image estimate a live preview shows: the scheduler's own, or for flow matching
    x0 = x_t - sigma_t * v (its step output has none)."""
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is not None or not type(scheduler).__name__.startswith("FlowMatch"):
        return x0
    index = getattr(scheduler, "step_index", None)
    if index is None or index < 1:
        return None
    return latents - scheduler.sigmas[index - 1].to(latents.dtype) * prediction


def denoise(denoiser: Denoiser, guider: Guider, spec: SchedulerSpec, samples: torch.Tensor, seed: int, steps: int,
            strength: float = 1.0, on_step: StepCallback | None = None) -> torch.Tensor:
    """Run the sampler on a raw-VAE-space latent batch and return the denoised raw latents."""
    return run(denoiser, guider, spec, samples, seed, steps, strength, on_step).raw


def run(denoiser: Denoiser, guider: Guider, spec: SchedulerSpec, samples: torch.Tensor, seed: int, steps: int,
        strength: float = 1.0, on_step: StepCallback | None = None, window: Window = Window(),
        samples_in_model_space: torch.Tensor | None = None, noise_mask: torch.Tensor | None = None,
        masked_image: torch.Tensor | None = None) -> Denoised:
    """``denoise`` with a denoising window; ``samples_in_model_space``: the exact model-space latents an earlier
    run handed over (dividing by the VAE scale and multiplying back is not exact in floating point);
    ``noise_mask``: repaint only where it is 1, keeping the rest on ``samples`` as the inpaint pipelines do
    (``engine/masks.py``); an inpainting model takes the mask and ``masked_image`` (raw latents) as input channels
    instead."""
    check_inputs(denoiser, guider, samples)
    if steps < 1:
        raise InputError("steps", f"{steps} steps is not a run.", "use at least 1 step.")
    if not 0.0 <= strength <= 1.0:
        raise InputError("denoise", f"{strength} is outside 0..1.",
                         "use 1.0 for text-to-image, less for image-to-image.")
    if not 0.0 <= window.start < window.end <= 1.0:
        raise InputError("denoising_start", f"the window {window.start}..{window.end} is not a part of 0..1.",
                         "make denoising_start smaller than denoising_end (0 and 1: the whole run).")
    if window.start > 0.0 and strength < 1.0:
        raise InputError("denoise", "denoise below 1.0 and a denoising_start both say where to start.",
                         "use denoising_start to continue a partly denoised latent, or denoise for image-to-image, "
                         "not both (diffusers ignores strength when denoising_start is set).")
    check_scheduler(denoiser, spec, steps)
    require_finite(samples, "latent", "the input latent", "the node that made the latent overflowed.")
    if noise_mask is not None and window != Window():
        raise InputError("latent", "a noise mask (inpainting) and a denoising window cannot go together.",
                         "set denoising_start to 0 and denoising_end to 1, or remove the mask.")

    module = denoiser.module
    # the denoiser's precision (the pipelines use the prompt's, which is the same when all parts share one dtype;
    # a graph may mix, e.g. fp16 text encoders with a bf16 transformer)
    device, dtype = module.device, denoiser.family.latents_dtype or module.dtype
    batch = samples.shape[0]
    txt2img = strength >= 1.0 and not bool(samples.any())
    if samples_in_model_space is not None:
        samples_model = samples_in_model_space.to(device=device, dtype=dtype)
    else:
        samples_model = denoiser.to_model_space(samples.to(device=device, dtype=dtype))

    generator = torch.Generator("cpu").manual_seed(seed)
    scheduler = build_scheduler(spec, seed)
    image_size = (samples.shape[2] * denoiser.family.spatial_factor, samples.shape[3] * denoiser.family.spatial_factor)
    # without a negative prompt CFG never runs; the positive stands in so families build their inputs as usual
    complete = guider if guider.negative is not None else dataclasses.replace(guider, negative=guider.positive)
    inputs = denoiser.family.model_inputs(denoiser, complete, batch, image_size)
    guidance = Guidance(guider, inputs, denoiser.family, denoiser.module)
    # control inputs before the initial noise, as the pipelines prepare them (Flux samples them from the same
    # generator); two copies side by side when CFG runs batched
    controls = ControlPlan(denoiser, guider.positive.controls, guider.negative.controls if guider.negative else (),
                           image_size, batch, guidance.batch_copies, generator)
    mask = None
    if noise_mask is not None:
        family = denoiser.family
        mask = latent_mask(noise_mask, samples.shape, family.spatial_factor, family.mask_resize).to(device=device,
                                                                                                   dtype=dtype)
        txt2img = False  # the image outside the mask is kept, whatever the strength
    extra_channels = None
    if denoiser.family.is_inpainting_model(denoiser):
        if mask is None or masked_image is None:
            raise InputError("latent", f"this {denoiser.family.display_name} model is an inpainting model: it needs "
                             "a mask and the masked image beside the latent.",
                             "make the latent with Inpaint Conditioning (the image, the mask and this model's VAE).")
        masked = denoiser.to_model_space(masked_image.to(device=device, dtype=dtype))
        extra_channels = denoiser.family.inpainting_inputs(noise_mask, masked.repeat(batch // masked.shape[0], 1, 1,
                                                                                     1)).to(device=device, dtype=dtype)
    plan = plan_run(denoiser.family, scheduler, samples_model, steps, strength, generator, txt2img and
                    window.start == 0.0, spec.explicit_schedule, window, inpaint=mask is not None)
    step_kwargs = {}
    if uses_generator(scheduler):
        step_kwargs["generator"] = generator

    latents = denoiser.family.to_model_layout(plan.start_latents)
    total = len(plan.timesteps)
    for i, t in enumerate(plan.timesteps):
        prediction = guided_prediction(denoiser, guidance, scheduler, latents, t, controls, i, total, extra_channels)
        before = latents
        output = scheduler.step(prediction, t, latents, **step_kwargs, return_dict=True)
        latents = output.prev_sample
        if mask is not None and extra_channels is None:  # the pipelines' blend (not for inpainting models): outside
            # the mask, the image re-noised to the next timestep
            image = samples_model if i == total - 1 else renoised(scheduler, samples_model, plan.noise,
                                                                   plan.timesteps[i + 1:i + 2])
            latents = denoiser.family.to_model_layout(blend(mask, denoiser.family.from_model_layout(
                latents, samples_model.shape), image))
        require_finite(latents, "denoiser", f"the latent after step {i + 1} of {total}",
                       "the model's weights hold NaN/inf (a damaged file), an fp16 model overflowed (load it in bf16 "
                       "or fp32), or cfg / a prompt weight is extreme.")
        if on_step is not None:
            x0 = preview_x0(scheduler, output, before, prediction)
            on_step(i, total, denoiser.family.from_model_layout(latents if x0 is None else x0, samples_model.shape))

    latents = denoiser.family.from_model_layout(latents, samples_model.shape)
    return Denoised(denoiser.to_raw_space(latents), latents)
