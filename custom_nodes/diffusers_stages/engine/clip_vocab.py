"""The CLIP BPE tokenizer for single-file checkpoints, built offline.

A single-file checkpoint carries no tokenizer. Every CLIP text encoder of the SD
families (OpenAI CLIP-L, OpenCLIP ViT-H/bigG) uses the same byte-level BPE: a
vocabulary of 256 byte symbols, the same 256 with ``</w>``, one entry per merge
rule, then ``<|startoftext|>`` and ``<|endoftext|>``. So the whole tokenizer
follows from the list of merge rules, and a tokenizer for an encoder with a
vocabulary of V entries uses the first V - 514 merges (V = 49408 for every real
model; smaller only for tiny test models).

The merge rules are read from the first of these that exists (none needs the network):
1. a directory holding ``vocab.json`` + ``merges.txt`` (ComfyUI ships ``comfy/sd1_tokenizer``);
2. ``bpe_simple_vocab_16e6.txt.gz`` inside an installed ``open-clip-torch`` package
   (read as a data file; ``open_clip`` itself is never imported);
3. the tokenizer of ``openai/clip-vit-large-patch14`` in the local Hugging Face cache.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os

from .errors import InputError

FULL_VOCAB_SIZE = 49408
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> list[str]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values, in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _merges_from_lines(lines: list[str]) -> tuple[tuple[str, str], ...]:
    """Merge rules from a merges file; its first line is a version header in every known source."""
    merges = []
    for line in lines[1:]:
        if not line:
            continue
        parts = line.split()
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return tuple(merges)


def _open_clip_bpe_file() -> str | None:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "bpe_simple_vocab_16e6.txt.gz")
        if os.path.isfile(path):
            return path
    return None


def _hf_cache_merges_file() -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    path = try_to_load_from_cache("openai/clip-vit-large-patch14", "merges.txt")
    return path if isinstance(path, str) else None


@functools.lru_cache(maxsize=4)
def load_merges(extra_dirs: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """All CLIP merge rules, from the first source that has them."""
    for directory in extra_dirs:
        path = os.path.join(directory, "merges.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return _merges_from_lines(f.read().split("\n"))
    bpe = _open_clip_bpe_file()
    if bpe:
        with gzip.open(bpe, "rt", encoding="utf-8") as f:
            return _merges_from_lines(f.read().split("\n"))
    cached = _hf_cache_merges_file()
    if cached:
        with open(cached, encoding="utf-8") as f:
            return _merges_from_lines(f.read().split("\n"))
    raise InputError(
        "model",
        "a single-file checkpoint has no tokenizer, and no CLIP BPE vocabulary was found on this machine.",
        "run `python install.py` in the pack folder (it installs `open-clip-torch` without dependencies, "
        "whose wheel carries the vocabulary), or load a diffusers folder instead.",
    )


def clip_vocab(vocab_size: int, extra_dirs: tuple[str, ...] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of the CLIP BPE tokenizer with ``vocab_size`` entries."""
    merges = load_merges(tuple(extra_dirs))
    n_merges = vocab_size - 2 * 256 - len(_SPECIAL)
    if n_merges < 0 or n_merges > len(merges):
        raise InputError(
            "model",
            f"the text encoder has a vocabulary of {vocab_size} tokens, which no CLIP BPE tokenizer has "
            f"(514 to {FULL_VOCAB_SIZE}).",
            "check that the checkpoint is a Stable Diffusion checkpoint, or load it as a diffusers folder.",
        )
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges[:n_merges]] + list(_SPECIAL)
    return {token: i for i, token in enumerate(tokens)}, list(merges[:n_merges])


def build_clip_tokenizer(vocab_size: int = FULL_VOCAB_SIZE, pad_token: str = "<|endoftext|>",
                         extra_dirs: tuple[str, ...] = ()):
    """A ``transformers.CLIPTokenizer`` (77 tokens) built from the BPE rules. SD2's OpenCLIP pads with ``!``."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab(vocab_size, extra_dirs)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)
