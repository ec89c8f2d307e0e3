"""Weight files at the bottom of the engine: which files may be opened, reading tensors and shapes, building a
model on the meta device and filling it, and the precision a model loads in. Every loader reads files through
here; nothing here knows a model family.

Only safetensors (and diffusers folders of safetensors) are loaded, and GGUF files for DiT diffusion models and
T5 / Qwen3 text encoders (``gguf_files``): pickle formats (.ckpt, .pt, .bin) can run code when unpickled and are
refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .errors import InputError

if TYPE_CHECKING:
    from .family import Family


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pt2")


SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
WEIGHT_SUFFIXES = (*SAFETENSORS_SUFFIXES, ".gguf")  # the files a diffusion model or text encoder may come in


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# a dtype, or a function giving the dtype for the family once it is known (how a node passes "auto")
DtypeChoice = torch.dtype | Callable[..., torch.dtype]  # a function of the Family: the family's choice ("auto")


def safe_join(root: str, name: str, input_name: str = "model", folder: str = "model") -> str:
    """``root/name`` for a name chosen in a node; refuses absolute paths and any '..' step out of ``root``.
    ``folder`` names the kind of folder in the message (model, input, output)."""
    parts = re.split(r"[\\/]+", name)
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise InputError(input_name, f"'{name}' points outside the {folder} folder.",
                         f"choose a name from the list; names are relative to the {folder} folder and may not "
                         "contain '..'.")
    return os.path.join(root, *[p for p in parts if p])


def read_checkpoint_shapes(path: str, input_name: str = "model") -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors or GGUF file, read from its header (no weights loaded); a GGUF
    tensor's shape is the one it has once dequantized."""
    from safetensors import safe_open

    if path.lower().endswith(".gguf"):
        from .gguf_files import read_shapes

        return read_shapes(path, input_name)
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


def open_safetensors(path: str, input_name: str = "model",
                     suffixes: tuple[str, ...] = SAFETENSORS_SUFFIXES) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors model file chosen in ``input_name`` (or of a GGUF file, where ``suffixes``
    admit it); pickle files, other formats and missing files are refused with the input named."""
    refuse_pickle(path, input_name)
    if not path.lower().endswith(suffixes):
        kinds = " or ".join(sorted({s.lstrip(".") for s in suffixes} - {"sft"}))
        raise InputError(input_name, f"'{os.path.basename(path)}' is not a {kinds} file.",
                         f"choose a {kinds} model file.")
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{path}' does not exist.",
                         "put the file in its ComfyUI model folder and refresh the node list.")
    return read_checkpoint_shapes(path, input_name)


def read_tensors(path: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (removed from their names), memory-mapped until used. A safetensors file's
    ``_quantization_metadata`` comes as the ``<layer>.comfy_quant`` tensors it stands for; a GGUF file's
    block-quantized tensors come as ``quantized.QuantizedWeight``."""
    from safetensors import safe_open

    from .quantized import metadata_as_tensors

    if path.lower().endswith(".gguf"):
        from .gguf_files import read_tensors as read_gguf

        return read_gguf(path, prefix)
    with safe_open(path, framework="pt") as f:
        tensors = {key[len(prefix):]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)}
        return {**metadata_as_tensors(f.metadata(), prefix), **tensors}


def empty(module_class, config):
    """The model's structure with its parameters on the meta device (nothing allocated yet)."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # a diffusers config dict (unknown and "_" keys ignored) or a transformers config
        return module_class.from_config(config) if isinstance(config, dict) else module_class(config)


def fill(module, state: dict, dtype: torch.dtype, what: str, input_name: str):
    """``module`` (from ``empty``) filled with ``state``, cast to ``dtype`` except the modules its class keeps in
    fp32 for half precision (T5's ``wo``); names what is missing. Linear weights stored quantized (fp8, int8, GGUF:
    ``engine/quantized.py``) stay so and are dequantized at each forward in ``dtype``; other quantized tensors are
    dequantized once, here."""
    from .quantized import QuantizedWeight, gather, keep_quantized

    state = gather(state, input_name, what)  # scales and formats that came along with the weights taken in
    expected = module.state_dict()
    keep_fp32 = getattr(module, "_keep_in_fp32_modules", None) or ()
    missing = [k for k in expected if k not in state]
    if missing:
        raise InputError(input_name, f"the {what} lacks {len(missing)} of its {len(expected)} tensors "
                         f"(e.g. '{missing[0]}').", "the file is incomplete or of another model type.")
    unused = [k for k in state if k not in expected]
    if unused:  # weights the architecture read from the file has no place for: it was read wrongly
        raise InputError(input_name, f"the {what} has {len(unused)} tensors this architecture has no place for "
                         f"(e.g. '{unused[0]}').", "the file is of a variant this version cannot read; use the "
                         "model's diffusers folder.")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        key = wrong[0]
        raise InputError(input_name, f"the {what} has {len(wrong)} tensors of the wrong shape (e.g. '{key}' is "
                         f"{tuple(state[key].shape)}, the architecture read from the file wants "
                         f"{tuple(expected[key].shape)}).", "the file is damaged or mixes two model variants: "
                         "download it again.")
    cast = {}
    for key in expected:
        value = state[key]
        target = torch.float32 if dtype == torch.float16 and any(f".{m}." in f".{key}" for m in keep_fp32) else dtype
        if isinstance(value, QuantizedWeight):
            owner = module.get_submodule(key.rpartition(".")[0]) if "." in key else module
            if key.endswith(".weight") and isinstance(owner, torch.nn.Linear):
                keep_quantized(owner, value, target)  # its stored weight and scale become buffers
                continue
            value = value.dequantize(target)
        cast[key] = value.to(target) if value.is_floating_point() else value  # counters stay ints
    module.load_state_dict(cast, strict=False, assign=True)
    return module.eval()
