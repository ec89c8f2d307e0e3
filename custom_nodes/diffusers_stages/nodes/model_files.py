"""Finding a user-chosen model name in the host's model folders, refusing unsafe names."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator

from .. import host
from ..engine import loading, weights
from ..engine.errors import InputError

T5_TOKENIZER_REPO = "google/t5-v1_1-xxl"  # the tokenizer SD3's and Flux's T5-XXL were trained with


def locate(kind: str, relative: str, input_name: str, is_model: Callable[[str], bool] = os.path.isfile) -> str:
    """The first ``<root>/<relative>`` of the ``kind`` folders that ``is_model`` accepts; pickle files and names
    leaving the folder are refused, and a missing model names every folder searched."""
    weights.refuse_pickle(relative, input_name)
    for root in host.model_roots(kind):
        path = weights.safe_join(root, relative, input_name)
        if is_model(path):
            return path
    where = ", ".join(host.model_roots(kind)) or f"models/{kind}"
    raise InputError(input_name, f"'{relative}' was not found in {where}.",
                     f"put it in models/{kind} and refresh the node list.")


def t5_tokenizer_dirs() -> Iterator[str]:
    """Where a T5 tokenizer may be, in order: models/text_encoders/t5_tokenizer, the host's own, the Hugging Face
    cache of google/t5-v1_1-xxl, then the T5 tokenizers of SD3/Flux diffusers folders in models/diffusers. Lazy:
    the later (slower) places are only looked at if the earlier ones had no tokenizer that fits."""
    yield from (os.path.join(root, "t5_tokenizer") for root in host.model_roots("text_encoders"))
    yield from host.t5_tokenizer_dirs()
    try:
        from huggingface_hub import snapshot_download

        yield snapshot_download(T5_TOKENIZER_REPO, allow_patterns=["*.json", "spiece.model"], local_files_only=True)
    except Exception:  # not cached: nothing to add
        pass
    for root in host.model_roots("diffusers"):
        for folder in loading.list_diffusers_folders([root]):
            yield from (os.path.join(root, folder, sub) for sub in ("tokenizer_3", "tokenizer_2"))


# Hugging Face repos whose tokenizer/ is Qwen3's
QWEN_TOKENIZER_REPOS = ("Tongyi-MAI/Z-Image-Turbo", "black-forest-labs/FLUX.2-klein-4B",
                        "black-forest-labs/FLUX.2-klein-9B", "Qwen/Qwen-Image")


def qwen_tokenizer_dirs() -> Iterator[str]:
    """Where a Qwen tokenizer may be, in order: models/text_encoders/qwen_tokenizer, the host's own, the tokenizers
    of diffusers folders in models/diffusers (Z-Image, Flux.2 klein, Qwen-Image), then the Hugging Face cache of
    those models. Lazy, as ``t5_tokenizer_dirs``."""
    yield from (os.path.join(root, "qwen_tokenizer") for root in host.model_roots("text_encoders"))
    yield from host.qwen_tokenizer_dirs()
    yield from llm_tokenizer_dirs(QWEN_TOKENIZER_REPOS)


def mistral_tokenizer_dirs() -> Iterator[str]:
    """Where Flux.2 dev's Mistral tokenizer may be: models/text_encoders/mistral_tokenizer, the tokenizers of
    diffusers folders in models/diffusers, the Hugging Face cache of black-forest-labs/FLUX.2-dev."""
    yield from (os.path.join(root, "mistral_tokenizer") for root in host.model_roots("text_encoders"))
    yield from llm_tokenizer_dirs(("black-forest-labs/FLUX.2-dev",))


def llm_tokenizer_dirs(repos) -> Iterator[str]:
    """The tokenizer folders of the diffusers folders in models/diffusers, then of ``repos`` in the HF cache."""
    for root in host.model_roots("diffusers"):
        for folder in loading.list_diffusers_folders([root]):
            yield os.path.join(root, folder, "tokenizer")
    for repo in repos:
        try:
            from huggingface_hub import snapshot_download

            yield os.path.join(snapshot_download(repo, allow_patterns=["tokenizer/*"], local_files_only=True),
                               "tokenizer")
        except Exception:  # not cached: nothing to add
            pass


def tokenizer_dirs(kind: str) -> Iterable[str]:
    """Where the tokenizer of a text encoder of this kind may be (CLIP tokenizers are built from a vocabulary)."""
    if kind == "flux2_llm":  # klein's Qwen3 or dev's Mistral: whichever the file is
        return itertools.chain(qwen_tokenizer_dirs(), mistral_tokenizer_dirs())
    return {"t5": t5_tokenizer_dirs, "qwen3": qwen_tokenizer_dirs, "qwen25vl": qwen_tokenizer_dirs}.get(kind, tuple)()


def existing_path(kind: str, relative) -> str | None:
    """The file or folder ``relative`` names in the ``kind`` model folders, or None (not a name, not found)."""
    if not isinstance(relative, str) or not relative or relative == "none":
        return None
    try:
        return locate(kind, relative, "model", os.path.exists)
    except InputError:
        return None
