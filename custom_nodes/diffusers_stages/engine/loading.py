"""Loading whole models, the entry points above the family adapters: diffusers folders, single-file checkpoints,
Hugging Face repo ids. Where a file format is read: ``weights`` (safetensors, pickle refusal, meta-device
building), ``text_files`` (CLIP/T5 text encoders from tensors), ``vae_loading`` (VAEs from tensors),
``families/dit_files`` and ``families/bundled_configs`` (SD3/Flux transformers, SD/SDXL configs from shapes),
``families/folders`` (diffusers folder components), ``component_files`` (a denoiser file of any family).
Loading never touches the network unless the user allowed a download for a repo id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable

from .errors import InputError
from .families import all_families, family_for_checkpoint, family_for_pipeline_class
from .family import LoadedModel
from .weights import DtypeChoice, open_safetensors, resolve_dtype

PREDICTIONS = ("auto", "epsilon", "v_prediction")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def list_diffusers_folders(roots: list[str]) -> list[str]:
    """Folders (relative, '/'-separated) under ``roots`` that hold a ``model_index.json``."""
    found = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for current, dirs, files in os.walk(root, followlinks=True):
            if "model_index.json" in files:
                found.add(os.path.relpath(current, root).replace(os.sep, "/"))
                dirs.clear()  # a pipeline's component folders are not models of their own
    return sorted(found)


def supported_families() -> str:
    return ", ".join(family.display_name for family in all_families())


def load_single_file(path: str, dtype: DtypeChoice, prediction: str = "auto",
                     vocab_dirs: tuple[str, ...] = (), t5_dirs: Iterable[str] = ()) -> LoadedModel:
    """``vocab_dirs``: extra places with CLIP BPE files; ``t5_dirs``: places to look for a T5 tokenizer."""
    shapes = open_safetensors(path)
    family = family_for_checkpoint(set(shapes))
    if family is None:
        raise InputError("model", f"'{os.path.basename(path)}' is not a checkpoint of a supported model family "
                         f"(supported: {supported_families()}).",
                         "check that the file is a full checkpoint (denoiser + VAE, usually with text encoders), not a "
                         "LoRA, VAE or ControlNet file; a denoiser alone goes in models/diffusion_models and loads "
                         "with 'Load Diffusion Model (Diffusers)'.")
    with unreadable_weights_named(path, "model"):
        return family.load_single_file(path, shapes, resolve_dtype(dtype, family), prediction, vocab_dirs, t5_dirs)


@contextlib.contextmanager
def unreadable_weights_named(path: str, input_name: str):
    """diffusers/transformers/torch refuse a tensor of the wrong shape (or dtype) with a ValueError or
    RuntimeError deep inside their loaders; the user learns which file and input it was."""
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        if isinstance(exc, InputError):
            raise
        detail = " ".join(str(exc).split())[:300]
        raise InputError(input_name, f"the weights in '{os.path.basename(path)}' do not fit the model they "
                         f"describe ({detail}).", "the file is damaged, or a variant this version cannot read: "
                         "download it again, or use the model's diffusers folder.") from exc


def load_folder(path: str, dtype: DtypeChoice, prediction: str = "auto") -> LoadedModel:
    index_path = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_path):
        raise InputError("model", f"'{path}' is not a diffusers model folder (no model_index.json).",
                         "put the whole diffusers folder (with model_index.json) in ComfyUI's models/diffusers.")
    with open(index_path, encoding="utf-8") as f:
        class_name = json.load(f).get("_class_name", "")
    family = family_for_pipeline_class(class_name)
    if family is None:
        raise InputError("model", f"'{os.path.basename(path)}' is a {class_name or 'unknown'} model, a family this "
                         f"version of the pack cannot run (supported: {supported_families()}).",
                         f"load a model of a supported family ({supported_families()}).")
    with unreadable_weights_named(path, "model"):
        return family.load_folder(path, resolve_dtype(dtype, family), prediction)


def load_repo_id(repo_id: str, dtype: DtypeChoice, prediction: str = "auto",
                 allow_download: bool = False) -> LoadedModel:
    """A Hugging Face repo id: the local cache first; a download only if the user allowed it."""
    from huggingface_hub import snapshot_download

    if not _REPO_ID.match(repo_id):
        raise InputError("repo_id", f"'{repo_id}' is not a Hugging Face repo id.",
                         "write it as owner/name, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5.")
    patterns = ["model_index.json", "*/config.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception as exc:  # huggingface_hub raises several error types for "not cached"
        if not allow_download:
            raise InputError("repo_id", f"'{repo_id}' is not in the local Hugging Face cache, and downloads are off.",
                             "turn on allow_download (needs network), download it once with "
                             f"`hf download {repo_id}`, or put the folder in models/diffusers.") from exc
        try:
            path = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as download_exc:
            raise InputError("repo_id", f"downloading '{repo_id}' failed ({download_exc}).",
                             "check the repo id, your network and, for gated models, your Hugging Face login."
                             ) from download_exc
    return load_folder(path, dtype, prediction)
