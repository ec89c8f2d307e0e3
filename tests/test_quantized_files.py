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
from diffusers_stages.tiny.quantized_files import fp8_file, gguf_file, int8_file

PROMPT, SEED = "a photo of a cat", 21


def dequantized(path: str) -> dict:
    """The file's weights dequantized once, in float32, by other code than ours: fp8 x scale; int8 by comfy-kitchen's
    own dequantization (rotated back for ConvRot); GGUF as diffusers reads and dequantizes it."""
    if path.endswith(".gguf"):
        from diffusers.models.model_loading_utils import load_gguf_checkpoint
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        return {k: dequantize_gguf_tensor(v).float() for k, v in load_gguf_checkpoint(path).items()}
    from comfy_kitchen.backends.eager import quantization as kitchen
    from safetensors.torch import load_file

    tensors = load_file(path)
    out = {}
    for key, value in tensors.items():
        if key.endswith((".weight_scale", ".input_scale", ".comfy_quant")):
            continue
        layer = key.removesuffix(".weight")
        scale = tensors.get(layer + ".weight_scale")
        spec = json.loads(bytes(tensors[layer + ".comfy_quant"].tolist())) if layer + ".comfy_quant" in tensors else {}
        if spec.get("convrot"):
            out[key] = kitchen.dequantize_int8_convrot_weight(value, scale, spec["convrot_groupsize"]).float()
        elif spec.get("format") == "int8_tensorwise":
            out[key] = kitchen.dequantize_int8_simple(value, scale).float()
        else:
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

    def make(name, writer=fp8_file, **kwargs):
        from diffusers_stages.tiny.ldm_export import dit_to_original

        pipe = load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])
        path = os.path.join(models_root["root"], "diffusion_models", name)
        writer(path, dit_to_original(pipe.transformer), **kwargs)
        made.append(path)
        return path
    yield make
    for path in made:
        os.remove(path)


LAYOUTS = {  # file name: (writer, its arguments, what a block linear's stored weight is)
    "fp8-scaled.safetensors": (fp8_file, {"scaled": True}, torch.float8_e4m3fn),
    "fp8.safetensors": (fp8_file, {"scaled": False}, torch.float8_e4m3fn),
    "int8-convrot.safetensors": (int8_file, {"convrot_groupsize": 16}, torch.int8),
    "int8-rowwise.safetensors": (int8_file, {}, torch.int8),
    "int8-tensorwise.safetensors": (int8_file, {"per_row": False}, torch.int8),
    "Q8_0.gguf": (gguf_file, {"arch": "flux"}, torch.uint8),
    "Q4_0-Q5_1-Q8_0.gguf": (gguf_file, {"arch": "flux", "qtypes": ("Q4_0", "Q5_1", "Q8_0")}, torch.uint8),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_quantized_transformer_file_stays_quantized_and_equals_the_pipeline_on_dequantized_weights(
        nodes, klein, file_in_models, layout):
    from diffusers_stages.engine.quantized import QuantizedLinear

    writer, kwargs, stored = LAYOUTS[layout]
    name = f"tiny-flux-2-klein-{layout}"
    path = file_in_models(name, writer=writer, **kwargs)
    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name=name, dtype="fp32")
    layer = denoiser.module.transformer_blocks[0].attn.to_q
    assert isinstance(layer, QuantizedLinear) and layer.weight_stored.dtype == stored
    assert denoiser.module.dtype == torch.float32  # the compute dtype: stored weights are buffers
    folder = Graph(nodes, "diffusers/tiny-flux2-klein")
    graph = Graph(nodes, None, (denoiser, folder.text_encoder, folder.vae, scheduler))
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), cfg=1.0)[0]
    ours = bchw(graph.decode(graph.denoise(guider, scheduler, graph.empty(96, 64, 2), seed=SEED, steps=4)))

    def run(pipe):
        return pipe(prompt=PROMPT, guidance_scale=1.0, num_inference_steps=4, width=96, height=64,
                    num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED),
                    output_type="pt").images

    assert torch.equal(ours, run(pipeline_on_dequantized(klein, path)))
    if layout.endswith(".gguf"):  # diffusers reads this file itself: its own GGUF loading gives the same images
        from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel, GGUFQuantizationConfig

        transformer = Flux2Transformer2DModel.from_single_file(
            path, config=klein.name_or_path, subfolder="transformer", torch_dtype=torch.float32,
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
        pipe = Flux2KleinPipeline(**{**klein.components, "transformer": transformer})
        pipe.set_progress_bar_config(disable=True)
        assert torch.equal(ours, run(pipe))


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_1", "Q5_0", "IQ4_NL",
                                   "IQ4_XS"])
