"""Quantized files of tiny models in the layouts users download: ComfyUI's scaled fp8 and int8 (comfy_quant,
weight_scale, _quantization_metadata) and city96's GGUF (original names, general.architecture, F32 for 1-D and
small tensors, llama.cpp blocks for the rest). Used by the tests and the benchmarks."""

from __future__ import annotations

import json

import torch

from ..engine.quantized import hadamard


def _format_tensor(spec: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(spec).encode()), dtype=torch.uint8)


def _quantizable(key: str, value: torch.Tensor, blocks: tuple[str, ...]) -> bool:
    return key.startswith(blocks) and key.endswith(".weight") and value.ndim == 2


def fp8_file(path: str, original: dict, scaled: bool, fmt: str = "float8_e4m3fn", block_scale: bool = False,
             blocks: tuple[str, ...] = ("double_blocks.", "single_blocks.")) -> None:
    """The block linear weights as ComfyUI writes them: fp8 with a per-tensor float32 weight_scale (absmax / 448),
    an input_scale and a comfy_quant format tensor, plus _quantization_metadata (``scaled``); or a plain fp8 cast
    (not ``scaled``). Other tensors are kept as they are."""
    from safetensors.torch import save_file

    tensors, layers = {}, {}
    for key, value in original.items():
        layer = key.removesuffix(".weight")
        if not _quantizable(key, value, blocks):
            tensors[key] = value.contiguous()
            continue
        if not scaled:
            tensors[key] = value.to(torch.float8_e4m3fn)
            continue
        scale = value.abs().max().float() / 448.0
        tensors[key] = (value / scale).to(torch.float8_e4m3fn)
        tensors[f"{layer}.weight_scale"] = scale.repeat(2) if block_scale else scale
        tensors[f"{layer}.input_scale"] = torch.tensor(1.0)
        tensors[f"{layer}.comfy_quant"] = _format_tensor({"format": fmt})
        layers[layer] = {"format": fmt}
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if scaled else None
    save_file(tensors, path, metadata=metadata)


def int8_file(path: str, original: dict, convrot_groupsize: int = 0, per_row: bool = True,
              blocks: tuple[str, ...] = ("double_blocks.", "single_blocks.")) -> None:
    """The block linear weights as ComfyUI's int8_tensorwise layout: int8 with a float32 weight_scale per row
    ([out, 1], absmax / 127) or per tensor, and a comfy_quant tensor; with ``convrot_groupsize`` each row is first
    rotated in groups by the normalised Hadamard matrix (W @ H^T, comfy-kitchen's ConvRot), marked
    ``"convrot": true``. The formats go in the comfy_quant tensors only, as ComfyUI's own saving writes them."""
    from safetensors.torch import save_file

    tensors = {}
    for key, value in original.items():
        if not _quantizable(key, value, blocks):
            tensors[key] = value.contiguous()
            continue
        layer, weight = key.removesuffix(".weight"), value.float()
        spec = {"format": "int8_tensorwise"}
        if convrot_groupsize:
            rows, columns = weight.shape
            weight = (weight.reshape(rows, -1, convrot_groupsize) @ hadamard(convrot_groupsize, weight.device).T
                      ).reshape(rows, columns)
            spec.update(convrot=True, convrot_groupsize=convrot_groupsize)
        absmax = weight.abs().amax(dim=-1, keepdim=True) if per_row else weight.abs().max()
        scale = (absmax / 127.0).clamp(min=1e-30)
        tensors[key] = (weight / scale).round().clamp(-128, 127).to(torch.int8)
        tensors[f"{layer}.weight_scale"] = scale
        tensors[f"{layer}.comfy_quant"] = _format_tensor(spec)
    save_file(tensors, path)


# where each K-quant / IQ4 block keeps its float16 scales (d, dmin), from llama.cpp's block structs
_HALF_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,),
                "IQ4_XS": (0,)}


def _blocks(value: torch.Tensor, qtype, generator: torch.Generator):
    """``value`` in llama.cpp's blocks of ``qtype``: quantized by the gguf package where it implements the type;
    K-quants and IQ4 (which it only reads) as blocks of random codes with small float16 scales, since the weights
    of these tiny models are random anyway."""
    import gguf
    import numpy as np

    try:
        return gguf.quants.quantize(value.float().numpy(), qtype)
    except NotImplementedError:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rows, columns = value.shape
        data = torch.randint(0, 256, (rows, columns // block, size), dtype=torch.uint8, generator=generator)
        for offset in _HALF_SCALES[qtype.name]:
            data[..., offset:offset + 2] = torch.tensor([1e-4], dtype=torch.float16).view(torch.uint8)
        return np.ascontiguousarray(data.reshape(rows, -1).numpy())


def llama_cpp_name(name: str, arch: str) -> str:
    """A text encoder's safetensors name as llama.cpp names it (the inverse of ``gguf_files.TEXT_NAMES``)."""
    from ..engine.gguf_files import TEXT_NAMES

    for old, new in reversed(TEXT_NAMES.get(arch, ())):
        name = name.replace(new, old)
    return name


def gguf_file(path: str, original: dict, arch: str, qtypes: tuple[str, ...] = ("Q8_0",), seed: int = 0) -> None:
    """``original`` as city96's tools write it: names unchanged (a text encoder's in llama.cpp's names, as
    llama.cpp's converter writes them), ``general.architecture`` = ``arch``, 1-D tensors and tensors of <= 1024
    values in F32, the rest in ``qtypes`` (taken in turn) where their rows fit the type's blocks, else BF16 (as a
    bf16 release converts)."""
    import gguf

    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    generator = torch.Generator().manual_seed(seed)
    turn = 0
    for key, value in original.items():
        key, value = llama_cpp_name(key, arch), value.detach().float()
        if value.ndim == 1 or value.numel() <= 1024:
            writer.add_tensor(key, value.numpy())
            continue
        qtype = getattr(gguf.GGMLQuantizationType, qtypes[turn % len(qtypes)])
        if value.ndim == 2 and value.shape[1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            turn += 1
        else:
            qtype = gguf.GGMLQuantizationType.BF16
        writer.add_tensor(key, _blocks(value.reshape(value.shape[0], -1) if qtype.name != "BF16" else value,
                                       qtype, generator), raw_dtype=qtype)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
