"""LoRA: our graph against load_lora_weights + set_adapters (SD1.5 and SDXL, two strengths, kohya and diffusers
formats, stacked), non-destructiveness (a branch and the next run without it are bit-identical to never loading
it), and wrong-family / unknown-key files."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

PROMPT, NEGATIVE, SEED = "a photo of a cat", "blurry", 4


def with_loras(graph, *loras):
    """A Graph whose denoiser/text encoder carry ``loras`` = (file, strength_model, strength_text) in order."""
    denoiser, text_encoder = graph.denoiser, graph.text_encoder
    for name, strength_model, strength_text in loras:
        denoiser, text_encoder = graph.nodes["DS_LoadLoRA"].execute(
            denoiser=denoiser, text_encoder=text_encoder, lora_name=name, strength_model=strength_model,
            strength_text_encoder=strength_text)
    return Graph(graph.nodes, None, (denoiser, text_encoder, graph.vae, graph.default_scheduler))


def image(graph, cfg=7.5):
    latent = graph.denoise(graph.guider(PROMPT, NEGATIVE, cfg), graph.default_scheduler, graph.empty(), seed=SEED)
    return bchw(graph.decode(latent))


def pipeline_image(pipe, cfg=7.5):
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, width=64, height=64, guidance_scale=cfg,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images


@pytest.fixture(scope="module")
def fresh_sd1(nodes):
    """A graph on its own copy of the model (LoRA adapters are added to the model it holds)."""
    return Graph(nodes, "diffusers/tiny-sd15")


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_sd15_lora_matches_load_lora_weights_and_set_adapters(fresh_sd1, models_root, strength):
    ours = image(with_loras(fresh_sd1, ("tiny-sd15-lora.safetensors", strength, strength)))
    pipe = load_pipeline("StableDiffusionPipeline", models_root["sd1_folder"])
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    pipe.load_lora_weights(models_root["sd1_lora"], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[strength])
    assert torch.equal(ours, pipeline_image(pipe))


def test_kohya_format_gives_the_diffusers_format_result(fresh_sd1):
    diffusers_format = image(with_loras(fresh_sd1, ("tiny-sd15-lora.safetensors", 0.8, 0.6)))
    kohya_format = image(with_loras(fresh_sd1, ("tiny-sd15-lora-kohya.safetensors", 0.8, 0.6)))
    assert torch.equal(diffusers_format, kohya_format)


def test_comfyui_trained_format_gives_the_same_unet_lora(fresh_sd1, caplog):
    """ComfyUI's trainer saves original-layout module names (diffusion_model.input_blocks…) without alpha; the U-Net
    part equals the diffusers file's. Its full-weight '.diff' deltas cannot be a LoRA adapter: reported, left out."""
    import logging

    with caplog.at_level(logging.WARNING, logger="diffusers_stages"):
        comfy = image(with_loras(fresh_sd1, ("tiny-sd15-lora-comfyui-trained.safetensors", 0.9, 0.0)))
    assert "1 keys were not understood" in caplog.text and "out.0.diff" in caplog.text
    assert torch.equal(comfy, image(with_loras(fresh_sd1, ("tiny-sd15-lora.safetensors", 0.9, 0.0))))


def test_stacked_loras_and_separate_strengths_match_the_pipeline(fresh_sd1, models_root):
    ours = image(with_loras(fresh_sd1, ("tiny-sd15-lora.safetensors", 0.7, 0.7),
                            ("tiny-sd15-lora-2.safetensors", 0.4, 0.4)))
    pipe = load_pipeline("StableDiffusionPipeline", models_root["sd1_folder"])
    pipe.load_lora_weights(models_root["sd1_lora"], adapter_name="a")
    pipe.load_lora_weights(models_root["sd1_lora_2"], adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, 0.4])
    assert torch.equal(ours, pipeline_image(pipe))
    text_only = image(with_loras(fresh_sd1, ("tiny-sd15-lora.safetensors", 0.0, 1.0)))
    model_only = image(with_loras(fresh_sd1, ("tiny-sd15-lora.safetensors", 1.0, 0.0)))
    assert not torch.equal(text_only, model_only)


def test_lora_is_non_destructive(nodes, models_root):
    """Never loaded == a branch without the LoRA after it ran == the next run without it."""
    untouched = Graph(nodes, "diffusers/tiny-sd15")
    never_loaded = image(untouched)
    graph = Graph(nodes, "diffusers/tiny-sd15")
    with_lora = with_loras(graph, ("tiny-sd15-lora.safetensors", 1.0, 1.0))
    lora_image = image(with_lora)
    assert not torch.equal(lora_image, never_loaded)
    assert torch.equal(image(graph), never_loaded)  # the branch without the LoRA, same model
    assert torch.equal(image(with_lora), lora_image)  # the LoRA branch again
    assert torch.equal(image(graph), never_loaded)  # and the next run without it
    base = graph.denoiser.module
    assert all(not name.endswith("lora_A") for name, _ in base.named_children())  # weights never fused


