"""Quantized weights kept quantized: fp8 files (plain casts, and ComfyUI's scaled / mixed fp8) load with their linear
layers' weights stored in fp8 and dequantized at each forward, in the model's compute dtype.

ComfyUI's format (its QUANTIZATION.md): a quantized weight is stored in float8_e4m3fn with a per-tensor float32
``<layer>.weight_scale`` (dequantized = weight x scale); ``<layer>.input_scale`` is for fp8 matmuls on GPUs and does
not change the dequantized weight; the layer's format is a ``<layer>.comfy_quant`` uint8 tensor holding JSON, or the
``_quantization_metadata`` entry of the file's metadata; older files mark scaled fp8 with a ``scaled_fp8`` tensor.
Formats this version cannot compute yet (int8, nvfp4, mxfp8, block-scaled, …) are refused by name.
"""

from __future__ import annotations

import json

import torch

from .errors import InputError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
_QUANT_SUFFIXES = (".weight_scale", ".input_scale", ".comfy_quant")


def file_formats(path: str) -> dict[str, str]:
    """{layer: format} from a safetensors file's ``_quantization_metadata`` (none: {})."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get("_quantization_metadata")
    if not raw:
        return {}
    return {layer: spec.get("format", "") for layer, spec in json.loads(raw).get("layers", {}).items()}


def split_quantization(tensors: dict[str, torch.Tensor], formats: dict[str, str], input_name: str,
                       name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the weights, {weight key: its per-tensor scale}) of a file's tensors, the quantization tensors taken out;
    refuses a layer in a format this version cannot compute."""
    refuse_unknown_formats(tensors, formats, input_name, name)
    return take_scales(tensors)


def refuse_unknown_formats(tensors: dict[str, torch.Tensor], formats: dict[str, str], input_name: str,
                           name: str) -> None:
    """Refuses layers quantized in a format this version cannot compute (by the file's metadata or the layers'
    comfy_quant tensors), and scales that are not per tensor."""
    formats = dict(formats)
    for key, value in tensors.items():
        if key.endswith(".comfy_quant"):
            formats[key[: -len(".comfy_quant")]] = json.loads(bytes(value.tolist()).decode()).get("format", "")
    for layer, fmt in formats.items():
        if fmt not in FP8_FORMATS:
            raise InputError(input_name, f"'{name}' stores layer '{layer}' quantized as '{fmt}', which this version "
                             "cannot compute yet (it reads plain and scaled fp8).",
                             "use the model's bf16/fp16 or fp8 release.")
    for key, value in tensors.items():
        if key.endswith(".weight_scale") and value.numel() != 1:
            raise InputError(input_name, f"'{name}' scales '{key[:-13]}' per block ({tuple(value.shape)}), which this "
                             "version cannot compute yet (it reads per-tensor scaled fp8).",
                             "use the model's bf16/fp16 or per-tensor fp8 release.")


def take_scales(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the weights, {weight key: per-tensor scale}): the quantization tensors (scales, input scales, formats, the
    scaled_fp8 marker) taken out of a state dict."""
    weights, scales = {}, {}
    for key, value in tensors.items():
        if key.endswith(".weight_scale"):
            scales[key[: -len("_scale")]] = value.reshape(()).float()
        elif not key.endswith(_QUANT_SUFFIXES) and key.rpartition(".")[2] != "scaled_fp8":
            weights[key] = value
    return weights, scales


class QuantizedLinear(torch.nn.Linear):
    """A Linear whose weight is stored quantized (``weight_stored``, fp8) and dequantized on each access, in
    ``compute_dtype``: stored x ``weight_scale`` (a plain cast without a scale). The stored weight is a buffer, so
    the model's dtype stays its compute dtype."""

    @property
    def weight(self) -> torch.Tensor:
        weight = self.weight_stored.to(self.compute_dtype)
        scale = self.weight_scale
        return weight if scale is None else weight * scale.to(device=weight.device, dtype=self.compute_dtype)


def keep_quantized(linear: torch.nn.Linear, scale: torch.Tensor | None, compute_dtype: torch.dtype) -> None:
    """Turn a Linear holding an fp8 weight into a QuantizedLinear (in place)."""
    stored = linear._parameters.pop("weight")
    linear.__class__ = QuantizedLinear
    linear.register_buffer("weight_stored", stored.detach())
    linear.register_buffer("weight_scale", scale)
    linear.compute_dtype = compute_dtype
