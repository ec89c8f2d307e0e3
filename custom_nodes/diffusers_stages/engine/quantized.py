"""Quantized weights kept quantized: a linear layer whose file stores its weight quantized keeps it so in memory and
dequantizes it at each forward, in the model's compute dtype. Every loader gets this through ``weights.fill``.

What a file can hold, and how it becomes weights:

- fp8 (``float8_e4m3fn`` / ``float8_e5m2``): a plain cast, or ComfyUI's scaled fp8 with a per-tensor float32
  ``<layer>.weight_scale`` (weight = stored x scale). ``<layer>.input_scale`` is for fp8 matmuls on GPUs and does not
  change the weight. Older files mark scaled fp8 with a ``scaled_fp8`` tensor.
- ComfyUI's ``int8_tensorwise`` (comfy-kitchen's TensorWiseINT8Layout): int8 with a per-tensor or per-row float32
  ``weight_scale`` (weight = stored x scale, in float32); with ``"convrot": true`` (the "int8 convrot" files) each
  row was rotated in groups of ``convrot_groupsize`` by a normalised regular Hadamard matrix H (H4 = [[1,1,1,-1],
  [1,1,-1,1],[1,-1,1,1],[-1,1,1,1]], Kronecker powers of it, / sqrt(size)); H is symmetric and orthogonal, so the
  weight is the dequantized rows times H again, group by group.
- GGUF (city96's layout for diffusion models, llama.cpp's block formats): Q8_0, Q4_K, … dequantized by diffusers' own
  GGUF functions, exactly as ``from_single_file(..., quantization_config=GGUFQuantizationConfig(...))`` does.

A layer's ComfyUI format is its ``<layer>.comfy_quant`` uint8 tensor (JSON) or an entry of the file's
``_quantization_metadata``; ``weights.read_tensors`` turns the latter into the former, so both read alike here.
Formats made for GPU tensor cores (nvfp4, mxfp8, convrot_w4a4, asym_w4a8_int8) are refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import torch

from .errors import InputError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
INT8_FORMAT = "int8_tensorwise"
GGUF = "gguf"
QUANT_SUFFIXES = (".weight_scale", ".input_scale", ".comfy_quant", ".weight_scale_2", ".pre_quant_scale")
NOT_COMPUTED_HERE = {  # ComfyUI formats made for GPU tensor cores: what they are, for the message
    "nvfp4": "NVIDIA FP4 (Blackwell GPUs)", "mxfp8": "MXFP8 with per-block scales (Blackwell GPUs)",
    "convrot_w4a4": "ConvRot int4 weights and activations (int4 tensor cores)",
    "asym_w4a8_int8": "asymmetric int4 weights with int8 activations",
}


@dataclass(frozen=True)
class Codec:
    """How a stored tensor becomes a weight: ComfyUI's ``format`` name (or ``"gguf"`` with its ``gguf_type``), and
    for rotated int8 the Hadamard group size."""

    format: str
    convrot_groupsize: int = 0
    gguf_type: int = -1

    def dequantize(self, stored: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        if self.format == GGUF:
            from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

            return dequantize_gguf_tensor(GGUFParameter(stored, quant_type=self.gguf_type)).to(dtype)
        if self.format == INT8_FORMAT:
            weight = stored.float() * scale.to(stored.device)
            if self.convrot_groupsize:
                rows, columns = weight.shape
                size = self.convrot_groupsize
                rotation = hadamard(size, weight.device).T  # H is its own transpose; rows @ H^T as the rotation is
                weight = (weight.reshape(rows, columns // size, size) @ rotation).reshape(rows, columns)
            return weight.to(dtype)
        weight = stored.to(dtype)
        return weight if scale is None else weight * scale.to(device=weight.device, dtype=dtype)


_HADAMARD: dict[tuple[int, str], torch.Tensor] = {}


def hadamard(size: int, device: torch.device) -> torch.Tensor:
    """The normalised regular Hadamard matrix of ``size`` (a power of 4), symmetric and orthogonal (float32)."""
    key = (size, str(device))
    if key not in _HADAMARD:
        h4 = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
        matrix = h4
        while matrix.shape[0] < size:
            matrix = torch.kron(matrix, h4)
        if matrix.shape[0] != size:
            raise ValueError(f"a ConvRot group size must be a power of 4, not {size}")
        _HADAMARD[key] = (matrix / size ** 0.5).to(device)
    return _HADAMARD[key]


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight as a file stores it: the stored tensor, its codec, its scale (none, per tensor or per row) and the
    shape it has once dequantized. Rows split and join without dequantizing (every codec quantizes within rows)."""

    stored: torch.Tensor
    codec: Codec
    scale: torch.Tensor | None
    shape: tuple[int, ...]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.codec.dequantize(self.stored, self.scale, dtype).reshape(self.shape)

    def _rows_of_scale(self, start: int, stop: int) -> torch.Tensor | None:
        if self.scale is None or self.scale.numel() == 1:
            return self.scale
        return self.scale[start:stop]

    def split_rows(self, sizes: list[int]) -> list[QuantizedWeight]:
        parts, start = [], 0
        for stored, size in zip(self.stored.split(sizes, dim=0), sizes, strict=True):
            parts.append(replace(self, stored=stored, scale=self._rows_of_scale(start, start + size),
                                 shape=(size, *self.shape[1:])))
            start += size
        return parts

    @staticmethod
    def cat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
        first = parts[0]
        scales = [p.scale for p in parts]
        if all(s is None for s in scales) or all(s is not None and s.numel() == 1 and torch.equal(s, scales[0])
                                                 for s in scales):
            scale = scales[0]
        else:  # per-row (or differing per-tensor) scales: one per row
            scale = torch.cat([s.reshape(-1, 1).expand(p.shape[0], 1) for s, p in zip(scales, parts, strict=True)])
        return replace(first, stored=torch.cat([p.stored for p in parts]), scale=scale,
                       shape=(sum(p.shape[0] for p in parts), *first.shape[1:]))


