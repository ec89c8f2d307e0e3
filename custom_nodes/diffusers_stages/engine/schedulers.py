"""ComfyUI sampler and schedule names mapped onto diffusers schedulers.

A ``SchedulerSpec`` holds a scheduler class name and a config: the model's own
scheduler config (betas, prediction type, …) with the sampler's and schedule's
settings laid over it. ``build_scheduler`` makes a fresh scheduler per run.

Traps handled here (see the reference notes on diffusers schedulers):
* Hub SD configs use ``timestep_spacing="leading"``; the sigma schedules (karras,
  exponential) and ComfyUI's "normal" need ``"linspace"`` to start at sigma_max.
* UniPC bh1 needs ``final_sigmas_type="sigma_min"`` (the default gives NaN).
* ``DPMSolverSDEScheduler`` ignores ``generator``; it is seeded with the run's seed.
"""

from __future__ import annotations

import inspect
from typing import Any

from .components import SchedulerSpec
from .errors import InputError

MODEL_DEFAULT = "model default"

# sampler -> (diffusers class, settings laid over the model's config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": False}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "deis": ("DEISMultistepScheduler", {}),
    "ipndm": ("IPNDMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}

# schedule -> settings. Flags a scheduler class does not have make the combination invalid.
SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "karras": {"use_karras_sigmas": True, "timestep_spacing": "linspace"},
    "exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
    # diffusers has none of these: explicit sigmas (engine/sigmas.py), over the full linspace range
    "beta": {"timestep_spacing": "linspace"},
    "linear_quadratic": {"timestep_spacing": "linspace"},
    "kl_optimal": {"timestep_spacing": "linspace"},
}

# Flow-matching models (Flux, SD3) take their shifted sigma schedule from the family; these samplers follow it.
FLOW_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "euler_ancestral": ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    "heun": ("FlowMatchHeunDiscreteScheduler", {}),
    "lcm": ("FlowMatchLCMScheduler", {}),
    # multistep solvers in flow mode (diffusers' use_flow_sigmas; their flow_shift is the model's shift). Only their
    # own schedule: with karras/exponential/beta sigmas they return NaN on SD3 (diffusers 0.42, measured)
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2", "use_flow_sigmas": True,
                                               "prediction_type": "flow_prediction"}),
}
FLOW_SCHEDULES = (MODEL_DEFAULT, "normal", "simple")

SAMPLER_NAMES = [MODEL_DEFAULT, *SAMPLERS]
SCHEDULE_NAMES = [MODEL_DEFAULT, *SCHEDULES]

# Settings that only make sense for some model configs are dropped when moving to another class;
# the sigma flags of one schedule must not leak into the next.
_SCHEDULE_FLAGS = {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"}


def _scheduler_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _init_parameters(class_name: str) -> set[str]:
    return set(inspect.signature(_scheduler_class(class_name).__init__).parameters)


def spec_from_config(config: dict[str, Any]) -> SchedulerSpec:
    """The model's own scheduler, as its ``scheduler_config.json`` describes it."""
    config = dict(config)
    class_name = config.pop("_class_name")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return SchedulerSpec(class_name, _freeze(config))


def _freeze(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))


def combination_error(sampler: str, schedule: str) -> InputError | None:
    """None if the pair can be built, otherwise the error, naming the input at fault."""
    if sampler not in SAMPLER_NAMES:
        return InputError("sampler_name", f"unknown sampler '{sampler}'.",
                          f"choose one of: {', '.join(SAMPLER_NAMES)}.")
    if schedule not in SCHEDULE_NAMES:
        return InputError("schedule", f"unknown schedule '{schedule}'.",
                          f"choose one of: {', '.join(SCHEDULE_NAMES)}.")
    if schedule == MODEL_DEFAULT or sampler == MODEL_DEFAULT:
        return None  # "model default" sampler: checked against the model's class when the spec is made
    try:
        _schedule_settings(SAMPLERS[sampler][0], schedule)
    except InputError as error:
        return error
    return None


