"""Guidance decided in one place: what a step needs and how its predictions combine.

A ``Guider`` (components) holds what the guidance nodes set: prompts, scale, rescale, the step window, skip-layer
settings. ``Guidance`` runs it for one denoise: per step it says which predictions are needed (the negative one,
batched with the positive as [negative, positive] or as a second call, a skip-layer one) and combines them, as
the family's pipeline does. Whether a family takes CFG at all its adapter declares through the inputs it builds
(``ModelInputs``: neither a batched nor a separate negative input = a guidance-distilled model, e.g. LCM). The
denoise loop asks this object and never decides itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .components import Guider
from .errors import InputError
from .family import Family, ModelInputs


@dataclass(frozen=True)
class StepNeeds:
    negative: bool  # the negative prompt's prediction
    batched: bool  # … in one call with the positive, [negative, positive], as the family's pipeline batches CFG
    skip: bool  # a prediction with some layers skipped (skip-layer guidance)


def check_guider(guider: Guider, family: Family) -> None:
    """Refuse guidance the family cannot take, before anything runs."""
    if guider.skip_layers and not family.supports_skip_layers:
        raise InputError("guider", f"skip-layer guidance is an SD3 feature; {family.display_name} does not take it.",
                         "remove the Skip Layer Guidance node, or use it with an SD3/SD3.5 model.")


# Guider.method -> the diffusers guider that runs it (diffusers.guiders, experimental in 0.42: pinned by the tests)
DIFFUSERS_GUIDERS = {"cfg_zero_star": "ClassifierFreeZeroStarGuidance", "apg": "AdaptiveProjectedGuidance",
                     "tcfg": "TangentialClassifierFreeGuidance"}


class Guidance:
    def __init__(self, guider: Guider, inputs: ModelInputs):
        self.guider, self.inputs = guider, inputs
        self.takes_cfg = inputs.cfg is not None or inputs.uncond is not None  # as the family's adapter built them
        self.diffusers_guider = None
        if guider.method != "cfg" and guider.negative is not None and not self.takes_cfg:
            raise InputError("guider", f"{DIFFUSERS_GUIDERS[guider.method]} guides with a negative prediction, which "
                             "this guidance-distilled model (e.g. LCM: the scale is an embedding) does not take.",
                             "use CFG Guider, whose cfg such a model reads as its embedded guidance.")
        if guider.method != "cfg":  # run as diffusers' modular pipelines run it: its own window, two calls
            import diffusers.guiders

            cls = getattr(diffusers.guiders, DIFFUSERS_GUIDERS[guider.method])
            self.diffusers_guider = cls(guidance_scale=guider.scale, guidance_rescale=guider.rescale,
                                        start=guider.start_percent, stop=guider.end_percent,
                                        **dict(guider.method_options))

    @property
    def batch_copies(self) -> int:
        """How many copies of the batch a guided call runs on (2 when CFG runs batched): what ControlNet inputs
        are prepared for."""
        batched = self.inputs.cfg is not None and self.diffusers_guider is None
        return 2 if batched and self.takes_cfg and self.guider.guides else 1

    def needs(self, step: int, total: int, timestep=None) -> StepNeeds:
        if self.diffusers_guider is not None:  # the modular loop's calls, each step: set_state, prepare_inputs
            self.diffusers_guider.set_state(step, total, timestep)
            self.diffusers_guider.prepare_inputs({})  # (APG starts its momentum buffer at step 0 here)
            negative = (self.takes_cfg and self.inputs.uncond is not None and self.guider.negative is not None
                        and self.diffusers_guider.num_conditions == 2)
            return StepNeeds(negative, False, False)
        negative = self.takes_cfg and self.guider.active_at(step, total)
        skip = negative and self.inputs.skip is not None and self.guider.skip_active_at(step, total)
        return StepNeeds(negative, negative and self.inputs.cfg is not None, skip)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                skipped: torch.Tensor | None = None) -> torch.Tensor:
        """The guided prediction: CFG, plus skip-layer guidance as StableDiffusion3Pipeline applies it, then
        diffusers' guidance rescale; the positive prediction alone when the step needed no negative. A diffusers
        guider combines them itself (CFG-Zero* may zero even a lone positive prediction)."""
        if self.diffusers_guider is not None:
            return self.diffusers_guider.forward(pred_cond=cond, pred_uncond=uncond).pred
        if uncond is None:
            return cond
        guider = self.guider
        guided = uncond + guider.scale * (cond - uncond)
        if skipped is not None:
            guided = guided + (cond - skipped) * guider.skip_scale
        if guider.rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, cond, guidance_rescale=guider.rescale)
        return guided
