from __future__ import annotations

from ..engine import schedulers
from .base import SCHEDULER, StageNode, category


class Scheduler(StageNode):
    NODE_ID = "DS_Scheduler"
    DISPLAY_NAME = "Scheduler (Diffusers)"
    VERSION = "1.1.0"  # 1.1.0: beta, linear_quadratic, kl_optimal schedules; karras/exponential on euler_ancestral
    CATEGORY = category("sampling")
    DESCRIPTION = ("Picks the sampler and noise schedule by their ComfyUI names and maps them onto the matching "
                   "diffusers scheduler, keeping the model's own settings (betas, prediction type). Schedules "
                   "diffusers lacks for a sampler (beta, linear_quadratic, kl_optimal; karras/exponential for "
                   "euler_ancestral) are given to it as explicit sigmas. Flow-matching "
                   "models (SD3, Flux) keep their own shifted schedule and take euler, euler_ancestral, heun, lcm, "
                   "dpmpp_2m or uni_pc_bh2.")
    RETURN_TYPES = (SCHEDULER,)
    RETURN_NAMES = ("scheduler",)
    OUTPUT_TOOLTIPS = ("The scheduler settings; connect to Denoise.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "scheduler": (SCHEDULER, {"tooltip": "The model's default scheduler, from Load Diffusers Model."}),
                "sampler_name": (schedulers.SAMPLER_NAMES, {
                    "default": "euler",
                    "tooltip": "The sampler, by its ComfyUI name. 'model default' keeps the model's own scheduler."}),
                "schedule": (schedulers.SCHEDULE_NAMES, {
                    "default": "normal",
                    "tooltip": "How the noise levels are spaced, by ComfyUI name. 'model default' keeps the model's "
                               "spacing."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, sampler_name, schedule):
        problem = schedulers.combination_error(sampler_name, schedule)
        if problem:
            return cls.check(problem)
        return True

    def run(self, scheduler, sampler_name, schedule):
        problem = schedulers.combination_error(sampler_name, schedule)
        if problem:
            raise problem
        return (schedulers.derive_spec(scheduler, sampler_name, schedule),)