def _schedule_settings(class_name: str, schedule: str) -> tuple[dict[str, Any], str]:
    """(config settings, schedule given as explicit sigmas or "") for a schedule on a scheduler class."""
    from .sigmas import DIFFUSERS_CONVERSIONS, EXPLICIT_SCHEDULES, takes_explicit_sigmas

    settings = SCHEDULES[schedule]
    missing = set(settings) - _init_parameters(class_name)
    if schedule not in EXPLICIT_SCHEDULES and not missing:
        return settings, ""  # diffusers' own schedule for this class
    if (schedule in EXPLICIT_SCHEDULES or schedule in DIFFUSERS_CONVERSIONS) and takes_explicit_sigmas(class_name):
        return {"timestep_spacing": "linspace"}, schedule
    able = [name for name, (cls, _) in SAMPLERS.items() if schedule in DIFFUSERS_CONVERSIONS and not (
        set(settings) - _init_parameters(cls)) or takes_explicit_sigmas(cls)]
    raise InputError("schedule", f"the '{schedule}' schedule cannot be used with the {class_name} sampler (it takes "
                     "no explicit sigmas" + (f" and lacks {', '.join(sorted(missing))}" if missing else "") + ").",
                     f"pick another schedule (\"normal\" and \"simple\" work with most samplers), or a sampler that "
                     f"takes '{schedule}': {', '.join(able)}.")


# The most steps a sampler's diffusers scheduler accepts with the usual config (diffusers refuses more):
# DDIM at most its training timesteps, LCM at most its original inference steps.
STEP_LIMITS: dict[str, tuple[str, int]] = {"DDIMScheduler": ("num_train_timesteps", 1000),
                                           "LCMScheduler": ("original_inference_steps", 50)}


def max_steps(class_name: str, config: dict[str, Any] | None = None) -> int | None:
    """The most steps this scheduler class takes (None: no limit); ``config`` is the model's, when known."""
    if class_name not in STEP_LIMITS:
        return None
    key, default = STEP_LIMITS[class_name]
    return int((config or {}).get(key) or default)


def steps_error(class_name: str, steps: int, config: dict[str, Any] | None = None) -> InputError | None:
    limit = max_steps(class_name, config)
    if limit is not None and steps > limit:
        return InputError("steps", f"{steps} steps is more than the {class_name} sampler takes (at most {limit}).",
                          f"use {limit} steps or fewer, or another sampler.")
    return None


def sampler_of(sampler: str) -> str | None:
    """The diffusers class a ComfyUI sampler name maps to (None for "model default" or unknown names)."""
    return SAMPLERS[sampler][0] if sampler in SAMPLERS else None


def is_flow(spec: SchedulerSpec) -> bool:
    return spec.class_name.startswith("FlowMatch") or bool(spec.config_dict.get("use_flow_sigmas"))


def _derive_flow_spec(base: SchedulerSpec, sampler: str, schedule: str) -> SchedulerSpec:
    if sampler != MODEL_DEFAULT and sampler not in FLOW_SAMPLERS:
        raise InputError("sampler_name", f"'{sampler}' is not available for flow-matching models (Flux, SD3) in "
                         "this version of the pack.", f"use one of: {', '.join([MODEL_DEFAULT, *FLOW_SAMPLERS])}.")
    if schedule not in FLOW_SCHEDULES:
        raise InputError("schedule", f"'{schedule}' is not available for flow-matching models (Flux, SD3): their "
                         "shifted schedule comes from the model.", f"use one of: {', '.join(FLOW_SCHEDULES)}.")
    class_name, settings = (base.class_name, {}) if sampler == MODEL_DEFAULT else FLOW_SAMPLERS[sampler]
    config = {k: v for k, v in base.config_dict.items() if k != "stochastic_sampling"}
    config.update(settings)
    if settings.get("use_flow_sigmas"):
        config["flow_shift"] = base.config_dict.get("shift", 1.0)
    return SchedulerSpec(class_name, _freeze(config), sampler, schedule)


def derive_spec(base: SchedulerSpec, sampler: str, schedule: str) -> SchedulerSpec:
    """The model's scheduler with a ComfyUI sampler and schedule applied."""
    if is_flow(base):
        return _derive_flow_spec(base, sampler, schedule)
    if sampler == MODEL_DEFAULT:
        class_name, sampler_settings = base.class_name, {}
    else:
        class_name, sampler_settings = SAMPLERS[sampler]
    schedule_settings, explicit = ({}, "") if schedule == MODEL_DEFAULT else _schedule_settings(class_name, schedule)
    config = base.config_dict
    if schedule != MODEL_DEFAULT:
        config = {k: v for k, v in config.items() if k not in _SCHEDULE_FLAGS}
    config.update(sampler_settings)
    config.update(schedule_settings)
    return SchedulerSpec(class_name, _freeze(config), sampler, schedule, explicit)


def build_scheduler(spec: SchedulerSpec, seed: int):
    """A fresh scheduler for one run. Unknown config keys are ignored, as diffusers' ``from_config`` does."""
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.config}
    cls = _scheduler_class(spec.class_name)
    if spec.class_name == "DPMSolverSDEScheduler":
        config["noise_sampler_seed"] = seed
    return cls.from_config(config)


def uses_generator(scheduler) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters
