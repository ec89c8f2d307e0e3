"""GGUF files in city96's layout (ComfyUI-GGUF), read with the ``gguf`` package: the tensors keep their original
release names (the ``model.diffusion_model.`` prefix stripped or not), ``general.architecture`` names the model
(flux, sd3, qwen_image, lumina2 for Z-Image, …), F32/F16/BF16 tensors are plain, the others are llama.cpp blocks
(Q8_0, Q4_K, …) kept as they are (``quantized.QuantizedWeight``) and dequantized by diffusers' GGUF functions.
A tensor the converter reshaped to rows of 256 carries its real shape in ``comfy.gguf.orig_shape.<name>``.
Nothing is read into memory here: the tensors map the file."""

from __future__ import annotations

import os
import warnings

import torch

from .errors import InputError
from .quantized import GGUF, Codec, QuantizedWeight

GGUF_SUFFIX = ".gguf"
ORIG_SHAPE = "comfy.gguf.orig_shape."


def _reader(path: str, input_name: str):
    try:
        import gguf
    except ImportError as exc:  # a requirement of the pack; only a broken install lacks it
        raise InputError(input_name, "reading GGUF files needs the 'gguf' package, which is not installed.",
                         "install the pack's requirements (pip install -r requirements.txt).") from exc
    try:
        return gguf, gguf.GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/struct errors for damaged files
        raise InputError(input_name, f"'{os.path.basename(path)}' is not a readable GGUF file ({exc}).",
                         "the file is damaged or incomplete: download it again.") from exc


def _field(reader, name: str):
    field = reader.get_field(name)
    return None if field is None else field.contents()


def architecture(path: str, input_name: str) -> str | None:
    """The file's ``general.architecture`` (None for files written without it, e.g. by stable-diffusion.cpp)."""
    return _field(_reader(path, input_name)[1], "general.architecture")


def _logical_shape(reader, tensor) -> tuple[int, ...]:
    orig = _field(reader, ORIG_SHAPE + tensor.name)
    if orig is not None:
        return tuple(int(v) for v in orig)
    return tuple(int(v) for v in reversed(tensor.shape.tolist()))


def read_shapes(path: str, input_name: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and their shapes once dequantized (what a safetensors header would say)."""
    reader = _reader(path, input_name)[1]
    return {t.name: _logical_shape(reader, t) for t in reader.tensors}


def read_tensors(path: str, prefix: str = "", input_name: str = "model_name") -> dict:
    """The tensors under ``prefix`` (removed from their names): plain tensors for F32/F16/BF16, QuantizedWeight for
    block-quantized ones. Types diffusers cannot dequantize are refused by name."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    gguf, reader = _reader(path, input_name)
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    out = {}
    with warnings.catch_warnings():  # the tensors map the read-only file; nothing writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for tensor in reader.tensors:
            if not tensor.name.startswith(prefix):
                continue
            key, kind = tensor.name[len(prefix):], tensor.tensor_type
            shape = _logical_shape(reader, tensor)
            data = torch.from_numpy(tensor.data)
            if kind in plain:
                out[key] = data.reshape(shape)
            elif kind == gguf.GGMLQuantizationType.BF16:
                out[key] = data.view(torch.bfloat16).reshape(shape)
            elif kind in SUPPORTED_GGUF_QUANT_TYPES:
                out[key] = QuantizedWeight(data, Codec(GGUF, gguf_type=int(kind)), None, shape)
            else:
                raise InputError(input_name, f"'{os.path.basename(path)}' stores '{tensor.name}' as GGUF "
                                 f"{kind.name}, which this version cannot dequantize (it reads "
                                 f"{', '.join(sorted(t.name for t in SUPPORTED_GGUF_QUANT_TYPES))}, F16, BF16 "
                                 "and F32).", "use a Q8_0, Q6_K, Q5_K, Q4_K, … GGUF of the model, or its "
                                 "safetensors release.")
    return out
