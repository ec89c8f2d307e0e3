"""Finding and loading models: diffusers folders, single-file checkpoints, Hugging Face repo ids.

Only safetensors (and diffusers folders of safetensors) are loaded: pickle formats
(.ckpt, .pt, .bin) can run code when unpickled and are refused. Loading never
touches the network unless the user allowed a download for a repo id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable

import torch

from .errors import InputError
from .families import Family, LoadedModel, all_families, family_for_checkpoint, family_for_pipeline_class

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pt2")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTIONS = ("auto", "epsilon", "v_prediction")
# a dtype, or a function giving the dtype for the family once it is known (how a node passes "auto")
DtypeChoice = torch.dtype | Callable[[Family], torch.dtype]  # "auto": what the model's scheduler config says
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def safe_join(root: str, name: str, input_name: str = "model", folder: str = "model") -> str:
    """``root/name`` for a name chosen in a node; refuses absolute paths and any '..' step out of ``root``.
    ``folder`` names the kind of folder in the message (model, input, output)."""
    parts = re.split(r"[\\/]+", name)
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise InputError(input_name, f"'{name}' points outside the {folder} folder.",
                         f"choose a name from the list; names are relative to the {folder} folder and may not "
                         "contain '..'.")
    return os.path.join(root, *[p for p in parts if p])


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


def read_checkpoint_shapes(path: str, input_name: str = "model") -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header (no weights loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        if _looks_like_pickle(path):
            raise InputError(input_name, f"'{os.path.basename(path)}' is a pickle (PyTorch .ckpt/.pt) file with a "
                             ".safetensors name; pickle files can run arbitrary code when loaded, so this pack does "
                             "not open them.", "use the real .safetensors release of the model.") from exc
        raise InputError(input_name, f"'{os.path.basename(path)}' is not a readable safetensors file ({exc}).",
                         "the file is damaged or incomplete: download it again.") from exc


def _looks_like_pickle(path: str) -> bool:
    """torch.save writes a zip archive (PK..), older PyTorch a bare pickle (protocol byte 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith((b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"))


def refuse_pickle(path: str, input_name: str = "model") -> None:
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise InputError(
            input_name,
            f"'{os.path.basename(path)}' is a pickle checkpoint; pickle files can run arbitrary code when loaded, "
            "so this pack does not open them.",
            "use the .safetensors release of the model, or convert the file once with a trusted tool.",
        )


def resolve_dtype(dtype: DtypeChoice, family: Family) -> torch.dtype:
    return dtype(family) if callable(dtype) else dtype


def open_safetensors(path: str, input_name: str = "model") -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors model file chosen in ``input_name``; pickle files, other formats and missing
    files are refused with the input named."""
    refuse_pickle(path, input_name)
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        raise InputError(input_name, f"'{os.path.basename(path)}' is not a .safetensors file.",
                         "choose a .safetensors model file.")
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{path}' does not exist.",
                         "put the file in its ComfyUI model folder and refresh the node list.")
    return read_checkpoint_shapes(path, input_name)


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
