"""Quantized files kept quantized: fp8 weights (plain casts and ComfyUI's scaled fp8) stay fp8 in memory and are
dequantized at each forward; a graph on such a file equals (torch.equal, CPU fp32) the diffusers pipeline run on the
same weights dequantized once."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

PROMPT, SEED = "a photo of a cat", 21


def quantized_file(path: str, original: dict, scaled: bool, fmt: str = "float8_e4m3fn", block_scale=False) -> None:
    """The transformer's block linear weights as ComfyUI writes them: fp8, with a per-tensor float32 weight_scale
    (absmax / 448), an input_scale and a comfy_quant format tensor, plus _quantization_metadata (``scaled``); or a
    plain fp8 cast of them (not ``scaled``). Other tensors stay float32."""
    from safetensors.torch import save_file

    tensors, layers = {}, {}
    for key, value in original.items():
        layer = key.removesuffix(".weight")
        if not (key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight") and value.ndim == 2):
            tensors[key] = value.contiguous()
            continue
        if not scaled:
            tensors[key] = value.to(torch.float8_e4m3fn)
            continue
        scale = value.abs().max().float() / 448.0
        tensors[key] = (value / scale).to(torch.float8_e4m3fn)
        tensors[f"{layer}.weight_scale"] = scale.repeat(2) if block_scale else scale
        tensors[f"{layer}.input_scale"] = torch.tensor(1.0)
        tensors[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
        layers[layer] = {"format": fmt}
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if scaled else None
    save_file(tensors, path, metadata=metadata)


def dequantized(path: str) -> dict:
    """The file's weights dequantized once (fp8 x scale, in float32)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    out = {}
    for key, value in tensors.items():
        if key.endswith((".weight_scale", ".input_scale", ".comfy_quant")):
            continue
        scale = tensors.get(key.removesuffix(".weight") + ".weight_scale")
        out[key] = value.float() * scale if scale is not None else value.float()
    return out


def pipeline_on_dequantized(klein, path: str):
    """Flux2KleinPipeline with its transformer made of the file's weights dequantized once (BFL names converted)."""
    from diffusers import Flux2KleinPipeline

    from diffusers_stages.engine.families import dit_keys
    from diffusers_stages.engine.weights import empty, fill

    config = dict(klein.transformer.config)
    reference = empty(type(klein.transformer), config)
    state, _, _ = dit_keys.to_diffusers(dequantized(path), dit_keys.flux2_rules(config),
                                        {k: tuple(v.shape) for k, v in reference.state_dict().items()})
    pipe = Flux2KleinPipeline(**{**klein.components, "transformer": fill(reference, state, torch.float32, "t", "t")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def klein(models_root):
    return load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])


@pytest.fixture()
def file_in_models(models_root):
    made = []

    def make(name, **kwargs):
        from diffusers_stages.tiny.ldm_export import dit_to_original

        pipe = load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])
        path = os.path.join(models_root["root"], "diffusion_models", name)
        quantized_file(path, dit_to_original(pipe.transformer), **kwargs)
        made.append(path)
        return path
    yield make
    for path in made:
        os.remove(path)


@pytest.mark.parametrize("scaled", [True, False], ids=["scaled-fp8", "plain-fp8"])
def test_fp8_transformer_file_stays_fp8_and_equals_the_pipeline_on_dequantized_weights(nodes, klein,
                                                                                       file_in_models, scaled):

    from diffusers_stages.engine.quantized import QuantizedLinear

    name = f"tiny-flux-2-klein-{'fp8-scaled' if scaled else 'fp8'}.safetensors"
    path = file_in_models(name, scaled=scaled)
    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name=name, dtype="fp32")
    layer = denoiser.module.transformer_blocks[0].attn.to_q
    assert isinstance(layer, QuantizedLinear) and layer.weight_stored.dtype == torch.float8_e4m3fn
    assert denoiser.module.dtype == torch.float32  # the compute dtype: stored weights are buffers
    folder = Graph(nodes, "diffusers/tiny-flux2-klein")
    graph = Graph(nodes, None, (denoiser, folder.text_encoder, folder.vae, scheduler))
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), cfg=1.0)[0]
    ours = bchw(graph.decode(graph.denoise(guider, scheduler, graph.empty(96, 64, 2), seed=SEED, steps=4)))

    pipe = pipeline_on_dequantized(klein, path)
    ref = pipe(prompt=PROMPT, guidance_scale=1.0, num_inference_steps=4, width=96, height=64,
               num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("kwargs, message", [
    ({"fmt": "int8_convrot"}, "stores layer 'double_blocks.0.img_attn.qkv' quantized as 'int8_convrot', which this "
                              "version cannot compute yet"),
    ({"block_scale": True}, r"scales '\w+_blocks\.\d+\.[\w.]+' per block"),
])
def test_quantized_layouts_not_computed_here_are_refused_by_name(nodes, file_in_models, kwargs, message):
    file_in_models("tiny-flux-2-klein-other-quant.safetensors", scaled=True, **kwargs)
    with pytest.raises(StageError, match=f"model_name: .*{message}.*Fix: "):
        nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-flux-2-klein-other-quant.safetensors", dtype="fp32")


def test_lora_on_an_fp8_file_equals_the_pipeline(nodes, klein, file_in_models, models_root):
    """A LoRA (ai-toolkit layout) on the quantized layers: peft wraps them as it wraps plain Linears."""
    from test_lora import with_loras


    name = "tiny-flux-2-klein-fp8-lora.safetensors"
    path = file_in_models(name, scaled=True)
    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name=name, dtype="fp32")
    folder = Graph(nodes, "diffusers/tiny-flux2-klein")
    lora = os.path.basename(models_root["flux2_lora_ai_toolkit"])
    graph = with_loras(Graph(nodes, None, (denoiser, folder.text_encoder, folder.vae, scheduler)), (lora, 0.8, 1.0))
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), cfg=1.0)[0]
    ours = bchw(graph.decode(graph.denoise(guider, scheduler, graph.empty(), seed=SEED, steps=4)))

    pipe = pipeline_on_dequantized(klein, path)
    pipe.load_lora_weights(models_root["flux2_lora_ai_toolkit"], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[0.8])
    ref = pipe(prompt=PROMPT, guidance_scale=1.0, num_inference_steps=4, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)


