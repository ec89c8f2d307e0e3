"""GGUF files in city96's layout (ComfyUI-GGUF), read with the ``gguf`` package: the tensors keep their original
release names (the ``model.diffusion_model.`` prefix stripped or not), ``general.architecture`` names the model
(flux, sd3, qwen_image, lumina2 for Z-Image, …), F32/F16/BF16 tensors are plain, the others are llama.cpp blocks
(Q8_0, Q4_K, …) kept as they are (``quantized.QuantizedWeight``) and dequantized by diffusers' GGUF functions.
A tensor the converter reshaped to rows of 256 carries its real shape in ``comfy.gguf.orig_shape.<name>``.
Text encoders come as llama.cpp writes them (``t5``/``t5encoder``: ``enc.blk.N.attn_q``…; ``qwen3``/``qwen2``:
``blk.N.attn_q``…) and are renamed to the names of their safetensors releases (``TEXT_NAMES``). Nothing is read into
memory here: the tensors map the file."""

from __future__ import annotations

import os
import warnings
from functools import lru_cache

import torch

from .errors import InputError
from .quantized import GGUF, Codec, QuantizedWeight

GGUF_SUFFIX = ".gguf"
ORIG_SHAPE = "comfy.gguf.orig_shape."

# llama.cpp's text-model names -> the safetensors releases' (T5 encoder as in t5xxl files; decoder-only LLMs as
# transformers names them), replaced in this order
_T5_NAMES = (("enc.blk.", "encoder.block."), ("enc.output_norm", "encoder.final_layer_norm"), ("token_embd", "shared"),
             ("attn_q", "layer.0.SelfAttention.q"), ("attn_k", "layer.0.SelfAttention.k"),
             ("attn_v", "layer.0.SelfAttention.v"), ("attn_o", "layer.0.SelfAttention.o"),
             ("attn_norm", "layer.0.layer_norm"), ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
             ("ffn_up", "layer.1.DenseReluDense.wi_1"), ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
             ("ffn_down", "layer.1.DenseReluDense.wo"), ("ffn_norm", "layer.1.layer_norm"))
_LLM_NAMES = (("blk.", "model.layers."), ("attn_norm", "input_layernorm"), ("attn_q_norm", "self_attn.q_norm"),
              ("attn_k_norm", "self_attn.k_norm"), ("attn_q.", "self_attn.q_proj."), ("attn_k.", "self_attn.k_proj."),
              ("attn_v.", "self_attn.v_proj."), ("attn_output", "self_attn.o_proj"), ("ffn_up", "mlp.up_proj"),
              ("ffn_down", "mlp.down_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_norm", "post_attention_layernorm"),
              ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output.weight", "lm_head.weight"))
TEXT_NAMES = {"t5": _T5_NAMES, "t5encoder": _T5_NAMES, "qwen3": _LLM_NAMES, "qwen2": _LLM_NAMES}
TEXT_SKIPPED = {"t5": ("dec.",)}  # a whole T5's decoder: text encoders use the encoder only


def _reader(path: str, input_name: str):
    """(the gguf module, the file's reader); a loader asks for shapes, architecture and tensors in turn, so the
    parsed header of the last few files is kept (keyed by the file's size and time, so a replaced file is read
    again)."""
    try:
        import gguf
    except ImportError as exc:  # a requirement of the pack; only a broken install lacks it
        raise InputError(input_name, "reading GGUF files needs the 'gguf' package, which is not installed.",
                         "install the pack's requirements (pip install -r requirements.txt).") from exc
    try:
        stat = os.stat(path)
        return gguf, _parsed(path, stat.st_size, stat.st_mtime_ns)
    except Exception as exc:  # gguf raises ValueError/struct errors for damaged files
        raise InputError(input_name, f"'{os.path.basename(path)}' is not a readable GGUF file ({exc}).",
                         "the file is damaged or incomplete: download it again.") from exc


@lru_cache(maxsize=2)
def _parsed(path: str, _size: int, _mtime_ns: int):
    import gguf

    return gguf.GGUFReader(path)


def _text_naming(reader) -> tuple[tuple, tuple]:
    """(llama.cpp -> safetensors renames, prefixes of tensors to leave out) for the file's architecture."""
    arch = _field(reader, "general.architecture")
    return TEXT_NAMES.get(arch, ()), TEXT_SKIPPED.get(arch, ())


def _field(reader, name: str):
    field = reader.get_field(name)
    return None if field is None else field.contents()


def architecture(path: str, input_name: str) -> str | None:
    """The file's ``general.architecture`` (None for files written without it, e.g. by stable-diffusion.cpp)."""
    return _field(_reader(path, input_name)[1], "general.architecture")


def refuse_unread_gguf(path: str, input_name: str) -> None:
    """Refuses a GGUF text encoder of an architecture whose llama.cpp names this version does not map."""
    if not path.lower().endswith(GGUF_SUFFIX):
        return
    arch = architecture(path, input_name)
    if arch not in TEXT_NAMES:
        why = (" (Qwen2.5-VL's GGUF leaves its vision tower in a separate mmproj file)" if arch == "qwen2vl" else "")
        raise InputError(input_name, f"'{os.path.basename(path)}' is a GGUF text encoder of the '{arch}' "
                         f"architecture, which this version does not read{why}; it reads T5 and Qwen3 GGUFs.",
                         "use the text encoder's safetensors release (bf16, fp8 or int8).")


def _logical_shape(reader, tensor) -> tuple[int, ...]:
    orig = _field(reader, ORIG_SHAPE + tensor.name)
    if orig is not None:
        return tuple(int(v) for v in orig)
    return tuple(int(v) for v in reversed(tensor.shape.tolist()))


def read_shapes(path: str, input_name: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and their shapes once dequantized (what a safetensors header would say); a llama.cpp text
    model's names as its safetensors release has them."""
    reader = _reader(path, input_name)[1]
    names, skipped = _text_naming(reader)
    return {_renamed(t.name, names): _logical_shape(reader, t) for t in reader.tensors
            if not t.name.startswith(skipped)}


def _renamed(name: str, replacements) -> str:
    for old, new in replacements:
        name = name.replace(old, new)
    return name


def read_tensors(path: str, prefix: str = "", input_name: str = "model_name") -> dict:
    """The tensors under ``prefix`` (removed from their names): plain tensors for F32/F16/BF16, QuantizedWeight for
    block-quantized ones; a llama.cpp text model's renamed to its safetensors names. Types diffusers cannot
    dequantize are refused by name."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    gguf, reader = _reader(path, input_name)
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    names, skipped = _text_naming(reader)
    out = {}
    with warnings.catch_warnings():  # the tensors map the read-only file; nothing writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for tensor in reader.tensors:
            if not tensor.name.startswith(prefix) or tensor.name.startswith(skipped):
                continue
            key, kind = _renamed(tensor.name[len(prefix):], names), tensor.tensor_type
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