def test_gguf_k_quants_equal_diffusers_own_gguf_loading(models_root, tmp_path, qtype):
    """A Flux.2 transformer 256 wide (K-quants come in blocks of 256) in each GGUF type: our loading, diffusers'
    from_single_file with GGUFQuantizationConfig and the weights dequantized once give the same output."""
    from diffusers import Flux2Transformer2DModel, GGUFQuantizationConfig

    from diffusers_stages.engine.component_files import load_denoiser_file
    from diffusers_stages.engine.families import dit_keys
    from diffusers_stages.engine.quantized import QuantizedLinear
    from diffusers_stages.engine.weights import empty, fill
    from diffusers_stages.tiny.ldm_export import dit_to_original

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=1, num_single_layers=1,
                                    attention_head_dim=128, num_attention_heads=2, joint_attention_dim=256,
                                    timestep_guidance_channels=256, axes_dims_rope=(32, 32, 32, 32),
                                    guidance_embeds=False)
    model.save_config(tmp_path / "transformer")
    path = str(tmp_path / f"flux2-{qtype}.gguf")
    gguf_file(path, dit_to_original(model), "flux", (qtype,))

    ours = load_denoiser_file(path, torch.float32)[0].module
    assert isinstance(ours.transformer_blocks[0].attn.to_q, QuantizedLinear)
    theirs = Flux2Transformer2DModel.from_single_file(
        path, config=str(tmp_path), subfolder="transformer", torch_dtype=torch.float32,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
    config = dict(model.config)
    reference = empty(Flux2Transformer2DModel, config)
    state, _, _ = dit_keys.to_diffusers(dequantized(path), dit_keys.flux2_rules(config),
                                        {k: tuple(v.shape) for k, v in reference.state_dict().items()})
    once = fill(reference, state, torch.float32, "t", "t")
    generator = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": torch.randn(1, 16, 128, generator=generator),
              "encoder_hidden_states": torch.randn(1, 8, 256, generator=generator),
              "timestep": torch.tensor([0.5]), "img_ids": torch.zeros(1, 16, 4), "txt_ids": torch.zeros(1, 8, 4)}
    with torch.no_grad():
        outputs = [m(**inputs).sample for m in (ours, theirs, once)]
    assert outputs[0].abs().sum() > 0
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("kwargs, message", [
    ({"fmt": "nvfp4"}, "stores layer 'double_blocks.0.img_attn.proj' quantized as 'nvfp4' \\(NVIDIA FP4"),
    ({"fmt": "float4_future"}, "quantized as 'float4_future' \\(a format this version does not know\\)"),
    ({"block_scale": True}, r"scales '\w+_blocks\.\d+\.[\w.]+' per block"),
])
def test_quantized_layouts_not_computed_here_are_refused_by_name(nodes, file_in_models, kwargs, message):
    file_in_models("tiny-flux-2-klein-other-quant.safetensors", scaled=True, **kwargs)
    with pytest.raises(StageError, match=f"model_name: .*{message}.*Fix: "):
        nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-flux-2-klein-other-quant.safetensors", dtype="fp32")