def test_fp8_scaled_text_encoder_file_equals_its_dequantized_weights(nodes, models_root):
    """A Qwen3 text encoder as qwen_3_4b_fp8_mixed: its layers' linear weights fp8 with scales, the rest kept; the
    prompt encodes exactly as with the weights dequantized once."""
    from safetensors.torch import load_file, save_file

    from diffusers_stages.engine.families.qwen_text import encode_chat_prompt
    from diffusers_stages.engine.quantized import QuantizedLinear
    from diffusers_stages.engine.text_files import qwen3_part

    original = load_file(models_root["zimage_qwen3"])
    tensors = {}
    for key, value in original.items():
        if ".layers." in key and key.endswith("_proj.weight"):
            scale = value.abs().max().float() / 448.0
            tensors[key] = (value / scale).to(torch.float8_e4m3fn)
            tensors[key.removesuffix(".weight") + ".weight_scale"] = scale
            tensors[key.removesuffix(".weight") + ".comfy_quant"] = torch.tensor(
                list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
        else:
            tensors[key] = value.contiguous()
    name = "tiny-qwen-3-fp8-mixed.safetensors"
    path = os.path.join(models_root["root"], "text_encoders", name)
    save_file(tensors, path)
    try:
        text_encoder = nodes["DS_LoadTextEncoders"].execute(family="zimage", llm=name, dtype="fp32")[0]
        assert isinstance(text_encoder.parts[0].module.layers[0].self_attn.q_proj, QuantizedLinear)
        ours = nodes["DS_TextEncode"].execute(text_encoder=text_encoder, text=PROMPT, clip_skip=0)[0].embeds
        reference = qwen3_part(dequantized(path), torch.float32,
                               [os.path.join(models_root["zimage_folder"], "tokenizer")], "llm")
        assert torch.equal(ours, encode_chat_prompt(reference, PROMPT, 512))
    finally:
        os.remove(path)


def test_plain_fp8_t5_file_equals_its_dequantized_weights(nodes, models_root):
    """t5xxl_fp8_e4m3fn as ComfyUI users have it (a plain fp8 cast of the linear weights)."""
    from safetensors.torch import load_file, save_file

    from diffusers_stages.engine.families.t5_text import encode_t5
    from diffusers_stages.engine.quantized import QuantizedLinear
    from diffusers_stages.engine.text_files import t5_part

    original = load_file(models_root["flux_t5"])
    tensors = {k: v.to(torch.float8_e4m3fn) if k.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi.weight",
                                                            "wo.weight")) else v.contiguous()
               for k, v in original.items()}
    name = "tiny-t5xxl-fp8-e4m3fn.safetensors"
    path = os.path.join(models_root["root"], "text_encoders", name)
    save_file(tensors, path)
    try:
        text_encoder = nodes["DS_LoadTextEncoders"].execute(family="flux", clip_l="tiny-flux-clip_l.safetensors",
                                                            t5=name, dtype="fp32")[0]
        t5 = text_encoder.parts[1]
        assert isinstance(t5.module.encoder.block[0].layer[0].SelfAttention.q, QuantizedLinear)
        reference = t5_part(dequantized(path), torch.float32, [os.path.join(models_root["flux_folder"], "tokenizer_2")],
                            "t5")
        assert torch.equal(encode_t5(t5, PROMPT, 128), encode_t5(reference, PROMPT, 128))
    finally:
        os.remove(path)
