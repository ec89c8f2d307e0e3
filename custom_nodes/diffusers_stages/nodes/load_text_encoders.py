from __future__ import annotations

import dataclasses
import os

from .. import host
from ..engine import weights
from ..engine.errors import InputError
from ..engine.families import all_families
from ..engine.text_files import TEXT_KINDS, text_encoder_from_parts, text_part_from_tensors
from ..engine.weights import open_safetensors, read_tensors
from .base import TEXT_ENCODER, StageNode, category
from .model_files import locate, t5_tokenizer_dirs

FOLDER = "text_encoders"  # ComfyUI also lists the legacy models/clip folder under this name
NONE = "none"


def families_with_text_files():
    return {family.id: family for family in all_families() if family.text_slots}


class LoadTextEncoders(StageNode):
    NODE_ID = "DS_LoadTextEncoders"
    DISPLAY_NAME = "Load Text Encoders (Diffusers)"
    VERSION = "1.0.0"
    MODEL_FILE_INPUTS = {"clip_l": FOLDER, "clip_g": FOLDER, "t5": FOLDER}
    CATEGORY = category("loaders")
    DESCRIPTION = ("Loads a model family's text encoders from separate files in models/text_encoders: Flux.1 takes "
                   "CLIP-L + T5-XXL, SD3/3.5 CLIP-L + CLIP-G (+ T5-XXL, optional), SDXL CLIP-L + CLIP-G, SD1.x "
                   "CLIP-L. The tokenizers come from "
                   "ComfyUI's own, the open-clip vocabulary and, for T5 outside ComfyUI, "
                   "models/text_encoders/t5_tokenizer or a diffusers folder of the family.")
    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The text encoders with their tokenizers; connect to Text Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = [NONE, *host.list_model_files(FOLDER, weights.SAFETENSORS_SUFFIXES)]
        inputs = {"family": (list(families_with_text_files()), {
            "tooltip": "The model family the text encoders are for (it decides which files are needed and how the "
                       "prompt is encoded): sd15 = SD1.x, sdxl = SDXL, sd3 = SD3/3.5, flux = Flux.1."})}
        for kind, label in TEXT_KINDS.items():
            inputs[kind] = (files, {"default": NONE, "tooltip": f"The {label} text encoder file, or none if the "
                                                                "family does not use it."})
        inputs["dtype"] = (["auto", *weights.DTYPES], {"default": "auto",
                                                       "tooltip": "Weight precision. auto: the host's choice."})
        return {"required": inputs}

    @classmethod
    def VALIDATE_INPUTS(cls, family, clip_l, clip_g, t5):
        return cls.check_call(cls.files, family, {"clip_l": clip_l, "clip_g": clip_g, "t5": t5})

    @staticmethod
    def files(family_id: str, chosen: dict[str, str]) -> tuple[object, dict[str, str]]:
        """(family, {kind: path}) for the chosen files; refuses missing required files and files the family does not
        use."""
        family = families_with_text_files().get(family_id)
        if family is None:
            raise InputError("family", f"'{family_id}' is not a family with separate text encoder files.",
                             f"choose one of: {', '.join(families_with_text_files())}.")
        kinds = {slot.kind: slot for slot in family.text_slots}
        paths = {}
        for kind, name in chosen.items():
            if name in (None, "", NONE):
                if kind in kinds and kinds[kind].required:
                    raise InputError(kind, f"{family.display_name} needs a {TEXT_KINDS[kind]} text encoder.",
                                     f"choose the {TEXT_KINDS[kind]} file from models/text_encoders.")
                continue
            if kind not in kinds:
                raise InputError(kind, f"{family.display_name} has no {TEXT_KINDS[kind]} text encoder.",
                                 f"set {kind} to none.")
            paths[kind] = locate(FOLDER, name, kind)
        return family, paths

    def run(self, family, clip_l=NONE, clip_g=NONE, t5=NONE, dtype="auto"):
        family, paths = self.files(family, {"clip_l": clip_l, "clip_g": clip_g, "t5": t5})
        torch_dtype = host.default_dtype(family) if dtype == "auto" else weights.DTYPES[dtype]
        slots = {slot.kind: slot for slot in family.text_slots}
        parts = {}
        for kind, path in paths.items():
            open_safetensors(path, kind)
            parts[kind] = text_part_from_tensors(read_tensors(path), slots[kind], torch_dtype, host.clip_vocab_dirs(),
                                                 t5_tokenizer_dirs() if kind == "t5" else (), kind,
                                                 f"'{os.path.basename(path)}'")
        text_encoder = text_encoder_from_parts(family, parts, " + ".join(paths.values()))
        return (dataclasses.replace(text_encoder, residency=host.manage(text_encoder.modules, "text_encoder")),)
