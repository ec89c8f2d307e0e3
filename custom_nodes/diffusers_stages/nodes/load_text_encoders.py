from __future__ import annotations

import dataclasses
import os

from .. import host
from ..engine import weights
from ..engine.errors import InputError
from ..engine.families import all_families
from ..engine.gguf_files import refuse_unread_gguf
from ..engine.text_files import LLM_KINDS, TEXT_KINDS, text_encoder_from_parts, text_part_from_tensors
from ..engine.weights import open_safetensors, read_tensors
from .base import TEXT_ENCODER, StageNode, category
from .model_files import locate, tokenizer_dirs

FOLDER = "text_encoders"  # ComfyUI also lists the legacy models/clip folder under this name
NONE = "none"


def families_with_text_files():
    return {family.id: family for family in all_families() if family.text_slots}


class LoadTextEncoders(StageNode):
    NODE_ID = "DS_LoadTextEncoders"
    DISPLAY_NAME = "Load Text Encoders (Diffusers)"
    VERSION = "1.1.0"  # 1.1.0: llm (Z-Image's Qwen3), after dtype so that earlier workflows keep their widget order
    MODEL_FILE_INPUTS = {"clip_l": FOLDER, "clip_g": FOLDER, "t5": FOLDER, "llm": FOLDER}
    CATEGORY = category("loaders")
    DESCRIPTION = ("Loads a model family's text encoders from separate files in models/text_encoders: Flux.1 takes "
                   "CLIP-L + T5-XXL, SD3/3.5 CLIP-L + CLIP-G (+ T5-XXL, optional), SDXL CLIP-L + CLIP-G, SD1.x "
                   "CLIP-L, Z-Image Qwen3 4B, Flux.2 klein Qwen3 4B or 8B and Flux.2 dev Mistral 3 Small, Qwen-Image "
                   "Qwen2.5-VL 7B. The tokenizers "
                   "come from ComfyUI's own, the open-clip vocabulary and, for T5 and Qwen outside ComfyUI, "
                   "models/text_encoders/t5_tokenizer or qwen_tokenizer, a "
                   "diffusers folder of the family, or the Hugging Face cache.")
    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The text encoders with their tokenizers; connect to Text Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = [NONE, *host.list_model_files(FOLDER, weights.WEIGHT_SUFFIXES)]
        inputs = {"family": (list(families_with_text_files()), {
            "tooltip": "The model family the text encoders are for (it decides which files are needed and how the "
                       "prompt is encoded): sd15 = SD1.x, sdxl = SDXL, sd3 = SD3/3.5, flux = Flux.1, flux2 = "
                       "Flux.2 (dev or klein, by the llm file), zimage = Z-Image, qwenimage = Qwen-Image."})}

        def file_input(kind):
            return (files, {"default": NONE, "tooltip": f"The {TEXT_KINDS[kind]} text encoder file, or none if the "
                                                        "family does not use it."})
        inputs.update((kind, file_input(kind)) for kind in ("clip_l", "clip_g", "t5"))
        inputs["dtype"] = (["auto", *weights.DTYPES], {"default": "auto",
                                                       "tooltip": "Weight precision. auto: the host's choice."})
        inputs["llm"] = (files, {"default": NONE, "tooltip": "The LLM text encoder file of families that use one "
                                                             "(Z-Image and Flux.2 klein 4B: Qwen3 4B, "
                                                             "qwen_3_4b.safetensors; Flux.2 klein 9B: Qwen3 8B; "
                                                             "Flux.2 dev: Mistral 3 Small, "
                                                             "mistral_3_small_flux2_bf16.safetensors; "
                                                             "Qwen-Image: Qwen2.5-VL 7B, qwen_2.5_vl_7b.safetensors)"
                                                             ", or none."})
        return {"required": inputs}

    @classmethod
    def VALIDATE_INPUTS(cls, family, clip_l, clip_g, t5, llm=NONE):
        return cls.check_call(cls.files, family, {"clip_l": clip_l, "clip_g": clip_g, "t5": t5, "llm": llm})

    @staticmethod
    def files(family_id: str, chosen: dict[str, str]) -> tuple[object, dict[str, str]]:
        """(family, {kind: path}) for the chosen files; refuses missing required files and files the family does not
        use."""
        family = families_with_text_files().get(family_id)
        if family is None:
            raise InputError("family", f"'{family_id}' is not a family with separate text encoder files.",
                             f"choose one of: {', '.join(families_with_text_files())}.")
        kinds = {slot.kind: slot for slot in family.text_slots}
        llm = next((kind for kind in kinds if kind in LLM_KINDS), None)
        chosen = dict(chosen)
        if "llm" in chosen:  # the llm input holds the family's LLM text encoder, whichever model that is
            name = chosen.pop("llm")
            if llm is None and name not in (None, "", NONE):
                raise InputError("llm", f"{family.display_name} takes no LLM text encoder.", "set llm to none.")
            chosen[llm or "llm"] = name
        paths = {}
        for kind, name in chosen.items():
            field = "llm" if kind in LLM_KINDS or kind == "llm" else kind
            if name in (None, "", NONE):
                if kind in kinds and kinds[kind].required:
                    raise InputError(field, f"{family.display_name} needs a {TEXT_KINDS[kind]} text encoder.",
                                     f"choose the {TEXT_KINDS[kind]} file from models/text_encoders.")
                continue
            if kind not in kinds:
                raise InputError(field, f"{family.display_name} has no {TEXT_KINDS[kind]} text encoder.",
                                 f"set {field} to none.")
            paths[kind] = locate(FOLDER, name, field)
        return family, paths

    def run(self, family, clip_l=NONE, clip_g=NONE, t5=NONE, dtype="auto", llm=NONE):
        family, paths = self.files(family, {"clip_l": clip_l, "clip_g": clip_g, "t5": t5, "llm": llm})
        torch_dtype = host.default_dtype(family) if dtype == "auto" else weights.DTYPES[dtype]
        slots = {slot.kind: slot for slot in family.text_slots}
        parts = {}
        for kind, path in paths.items():
            field = "llm" if kind in LLM_KINDS else kind
            open_safetensors(path, field, weights.WEIGHT_SUFFIXES)
            refuse_unread_gguf(path, field)
            parts[kind] = text_part_from_tensors(read_tensors(path), slots[kind], torch_dtype, host.clip_vocab_dirs(),
                                                 tokenizer_dirs(kind), field, f"'{os.path.basename(path)}'")
        text_encoder = text_encoder_from_parts(family, parts, " + ".join(paths.values()))
        return (dataclasses.replace(text_encoder, residency=host.manage(text_encoder.modules, "text_encoder")),)
