"""Guidance decided in one place: what a step needs and how its predictions combine.

A ``Guider`` (components) holds what the guidance nodes set: prompts, scale, rescale, the step window, skip-layer
settings. ``Guidance`` runs it for one denoise: per step it says which predictions are needed (the negative one,
batched with the positive as [negative, positive] or as a second call, a skip-layer one) and combines them, as
the family's pipeline does. Whether a family takes CFG at all its adapter declares through the inputs it builds
(``ModelInputs``: neither a batched nor a separate negative input = a guidance-distilled model, e.g. LCM). The
denoise loop asks this object and never decides itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .components import Guider
from .errors import InputError
from .family import Family, ModelInputs


@dataclass(frozen=True)
class Call:
    """One denoiser call of a step: ``prompt`` "positive", "negative", "both" ([negative, positive] batched, as the
    family's pipeline batches CFG) or "skip" (the positive with some layers skipped, SD3's skip-layer guidance);
    ``name``: the prediction it makes, as diffusers' guiders name them; ``around``: what the guider does to the
    denoiser for this call (diffusers' prepare_models / cleanup_models, e.g. PAG's attention hooks)."""

    prompt: str
    name: str = "pred_cond"
    around: Any = None


def check_guider(guider: Guider, family: Family) -> None:
    """Refuse guidance the family cannot take, before anything runs."""
    if guider.skip_layers and not family.supports_skip_layers:
        raise InputError("guider", f"skip-layer guidance is an SD3 feature; {family.display_name} does not take it.",
                         "remove the Skip Layer Guidance node, or use it with an SD3/SD3.5 model.")
    if guider.method in ("pag", "seg") and not (guider.negative is not None and guider.guides):
        # diffusers 0.42's guiders hook the denoiser only for the third call of a CFG step: with CFG off the
        # perturbed call runs unperturbed (on the negative prompt's inputs), and the result is plain sampling
        raise InputError("guider", f"{DIFFUSERS_GUIDERS[guider.method]} perturbs the attention only while CFG runs "
                         "(diffusers 0.42); with cfg 1 or below it would change nothing.",
                         f"set cfg above 1 in the {guider.method.upper()} Guider, or use CFG Guider.")


# Guider.method -> the diffusers guider that runs it (diffusers.guiders, experimental in 0.42: pinned by the tests)
DIFFUSERS_GUIDERS = {"cfg_zero_star": "ClassifierFreeZeroStarGuidance", "apg": "AdaptiveProjectedGuidance",
                     "tcfg": "TangentialClassifierFreeGuidance", "pag": "PerturbedAttentionGuidance",
                     "seg": "SmoothedEnergyGuidance"}


def perturbation_config(method: str, blocks: list[tuple[str, list[int]]]) -> dict:
    """The diffusers guider's own config for perturbing these blocks' self-attention: PAG replaces the attention
    scores (a LayerSkipConfig on attention scores only), SEG blurs the queries (SmoothedEnergyGuidanceConfig)."""
    if method == "pag":
        from diffusers.hooks import LayerSkipConfig

        return {"perturbed_guidance_config": [LayerSkipConfig(indices=indices, fqn=fqn, skip_attention=False,
                                                               skip_attention_scores=True, skip_ff=False)
                                              for fqn, indices in blocks]}
    from diffusers.hooks.smoothed_energy_guidance_utils import SmoothedEnergyGuidanceConfig

    return {"seg_guidance_config": [SmoothedEnergyGuidanceConfig(indices=indices, fqn=fqn) for fqn, indices in blocks]}


class Guidance:
    def __init__(self, guider: Guider, inputs: ModelInputs, family: Family | None = None, module=None):
        """``family`` and ``module``: the denoiser, for guiders that perturb its layers (PAG)."""
        self.guider, self.inputs = guider, inputs
        self.takes_cfg = inputs.cfg is not None or inputs.uncond is not None  # as the family's adapter built them
        self.diffusers_guider = None
        if guider.method != "cfg" and inputs.uncond is None:
            raise InputError("guider", f"{DIFFUSERS_GUIDERS[guider.method]} guides with predictions besides the "
                             "positive one, which this guidance-distilled model (e.g. LCM: the scale is an embedding) "
                             "does not take.", "use CFG Guider, whose cfg such a model reads as its embedded guidance.")
        if guider.method != "cfg":  # run as diffusers' modular pipelines run it: its own window, two calls
            import diffusers.guiders

            cls = getattr(diffusers.guiders, DIFFUSERS_GUIDERS[guider.method])
            options = dict(guider.method_options)
            if "layers" in options:  # the attention layers to perturb, named in the family's own terms
                blocks = family.attention_blocks(module, options.pop("layers"))
                options.update(perturbation_config(guider.method, blocks))
            self.diffusers_guider = cls(guidance_scale=guider.scale, guidance_rescale=guider.rescale,
                                        start=guider.start_percent, stop=guider.end_percent, **options)

    @property
    def batch_copies(self) -> int:
        """How many copies of the batch a guided call runs on (2 when CFG runs batched): what ControlNet inputs
        are prepared for."""
        batched = self.inputs.cfg is not None and self.diffusers_guider is None
        return 2 if batched and self.takes_cfg and self.guider.guides else 1

    def calls(self, step: int, total: int, timestep=None) -> list[Call]:
        """The denoiser calls this step needs, in the order the reference runs them."""
        if self.diffusers_guider is not None:  # the modular loop, each step: set_state, prepare_inputs, and per
            guider = self.diffusers_guider  # batch prepare_models / predict / cleanup_models
            guider.set_state(step, total, timestep)
            # without a negative prompt the "negative" inputs are the positive's (the loop builds them so): PAG/SEG
            # at cfg 1 still make their perturbed call, on the positive prompt
            batches = guider.prepare_inputs({"prompt": ("positive", "negative")})
            return [Call(batch.prompt, getattr(batch, guider._identifier_key), guider) for batch in batches]
        if not (self.takes_cfg and self.guider.active_at(step, total)):
            return [Call("positive")]
        calls = [Call("both")] if self.inputs.cfg is not None else [Call("positive"), Call("negative", "pred_uncond")]
        if self.inputs.skip is not None and self.guider.skip_active_at(step, total):
            calls.append(Call("skip", "pred_cond_skip"))
        return calls

    @staticmethod
    @contextlib.contextmanager
    def around(call: Call, module):
        if call.around is None:
            yield
            return
        call.around.prepare_models(module)
        try:
            yield
        finally:
            call.around.cleanup_models(module)

    def combine(self, predictions: dict[str, torch.Tensor]) -> torch.Tensor:
        """The guided prediction from the step's predictions (``pred_cond``, ``pred_uncond``, ``pred_cond_skip``):
        CFG, plus skip-layer guidance as StableDiffusion3Pipeline applies it, then diffusers' guidance rescale; the
        positive prediction alone when the step needed no other. A diffusers guider combines them itself (CFG-Zero*
        may zero even a lone positive prediction)."""
        if self.diffusers_guider is not None:
            return self.diffusers_guider.forward(**predictions).pred
        cond, uncond = predictions["pred_cond"], predictions.get("pred_uncond")
        if uncond is None:
            return cond
        guider = self.guider
        guided = uncond + guider.scale * (cond - uncond)
        if "pred_cond_skip" in predictions:
            guided = guided + (cond - predictions["pred_cond_skip"]) * guider.skip_scale
        if guider.rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, cond, guidance_rescale=guider.rescale)
        return guided