def test_sdxl_lora_matches_the_pipeline(nodes, models_root):
    graph = Graph(nodes, "diffusers/tiny-sdxl")
    ours = image(with_loras(graph, ("tiny-sdxl-lora.safetensors", 0.9, 0.9)), cfg=5.0)
    pipe = load_pipeline("StableDiffusionXLPipeline", models_root["sdxl_folder"])
    pipe.load_lora_weights(models_root["sdxl_lora"], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[0.9])
    assert torch.equal(ours, pipeline_image(pipe, cfg=5.0))


def test_lora_of_another_family_or_unknown_keys_is_refused(nodes, models_root):
    graph = Graph(nodes, "diffusers/tiny-sdxl")
    with pytest.raises(StageError, match="lora_name: 'tiny-sd15-lora.safetensors' does not fit this Stable "
                                         "Diffusion XL model"):
        with_loras(graph, ("tiny-sd15-lora.safetensors", 1.0, 1.0))
    from safetensors.torch import save_file

    unknown = os.path.join(models_root["root"], "loras", "unknown-keys.safetensors")
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(8, 2)}, unknown)
    sd1 = Graph(nodes, "diffusers/tiny-sd15")
    with pytest.raises(StageError, match="lora_name: none of the .* matched a layer"):
        with_loras(sd1, ("unknown-keys.safetensors", 1.0, 1.0))
    flux = Graph(nodes, "diffusers/tiny-flux")
    with pytest.raises(StageError, match="lora_name: 'tiny-sd15-lora.safetensors' is made for a U-Net .*Flux.1 model "
                                         ".0 matched"):
        with_loras(flux, ("tiny-sd15-lora.safetensors", 1.0, 1.0))
    assert not any(getattr(part.module, "peft_config", None) for part in flux.text_encoder.parts)  # taken out again


def test_sd3_lora_matches_the_pipeline(nodes, models_root):
    graph = Graph(nodes, "diffusers/tiny-sd3")
    ours = image(with_loras(graph, ("tiny-sd3-lora.safetensors", 0.6, 0.6)), cfg=4.0)
    pipe = load_pipeline("StableDiffusion3Pipeline", models_root["sd3_folder"])
    pipe.load_lora_weights(models_root["sd3_lora"], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[0.6])
    assert torch.equal(ours, pipeline_image(pipe, cfg=4.0))
    assert not torch.equal(ours, image(graph, cfg=4.0))  # and the base model is untouched


@pytest.mark.parametrize("name, key, strength", [("tiny-flux-lora.safetensors", "flux_lora", 0.8),
                                                   ("tiny-flux-lora-kohya.safetensors", "flux_lora_kohya", 1.2)])
def test_flux_lora_matches_the_pipeline(nodes, models_root, name, key, strength):
    """A diffusers-format Flux LoRA, and a kohya one on the fused q/k/v of the original (BFL) module names."""
    graph = Graph(nodes, "diffusers/tiny-flux")
    lora = with_loras(graph, (name, strength, strength))
    guider = nodes["DS_CFGGuider"].execute(positive=lora.encode(PROMPT), cfg=1.0)[0]
    ours = bchw(lora.decode(lora.denoise(guider, lora.default_scheduler, lora.empty(), seed=SEED)))
    pipe = load_pipeline("FluxPipeline", models_root["flux_folder"])
    pipe.load_lora_weights(models_root[key], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[strength])
    ref = pipe(PROMPT, num_inference_steps=4, width=64, height=64, guidance_scale=3.5,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)


def test_sdxl_kohya_lora_with_original_block_names_gives_the_diffusers_file_result(nodes):
    """sd-scripts' SDXL layout (lora_unet_input_blocks_4_1_…, lora_te1_/lora_te2_) equals the same layers saved in
    the diffusers layout."""
    graph = Graph(nodes, "diffusers/tiny-sdxl")
    kohya = image(with_loras(graph, ("tiny-sdxl-lora-kohya.safetensors", 0.7, 0.5)), cfg=5.0)
    assert torch.equal(kohya, image(with_loras(graph, ("tiny-sdxl-lora.safetensors", 0.7, 0.5)), cfg=5.0))

