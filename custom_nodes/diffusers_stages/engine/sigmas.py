"""Noise schedules diffusers lacks, given to its schedulers as explicit sigmas.

ComfyUI users pick a schedule independently of the sampler. diffusers ties schedules to scheduler flags
(``use_karras_sigmas`` …) that some schedulers lack (EulerAncestralDiscreteScheduler has none), and has no
beta (ComfyUI's, on the model's timesteps), linear-quadratic or KL-optimal schedule at all. Here the sigmas
are computed from the published formulas on the model's own noise table, then handed to the scheduler:
through ``set_timesteps(sigmas=…)`` where the scheduler takes them, otherwise written into the scheduler the
way its own ``set_timesteps`` writes a flag schedule (sigmas plus a final 0, timesteps from the log-sigma
interpolation diffusers uses).

* karras (Karras et al. 2022, rho 7) and exponential: diffusers' own conversions (EulerDiscreteScheduler's),
  so euler_ancestral × karras uses exactly the sigmas of diffusers' euler × karras.
* beta (Lee et al. 2024, "Beta Sampling is All You Need", alpha = beta = 0.6) as ComfyUI applies it: the
  Beta distribution's quantiles pick timesteps of the model's table (rounded, repeats dropped).
* linear_quadratic (Movie Gen, Polyak et al. 2024): a linear ramp to 0.025 for half the steps, then quadratic.
* kl_optimal (Sabour et al. 2024, "Align Your Steps"): sigma = tan of a linear ramp in arctan space.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch

EXPLICIT_SCHEDULES = ("beta", "linear_quadratic", "kl_optimal")
DIFFUSERS_CONVERSIONS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas"}


def model_sigma_table(scheduler) -> np.ndarray:
    """sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) for every training timestep t (ascending in t)."""
    alphas_cumprod = scheduler.alphas_cumprod.double().numpy()
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def beta_sigmas(table: np.ndarray, steps: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    from scipy import stats

    last = len(table) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    timesteps = np.rint(stats.beta.ppf(quantiles, alpha, beta) * last).astype(int)
    kept = [t for i, t in enumerate(timesteps) if i == 0 or t != timesteps[i - 1]]
    return np.array([*table[kept], 0.0])


def linear_quadratic_sigmas(sigma_max: float, steps: int, threshold: float = 0.025) -> np.ndarray:
    if steps == 1:
        return np.array([sigma_max, 0.0])
    linear = steps // 2
    quadratic = steps - linear
    gap = linear - threshold * steps
    a = gap / (linear * quadratic ** 2)
    b = threshold / linear - 2 * gap / quadratic ** 2
    c = a * linear ** 2
    noise = [i * threshold / linear for i in range(linear)] + [a * i * i + b * i + c for i in range(linear, steps)]
    return (1.0 - np.array([*noise, 1.0])) * sigma_max


def kl_optimal_sigmas(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    ramp = np.arange(steps) / max(steps - 1, 1)
    return np.array([*np.tan(ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)), 0.0])


def _config(scheduler, **flags) -> dict[str, Any]:
    """The scheduler's config with ``flags`` laid over; the private keys are dropped (``_use_default_values``
    would make ``from_config`` ignore a flag the original left at its default)."""
    return {**{k: v for k, v in scheduler.config.items() if not k.startswith("_")}, **flags}


def _euler_like(scheduler, **flags):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(_config(scheduler, **flags))


def _log_sigma_table(scheduler) -> np.ndarray:
    """The log-sigma table diffusers' schedulers interpolate timesteps in (computed as they compute it)."""
    alphas_cumprod = scheduler.alphas_cumprod
    return np.log(np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5))


def schedule_sigmas(schedule: str, scheduler, steps: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(sigmas, timesteps or None) of the schedule for this scheduler's model: steps + 1 sigmas, the last 0 (beta
    may drop repeats). karras/exponential come from diffusers' own conversion, with its timesteps: the class's own
    if it has the flag, else EulerDiscreteScheduler's."""
    if schedule in DIFFUSERS_CONVERSIONS:
        flag = DIFFUSERS_CONVERSIONS[schedule]
        owner = type(scheduler) if flag in inspect.signature(type(scheduler).__init__).parameters else None
        settings = {flag: True, "timestep_spacing": "linspace"}
        reference = owner.from_config(_config(scheduler, **settings)) if owner else _euler_like(scheduler, **settings)
        reference.set_timesteps(steps)
        return reference.sigmas.double().numpy(), reference.timesteps.numpy()
    table = model_sigma_table(scheduler)
    if schedule == "beta":
        return beta_sigmas(table, steps), None
    if schedule == "linear_quadratic":
        return linear_quadratic_sigmas(float(table[-1]), steps), None
    if schedule == "kl_optimal":
        return kl_optimal_sigmas(float(table[0]), float(table[-1]), steps), None
    raise ValueError(f"no explicit sigmas for schedule '{schedule}'")


# Scheduler classes that take explicit sigmas, written in the way their own set_timesteps writes a flag schedule,
# with whether their timesteps are integers. Not: second-order and interleaved schedulers (Heun, KDPM2,
# DPMSolverSDE: sigmas doubled per step), UniPC (its bh1 needs a final sigma other than 0), DDIM/PNDM/LCM/IPNDM
# (no sigmas).
TAKES_SIGMAS = {"EulerDiscreteScheduler": False, "EulerAncestralDiscreteScheduler": False,
                "DPMSolverMultistepScheduler": True}


def takes_explicit_sigmas(class_name: str) -> bool:
    return class_name in TAKES_SIGMAS


def apply_schedule(scheduler, schedule: str, steps: int, device: Any = None) -> None:
    """Give ``scheduler`` (already ``set_timesteps``) the schedule's sigmas and matching timesteps."""
    give_sigmas(scheduler, *schedule_sigmas(schedule, scheduler, steps), device=device)


def give_sigmas(scheduler, sigmas: np.ndarray, timesteps: np.ndarray | None = None, device: Any = None) -> None:
    """``sigmas`` (descending, the last 0) as the scheduler's schedule, the way its own set_timesteps sets one;
    timesteps by diffusers' log-sigma interpolation when not given."""
    integer = TAKES_SIGMAS[type(scheduler).__name__]
    if timesteps is None:
        log_sigmas = _log_sigma_table(scheduler)
        timesteps = np.array([scheduler._sigma_to_t(sigma, log_sigmas) if hasattr(scheduler, "_sigma_to_t")
                              else _euler_like(scheduler)._sigma_to_t(sigma, log_sigmas) for sigma in sigmas[:-1]])
        timesteps = timesteps.round().astype(np.int64) if integer else timesteps.astype(np.float32)
    scheduler.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
    scheduler.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device or "cpu")
    scheduler.num_inference_steps = len(timesteps)
    for name, value in (("_step_index", None), ("_begin_index", None), ("lower_order_nums", 0)):
        if hasattr(scheduler, name):
            setattr(scheduler, name, value)
    if hasattr(scheduler, "model_outputs"):
        scheduler.model_outputs = [None] * scheduler.config.solver_order
