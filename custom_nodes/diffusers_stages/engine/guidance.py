"""Guidance decided in one place: what a step needs and how its predictions combine.

A ``Guider`` (components) holds what the guidance nodes set: prompts, scale, rescale, the step window, skip-layer
settings. ``Guidance`` runs it for one denoise: per step it says which predictions are needed and how they are
batched (the negative batched with the positive as [negative, positive] or as a second call; a skip-layer call;
PAG's perturbed half batched after them) and combines them, as the family's pipeline does. Whether a family
takes CFG at all its adapter declares through the inputs it builds (``ModelInputs``: neither a batched nor a
separate negative input = a guidance-distilled model, e.g. LCM). The denoise loop asks this object and never
decides itself.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

import torch

from .components import Guider, in_window
from .errors import InputError
from .family import Family, ModelInputs


@dataclass(frozen=True)
class Call:
    """One denoiser call of a step. ``halves``: the prompts batched in it, in batch order ("positive",
    "negative"; ("negative", "positive") is CFG batched as the family's pipeline batches it), or ("skip",): the
    positive with some layers skipped (SD3's skip-layer guidance). ``names``: the prediction each half makes, as
    diffusers' guiders name them. ``around``: what is done to the denoiser for this call (a context manager
    factory taking the denoiser module: diffusers' prepare_models / cleanup_models, PAG's attention processors)."""

    halves: tuple[str, ...]
    names: tuple[str, ...] = ("pred_cond",)
    around: Any = None

    @contextlib.contextmanager
    def applied(self, module):
        if self.around is None:
            yield
        else:
            with self.around(module):
                yield


PREDICTION_OF = {"positive": "pred_cond", "negative": "pred_uncond"}


def check_guider(guider: Guider, family: Family) -> None:
    """Refuse guidance the family cannot take, before anything runs."""
    if guider.skip_layers and not family.supports_skip_layers:
        raise InputError("guider", f"this guider holds SD3 skip-layer settings; {family.display_name} does not "
                         "take them.", "build the Skip Layer Guidance node on a CFG Guider of this model's prompts.")
    if guider.method in ("seg", "slg") and not (guider.negative is not None and guider.guides):
        # diffusers 0.42's guiders hook the denoiser only for the third call of a CFG step: with CFG off the
        # perturbed call runs unperturbed (on the negative prompt's inputs), and the result is plain sampling
        raise InputError("guider", f"{GUIDER_NAMES[guider.method]} perturbs the denoiser only while CFG runs "
                         "(diffusers 0.42 hooks only a CFG step's third call); without a negative prompt or with cfg "
                         "1 or below it would change nothing.",
                         "connect a negative prompt and set cfg above 1 in the guider node, or use CFG Guider.")


# Guider.method -> the diffusers guider that runs it (diffusers.guiders, experimental in 0.42: pinned by the tests)
DIFFUSERS_GUIDERS = {"cfg_zero_star": "ClassifierFreeZeroStarGuidance", "apg": "AdaptiveProjectedGuidance",
                     "tcfg": "TangentialClassifierFreeGuidance", "seg": "SmoothedEnergyGuidance",
                     "slg": "SkipLayerGuidance", "fdg": "FrequencyDecoupledGuidance"}
GUIDER_NAMES = {**DIFFUSERS_GUIDERS, "pag": "Perturbed-attention guidance (PAG)",
                "slg": "Skip-layer guidance (diffusers' SkipLayerGuidance)"}


def perturbation_config(method: str, family: Family, module, layers: str) -> dict:
    """The diffusers guider's own config for the layers ``layers`` names: SEG blurs the self-attention queries of
    those transformer blocks (SmoothedEnergyGuidanceConfig), SLG skips whole transformer blocks (LayerSkipConfig):
    each a block list's path and the blocks' indices."""
    if method == "slg":  # the guider wants a config; the blocks are skipped by BlockSkip (see there)
        from diffusers.hooks import LayerSkipConfig

        return {"skip_layer_config": [LayerSkipConfig(indices=indices, fqn=fqn)
                                      for fqn, indices in skipped_blocks(family, module, layers).items()]}
    from diffusers.hooks.smoothed_energy_guidance_utils import SmoothedEnergyGuidanceConfig

    if not family.attention_hooks:
        raise InputError("guider", f"{GUIDER_NAMES[method]} cannot perturb {family.display_name}'s attention "
                         "(diffusers' attention hooks do not take its attention processors).",
                         "use it with an SD1.x/2.x or SDXL model, or another guider.")
    blocks: dict[str, list[int]] = {}
    for name, _ in self_attention_layers(module, layers, family):  # …transformer_blocks.<i>.attn1
        path, index, _ = name.rsplit(".", 2)
        blocks.setdefault(path, []).append(int(index))
    return {"seg_guidance_config": [SmoothedEnergyGuidanceConfig(indices=indices, fqn=fqn)
                                    for fqn, indices in blocks.items()]}


def skipped_blocks(family: Family, module, layers: str) -> dict[str, list[int]]:
    """Block-list path -> indices for skip-layer guidance: "7, 8" index the family's main blocks, "single.12" its
    list of that prefix (Flux's single-stream blocks)."""
    lists = family.skip_layer_lists
    blocks: dict[str, list[int]] = {}
    for entry in [part.strip() for part in layers.split(",") if part.strip()]:
        prefix, _, number = entry.rpartition(".")
        path = lists.get(prefix)
        count = len(getattr(module, path, ())) if path else 0
        if not number.isdigit() or int(number) >= count:
            names = ", ".join(f"{p + '.' if p else ''}0" + (f"-{n - 1}" if n > 1 else "")
                              for p, n in ((p, len(getattr(module, q))) for p, q in lists.items()))
            raise InputError("layers", f"'{entry}' is not a transformer block of this {family.display_name} model.",
                             f"use block numbers it has: {names}.")
        blocks.setdefault(path, []).append(int(number))
    if not blocks:
        raise InputError("layers", "no layers given.", "write transformer block numbers, e.g. 7, 8, 9.")
    return blocks


class BlockSkip:
    """Whole transformer blocks left out of a call (skip-layer guidance): each block returns its inputs, in the
    order the block itself returns its streams (diffusers' TransformerBlockRegistry says which). diffusers 0.42's
    own TransformerBlockSkipHook returns (hidden, encoder) whatever that order, which swaps Flux's streams (its
    blocks return (encoder, hidden)), and looks the image stream up as "hidden_states", which Z-Image's blocks call
    x; SkipLayerGuidance's hooks are therefore not used."""

    def __init__(self, module, blocks: dict[str, list[int]]):
        from diffusers.hooks._helpers import TransformerBlockRegistry

        self.blocks = [module.get_submodule(f"{path}.{index}") for path, indices in blocks.items()
                       for index in indices]
        self.layouts = [TransformerBlockRegistry.get(type(block)) for block in self.blocks]

    @staticmethod
    def _identity(block, layout):
        import inspect

        names = list(inspect.signature(type(block).forward).parameters)[1:]

        # diffusers 0.42 registers Z-Image's block with the default argument name although its image stream is
        # called x: a name the block does not take means its first argument
        hidden_name = layout.hidden_states_argument_name if layout.hidden_states_argument_name in names else names[0]

        def returns_inputs(*args, **kwargs):
            given = {**dict(zip(names, args)), **kwargs}
            hidden = given[hidden_name]
            if layout.return_encoder_hidden_states_index is None:
                return hidden
            streams = [None, None]
            streams[layout.return_hidden_states_index] = hidden
            streams[layout.return_encoder_hidden_states_index] = given[layout.encoder_hidden_states_argument_name]
            return tuple(streams)
        return returns_inputs

    @contextlib.contextmanager
    def __call__(self, _module):
        saved = [block.__dict__.get("forward") for block in self.blocks]
        for block, layout in zip(self.blocks, self.layouts):
            block.forward = self._identity(block, layout)
        try:
            yield
        finally:
            for block, forward in zip(self.blocks, saved):
                if forward is None:
                    del block.forward
                else:
                    block.forward = forward


class PerturbedAttention:
    """PAG as diffusers' PAG pipelines run it (PAGMixin): the perturbed prediction is one more half of the batched
    call, and the self-attention layers named by ``layers`` get the pipeline's PAG processor for that call (the
    family's pair: one for a batch that also holds CFG's halves, one for [positive, perturbed])."""

    def __init__(self, family: Family, module, layers: str):
        if not family.pag_processors:
            raise InputError("guider", f"perturbed-attention guidance has no diffusers pipeline for "
                             f"{family.display_name} (diffusers' PAG attention processors do not take its attention).",
                             "use PAG with an SD1.x/2.x, SDXL or SD3 model, or another guider.")
        import diffusers.models.attention_processor as processors

        self.modules = [layer for _, layer in self_attention_layers(module, layers, family)
                        if family.takes_pag_processor(layer)]
        if not self.modules:
            raise InputError("layers", f"'{layers}' selects no layer that takes {family.display_name}'s PAG processor "
                             "(its joint attention).", "name transformer blocks with joint attention, e.g. blocks.1.")
        self.with_cfg, self.alone = (getattr(processors, name)() for name in family.pag_processors)

    def around(self, with_cfg: bool):
        processor = self.with_cfg if with_cfg else self.alone

        @contextlib.contextmanager
        def perturbed(_module):
            saved = [module.processor for module in self.modules]
            for module in self.modules:
                module.processor = processor
            try:
                yield
            finally:
                for module, original in zip(self.modules, saved):
                    module.processor = original
        return perturbed


def self_attention_layers(module, layers: str, family: Family) -> list[tuple[str, Any]]:
    """(name, module) of the self-attention layers that ``layers`` selects, by the PAG pipelines' rule for
    ``pag_applied_layers``: each comma-separated entry is a regular expression searched in the module names
    ("mid", "up_blocks.1", SD3's "blocks.7"), a number at its end not matching another number ending a name
    (diffusers' PAGMixin). "down.N" / "up.N" (which match no diffusers layer name) are short for down_blocks.N /
    up_blocks.N."""
    from diffusers.models.attention_processor import Attention

    entries = [entry.strip() for entry in layers.split(",") if entry.strip()]
    if not entries:
        raise InputError("layers", "no layers given.",
                         "name the layers to perturb, e.g. mid (U-Net) or blocks.7 (SD3).")
    selected: dict[str, Any] = {}
    for entry in entries:
        shorthand = re.fullmatch(r"(down|up)\.(\d+)", entry)
        pattern_text = f"{shorthand[1]}_blocks\\.{shorthand[2]}\\." if shorthand else entry
        try:
            pattern = re.compile(pattern_text)
        except re.error as error:
            raise InputError("layers", f"'{entry}' is not a valid layer pattern ({error}).",
                             "write layer names such as mid, up.1 or blocks.7.") from error
        tail = entry.split(".")[-1]
        found = [(name, m) for name, m in module.named_modules()
                 if isinstance(m, Attention) and not m.is_cross_attention and pattern.search(name)
                 and not (tail.isnumeric() and tail == name.split(".")[-1])]
        if not found:
            raise InputError("layers", f"'{entry}' names no self-attention layer of this {family.display_name} model.",
                             "use mid, down.N or up.N for U-Net blocks with attention (e.g. mid, up.1), or blocks.N "
                             "for SD3 transformer blocks.")
        selected.update(found)
    return list(selected.items())


class Guidance:
    def __init__(self, guider: Guider, inputs: ModelInputs, family: Family, module=None):
        """``family`` and ``module``: the denoiser, for guiders that perturb its layers (PAG, SEG)."""
        self.guider, self.inputs, self.family = guider, inputs, family
        self.takes_cfg = inputs.cfg is not None or inputs.uncond is not None  # as the family's adapter built them
        self.diffusers_guider = self.perturbed_attention = self.block_skip = None
        self.options = dict(guider.method_options)
        self.timestep = None
        if guider.method != "cfg" and inputs.uncond is None:
            raise InputError("guider", f"{GUIDER_NAMES[guider.method]} guides with predictions besides the "
                             "positive one, which this guidance-distilled model (e.g. LCM: the scale is an embedding) "
                             "does not take.", "use CFG Guider, whose cfg such a model reads as its embedded guidance.")
        if guider.method == "pag":  # as the PAG pipelines run it
            self.perturbed_attention = PerturbedAttention(family, module, self.options["layers"])
        elif guider.method != "cfg":  # run as diffusers' modular pipelines run it: its own window, separate calls
            import diffusers.guiders

            cls = getattr(diffusers.guiders, DIFFUSERS_GUIDERS[guider.method])
            options = dict(self.options)
            if "layers" in options:  # the attention layers to perturb
                options.update(perturbation_config(guider.method, family, module, options.pop("layers")))
            if guider.method == "slg":
                self.block_skip = BlockSkip(module, skipped_blocks(family, module, self.options["layers"]))
            if "guidance_scales" in options:  # FDG: one scale per frequency level instead of one
                options["guidance_scales"] = list(options["guidance_scales"])
            else:
                options["guidance_scale"] = guider.scale
            if guider.method == "fdg":
                self.check_frequency_split(family)
            self.diffusers_guider = cls(guidance_rescale=guider.rescale, start=guider.start_percent,
                                        stop=guider.end_percent, **options)

    @staticmethod
    def check_frequency_split(family: Family) -> None:
        """FDG splits predictions by frequency over their image grid: they must be spatial, and kornia there."""
        if family.packs_latents:
            raise InputError("guider", f"FDG splits the prediction by frequency over the latent image, but "
                             f"{family.display_name}'s denoiser predicts packed patches.",
                             "use another guider (CFG, APG, CFG-Zero*) with this model.")
        try:
            import kornia  # noqa: F401
        except ImportError as error:
            raise InputError("guider", "FDG needs the kornia package, which is not installed.",
                             "run: pip install kornia (in the Python that runs ComfyUI), then restart.") from error

    @property
    def batch_copies(self) -> int:
        """How many copies of the batch the widest call of a run holds (2 when CFG runs batched, 3 with PAG's
        perturbed half): what ControlNet inputs are prepared for."""
        if self.diffusers_guider is not None or not (self.takes_cfg and self.guider.guides):
            copies = 1
        else:
            copies = 2 if self.inputs.cfg is not None else 1
        return copies + 1 if self.perturbed_attention is not None else copies

    def calls(self, step: int, total: int, timestep=None) -> list[Call]:
        """The denoiser calls this step needs, in the order the reference runs them."""
        self.timestep = timestep
        if self.diffusers_guider is not None:  # the modular loop, each step: set_state, prepare_inputs, and per
            guider = self.diffusers_guider  # batch prepare_models / predict / cleanup_models
            guider.set_state(step, total, timestep)
            # without a negative prompt the "negative" inputs are the positive's (the loop builds them so)
            batches = guider.prepare_inputs({"prompt": ("positive", "negative")})
            names = [getattr(batch, guider._identifier_key) for batch in batches]
            if self.block_skip is not None:
                return [Call((batch.prompt,), (name,), self.block_skip if name == "pred_cond_skip" else None)
                        for batch, name in zip(batches, names)]
            return [Call((batch.prompt,), (name,), self._prepared(guider)) for batch, name in zip(batches, names)]
        cfg = self.takes_cfg and self.guider.active_at(step, total)
        if self.perturbed_attention is not None and in_window(step, total, self.options["start"], self.options["end"]):
            if cfg:
                return [Call(("negative", "positive", "positive"), ("pred_uncond", "pred_cond", "pred_perturbed"),
                             self.perturbed_attention.around(with_cfg=True))]
            return [Call(("positive", "positive"), ("pred_cond", "pred_perturbed"),
                         self.perturbed_attention.around(with_cfg=False))]
        if not cfg:
            return [Call(("positive",))]
        calls = [self.batched_cfg] if self.inputs.cfg is not None else [Call(("positive",)),
                                                                   Call(("negative",), ("pred_uncond",))]
        if self.inputs.skip is not None and self.guider.skip_active_at(step, total):
            calls.append(Call(("skip",), ("pred_cond_skip",)))
        return calls

    @property
    def batched_cfg(self) -> Call:
        """CFG as one call, its halves in the order the family's pipeline batches them."""
        halves = self.family.cfg_halves
        return Call(halves, tuple(PREDICTION_OF[half] for half in halves))

    @staticmethod
    def _prepared(guider):
        @contextlib.contextmanager
        def prepared(module):
            guider.prepare_models(module)
            try:
                yield
            finally:
                guider.cleanup_models(module)
        return prepared

    def call_inputs(self, call: Call) -> dict[str, Any]:
        """The denoiser's keyword arguments for a call: the family's own for one prompt or batched CFG, else the
        halves' inputs batched in order."""
        if self.inputs.cfg is not None and call.halves == self.family.cfg_halves:
            return self.inputs.cfg
        if call.halves == ("skip",):
            return self.inputs.skip
        parts = [self.inputs.cond if half == "positive" else self.inputs.uncond for half in call.halves]
        return parts[0] if len(parts) == 1 else self.family.batched_inputs(parts)

    def combine(self, predictions: dict[str, torch.Tensor]) -> torch.Tensor:
        """The guided prediction from the step's predictions (``pred_cond``, ``pred_uncond``, ``pred_cond_skip``,
        ``pred_perturbed``): CFG, plus skip-layer guidance as StableDiffusion3Pipeline applies it or PAG as the PAG
        pipelines apply it, then diffusers' guidance rescale; the positive prediction alone when the step needed
        no other. A diffusers guider combines them itself (CFG-Zero* may zero even a lone positive prediction)."""
        if self.diffusers_guider is not None:
            return self.diffusers_guider.forward(**predictions).pred
        cond, uncond = predictions["pred_cond"], predictions.get("pred_uncond")
        guider = self.guider
        guided = cond if uncond is None else self.family.combine_cfg(cond, uncond, guider.scale)
        if "pred_perturbed" in predictions:
            guided = guided + self.pag_scale() * (cond - predictions["pred_perturbed"])
        if uncond is None:
            return guided
        if "pred_cond_skip" in predictions:
            guided = guided + (cond - predictions["pred_cond_skip"]) * guider.skip_scale
        if guider.rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, cond, guidance_rescale=guider.rescale)
        return guided

    def pag_scale(self):
        """PAG's scale at this step; with an adaptive scale it fades as the PAG pipelines fade it (by 1000 - t)."""
        scale, adaptive = self.options["scale"], self.options.get("adaptive_scale", 0.0)
        if adaptive <= 0:
            return scale
        faded = scale - adaptive * (1000 - self.timestep)
        return 0 if faded < 0 else faded