def split_rows(tensor, sizes: list[int]) -> list:
    """``tensor`` (plain or quantized) split along its rows."""
    return tensor.split_rows(sizes) if isinstance(tensor, QuantizedWeight) else list(torch.split(tensor, sizes, 0))


def cat_rows(parts: list) -> torch.Tensor | QuantizedWeight:
    return QuantizedWeight.cat_rows(parts) if isinstance(parts[0], QuantizedWeight) else torch.cat(parts)


def layer_formats(tensors: dict) -> dict[str, dict]:
    """{layer: its quantization spec} from the ``<layer>.comfy_quant`` tensors."""
    return {key[: -len(".comfy_quant")]: json.loads(bytes(value.tolist()).decode())
            for key, value in tensors.items() if key.endswith(".comfy_quant")}


def metadata_as_tensors(metadata: dict | None, prefix: str = "") -> dict[str, torch.Tensor]:
    """A file's ``_quantization_metadata`` as the ``<layer>.comfy_quant`` tensors it stands for (under ``prefix``)."""
    raw = (metadata or {}).get("_quantization_metadata")
    if not raw:
        return {}
    layers = json.loads(raw).get("layers", {})
    return {f"{layer[len(prefix):]}.comfy_quant": torch.tensor(list(json.dumps(spec).encode()), dtype=torch.uint8)
            for layer, spec in layers.items() if layer.startswith(prefix)}


def _param(spec: dict, name: str, default):
    params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
    return spec.get(name, params.get(name, default))


def _codec(layer: str, spec: dict, input_name: str, name: str) -> Codec:
    fmt = spec.get("format", "")
    if fmt in FP8_FORMATS:
        return Codec(fmt)
    if fmt == INT8_FORMAT:
        return Codec(fmt, int(_param(spec, "convrot_groupsize", 256)) if _param(spec, "convrot", False) else 0)
    what = NOT_COMPUTED_HERE.get(fmt, "a format this version does not know")
    raise InputError(input_name, f"'{name}' stores layer '{layer}' quantized as '{fmt}' ({what}), which this version "
                     "cannot compute here (it reads fp8, scaled fp8, int8 / int8 convrot and GGUF files).",
                     "use the model's bf16/fp16, fp8, int8 or GGUF release.")


def gather(tensors: dict, input_name: str, name: str) -> dict:
    """The file's weights with each quantized one as a ``QuantizedWeight`` (its scale and format tensors taken in);
    refuses formats and scales this version cannot compute."""
    specs = layer_formats(tensors)
    out = {}
    for key, value in tensors.items():
        if key.endswith(QUANT_SUFFIXES) or key.rpartition(".")[2] == "scaled_fp8":
            continue
        if isinstance(value, QuantizedWeight):
            out[key] = value
            continue
        layer = key.removesuffix(".weight")
        spec = specs.get(layer) if key.endswith(".weight") else None
        scale = tensors.get(f"{layer}.weight_scale") if key.endswith(".weight") else None
        if spec is None and value.dtype not in FP8_DTYPES:
            out[key] = value
            continue
        codec = _codec(layer, spec, input_name, name) if spec else Codec(FP8_FORMATS[FP8_DTYPES.index(value.dtype)])
        if scale is not None:
            per_row = codec.format == INT8_FORMAT and scale.numel() == value.shape[0]
            if scale.numel() != 1 and not per_row:
                raise InputError(input_name, f"'{name}' scales '{layer}' per block ({tuple(scale.shape)}), which this "
                                 "version cannot compute yet (it reads per-tensor and per-row scales).",
                                 "use the model's bf16/fp16 or per-tensor fp8 release.")
            scale = scale.float().reshape(-1, 1) if per_row else scale.float().reshape(())
        elif codec.format == INT8_FORMAT:
            raise InputError(input_name, f"'{name}' stores '{key}' as int8 without its weight_scale.",
                             "the file is incomplete: download it again.")
        out[key] = QuantizedWeight(value, codec, scale, tuple(value.shape))
    return out


class QuantizedLinear(torch.nn.Linear):
    """A Linear whose weight is stored quantized (``weight_stored``, with ``weight_scale``) and dequantized on each
    access in ``compute_dtype``. Stored tensors are buffers, so the model's dtype stays its compute dtype."""

    @property
    def weight(self) -> torch.Tensor:
        return self.codec.dequantize(self.weight_stored, self.weight_scale, self.compute_dtype).reshape(
            self.out_features, self.in_features)


def keep_quantized(linear: torch.nn.Linear, weight: QuantizedWeight, compute_dtype: torch.dtype) -> None:
    """Turn ``linear`` (its weight still unloaded) into a QuantizedLinear holding ``weight`` (in place)."""
    linear._parameters.pop("weight")
    linear.__class__ = QuantizedLinear
    linear.register_buffer("weight_stored", weight.stored.detach())
    linear.register_buffer("weight_scale", weight.scale)
    linear.codec = weight.codec
    linear.compute_dtype = compute_dtype