def test_gguf_of_another_architecture_or_type_is_refused_by_name(nodes, models_root):
    import gguf

    folder = os.path.join(models_root["root"], "diffusion_models")
    made = []
    try:
        wan = os.path.join(folder, "tiny-wan-Q8_0.gguf")
        gguf_file(wan, {"blocks.0.self_attn.q.weight": torch.randn(64, 64), "head.modulation": torch.randn(2, 64)},
                  "wan")
        made.append(wan)
        with pytest.raises(StageError, match="model_name: 'tiny-wan-Q8_0.gguf' is a GGUF of the 'wan' architecture, "
                                             "not the diffusion model of a supported family.*Fix: "):
            nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-wan-Q8_0.gguf", dtype="fp32")

        from safetensors.torch import load_file  # a type diffusers cannot dequantize (Q8_1) in one layer

        odd = os.path.join(folder, "tiny-flux-2-klein-Q8_1.gguf")
        writer = gguf.GGUFWriter(path=None, arch="flux")
        for key, value in load_file(os.path.join(folder, "tiny-flux-2-klein.safetensors")).items():
            if key == "double_blocks.0.img_attn.proj.weight":
                block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
                blocks = torch.zeros(value.shape[0], value.shape[1] // block * size, dtype=torch.uint8)
                writer.add_tensor(key, blocks.numpy(), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
            else:
                writer.add_tensor(key, value.float().numpy())
        writer.write_header_to_file(path=odd)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        made.append(odd)
        with pytest.raises(StageError, match="model_name: 'tiny-flux-2-klein-Q8_1.gguf' stores "
                                             "'double_blocks.0.img_attn.proj.weight' as GGUF Q8_1, which this version "
                                             "cannot dequantize.*Fix: "):
            nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-flux-2-klein-Q8_1.gguf", dtype="fp32")
    finally:
        for path in made:
            os.remove(path)


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


@pytest.mark.parametrize("kind", ["qwen3", "t5encoder"])
def test_gguf_text_encoder_in_llama_cpp_names_equals_its_dequantized_weights(nodes, models_root, kind):
    """Text encoders as llama.cpp's converter writes them (Qwen3 for Z-Image: blk.N.attn_q…; T5's encoder:
    enc.blk.N.attn_q…), Q8_0: the prompt encodes exactly as with the weights dequantized once."""
    from safetensors.torch import load_file

    from diffusers_stages.engine.families.qwen_text import encode_chat_prompt
    from diffusers_stages.engine.families.t5_text import encode_t5
    from diffusers_stages.engine.gguf_files import TEXT_NAMES, _renamed
    from diffusers_stages.engine.quantized import QuantizedLinear
    from diffusers_stages.engine.text_files import qwen3_part, t5_part

    source = models_root["zimage_qwen3"] if kind == "qwen3" else models_root["flux_t5"]
    name = f"tiny-{kind}-Q8_0.gguf"
    path = os.path.join(models_root["root"], "text_encoders", name)
    gguf_file(path, load_file(source), kind)
    once = {_renamed(k, TEXT_NAMES[kind]): v for k, v in dequantized(path).items()}
    try:
        if kind == "qwen3":
            text_encoder = nodes["DS_LoadTextEncoders"].execute(family="zimage", llm=name, dtype="fp32")[0]
            part = text_encoder.parts[0]
            assert any(isinstance(m, QuantizedLinear) for m in part.module.modules())  # those over 1024 values
            ours = nodes["DS_TextEncode"].execute(text_encoder=text_encoder, text=PROMPT, clip_skip=0)[0].embeds
            reference = qwen3_part(once, torch.float32, [os.path.join(models_root["zimage_folder"], "tokenizer")],
                                   "llm")
            assert torch.equal(ours, encode_chat_prompt(reference, PROMPT, 512))
        else:
            text_encoder = nodes["DS_LoadTextEncoders"].execute(
                family="flux", clip_l="tiny-flux-clip_l.safetensors", t5=name, dtype="fp32")[0]
            t5 = text_encoder.parts[1]
            assert any(isinstance(m, QuantizedLinear) for m in t5.module.modules())
            reference = t5_part(once, torch.float32, [os.path.join(models_root["flux_folder"], "tokenizer_2")], "t5")
            assert torch.equal(encode_t5(t5, PROMPT, 128), encode_t5(reference, PROMPT, 128))
    finally:
        os.remove(path)


def test_gguf_text_encoder_of_an_unread_architecture_is_refused_by_name(nodes, models_root):
    from safetensors.torch import load_file

    name = "tiny-qwen-2.5-vl-Q8_0.gguf"
    path = os.path.join(models_root["root"], "text_encoders", name)
    gguf_file(path, load_file(models_root["zimage_qwen3"]), "qwen2vl")
    try:
        with pytest.raises(StageError, match=f"llm: '{name}' is a GGUF text encoder of the 'qwen2vl' architecture, "
                                             "which this version does not read .*mmproj.*Fix: "):
            nodes["DS_LoadTextEncoders"].execute(family="qwenimage", llm=name, dtype="fp32")
    finally:
        os.remove(path)
