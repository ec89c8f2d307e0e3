"""Qwen-Image: our node graph against QwenImagePipeline (torch.equal, CPU fp32)."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

SEED = 13
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


@pytest.fixture(scope="module")
def qwen_graph(nodes):
    return Graph(nodes, "diffusers/tiny-qwen-image")


@pytest.fixture(scope="module")
def qwen_pipe(models_root):
    return load_pipeline("QwenImagePipeline", models_root["qwen_image_folder"])


def test_qwen_image_encode_matches_pipeline(qwen_graph, qwen_pipe):
    cond = qwen_graph.encode(PROMPT)
    with torch.no_grad():
        embeds, mask = qwen_pipe.encode_prompt(PROMPT, device="cpu")
    assert mask is None and torch.equal(cond.embeds, embeds)


@pytest.mark.parametrize("width, height, batch, cfg", [(64, 64, 1, 4.0), (96, 64, 2, 1.0), (64, 96, 2, 3.0)])
def test_qwen_image_txt2img_matches_pipeline(qwen_graph, qwen_pipe, nodes, width, height, batch, cfg):
    """cfg above 1 with a negative prompt = the pipeline's true_cfg_scale (rescaled to the positive's norm)."""
    negative = {"negative": qwen_graph.encode(NEGATIVE)} if cfg > 1 else {}
    guider = nodes["DS_CFGGuider"].execute(positive=qwen_graph.encode(PROMPT), cfg=cfg, **negative)[0]
    latent = qwen_graph.denoise(guider, qwen_graph.default_scheduler, qwen_graph.empty(width, height, batch),
                                seed=SEED, steps=4)
    assert latent["samples"].shape == (batch, 16, height // 8, width // 8)  # core's Qwen-Image LATENT, no frame axis
    extra = {"negative_prompt": NEGATIVE, "true_cfg_scale": cfg} if cfg > 1 else {}
    ref = qwen_pipe(PROMPT, num_inference_steps=4, width=width, height=height, num_images_per_prompt=batch,
                    generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", **extra).images
    assert torch.equal(bchw(qwen_graph.decode(latent)), ref)


def test_qwen_image_img2img_matches_pipeline(qwen_graph, qwen_pipe, nodes):
    from diffusers import QwenImageImg2ImgPipeline

    torch.manual_seed(4)
    image = torch.rand(1, 64, 96, 3)
    raw = qwen_graph.encode_image(image)
    assert raw["samples"].shape == (1, 16, 8, 12)
    guider = nodes["DS_CFGGuider"].execute(positive=qwen_graph.encode(PROMPT), negative=qwen_graph.encode(NEGATIVE),
                                           cfg=3.0)[0]
    latent = qwen_graph.denoise(guider, qwen_graph.default_scheduler, raw, seed=SEED, steps=5, denoise=0.6)
    pipe = QwenImageImg2ImgPipeline(**qwen_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    # our VAE Encode gives the posterior's mode; the pipeline samples it, so it is given our latents, normalised as
    # it normalises them (an "image" with the latent channel count is taken as latents; the image processor, which
    # would resize them as pixels, is bypassed)
    pipe.image_processor.preprocess = lambda image, *args, **kwargs: image
    normalised = qwen_graph.denoiser.to_model_space(raw["samples"])
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=3.0, image=normalised, strength=0.6,
               num_inference_steps=5, height=64, width=96, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pt").images
    assert torch.equal(bchw(qwen_graph.decode(latent)), ref)


def test_qwen_image_wiring_refused(qwen_graph, nodes):
    z_image = Graph(nodes, "diffusers/tiny-z-image")
    with pytest.raises(StageError, match="encoded by a Z-Image text encoder, but the denoiser is Qwen-Image"):
        qwen_graph.denoise(z_image.guider(PROMPT, NEGATIVE, 4.0), qwen_graph.default_scheduler, qwen_graph.empty())
    with pytest.raises(StageError, match="clip_skip: .*Fix: set clip_skip to 0"):
        qwen_graph.encode(PROMPT, clip_skip=1)


@pytest.mark.parametrize("key", ["qwen_image_lora", "qwen_image_lora_prefixed", "qwen_image_lora_kohya"])
def test_qwen_image_lora_matches_the_pipeline(nodes, models_root, qwen_graph, key):
    """diffusers' QwenImageLoraLoaderMixin (transformer layers) on the diffusers layout and the layouts community
    trainers write (diffusion_model.… lora_A/B, as the Lightning LoRAs; kohya)."""
    import os

    from test_lora import with_loras

    graph = with_loras(qwen_graph, (os.path.basename(models_root[key]), 0.8, 1.0))
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE),
                                           cfg=3.0)[0]
    ours = bchw(graph.decode(graph.denoise(guider, graph.default_scheduler, graph.empty(), seed=SEED, steps=4)))
    pipe = load_pipeline("QwenImagePipeline", models_root["qwen_image_folder"])
    pipe.load_lora_weights(models_root[key], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[0.8])
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=3.0, num_inference_steps=4, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)


def test_qwen_image_transformer_file_equals_the_folder(nodes, qwen_graph):
    """qwen_image_bf16.safetensors as ComfyUI users keep it (diffusers' names, config read from the shapes) with the
    folder's text encoder and VAE ≡ the folder; compared in fresh memory (see Graph.in_fresh_memory)."""
    from test_component_files import image, same_scheduler

    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-qwen-image.safetensors",
                                                                 dtype="fp32")
    split = Graph(nodes, None, (denoiser, qwen_graph.text_encoder, qwen_graph.vae, scheduler))
    assert same_scheduler(scheduler, qwen_graph.default_scheduler)
    assert torch.equal(denoiser.latent_scale, qwen_graph.denoiser.latent_scale)  # the released VAE statistics
    assert torch.equal(image(split), image(qwen_graph))


def test_qwen_image_split_files_equal_the_folder(nodes, qwen_graph):
    """All three files ComfyUI's Qwen-Image template uses (qwen_image_bf16, qwen_2.5_vl_7b in Qwen2.5-VL's original
    names with its vision tower, qwen_image_vae in the Wan layout) ≡ the folder; compared in fresh memory."""
    from test_component_files import image

    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-qwen-image.safetensors",
                                                                 dtype="fp32")
    text_encoder = nodes["DS_LoadTextEncoders"].execute(family="qwenimage", llm="tiny-qwen-2.5-vl.safetensors",
                                                        dtype="fp32")[0]
    vae = nodes["DS_LoadVAE"].execute(vae_name="tiny-qwen-image-vae.safetensors", dtype="fp32")[0]
    assert type(vae.module).__name__ == "AutoencoderKLQwenImage"
    def architecture(vae):
        return {k: v for k, v in vae.module.config.items() if not k.startswith("_")}
    assert architecture(vae) == architecture(qwen_graph.vae)
    split = Graph(nodes, None, (denoiser, text_encoder, vae, scheduler))
    assert torch.equal(split.encode(PROMPT).embeds, qwen_graph.encode(PROMPT).embeds)
    assert torch.equal(image(split), image(qwen_graph))


def test_qwen_image_text_encoder_of_another_family_is_named(nodes):
    with pytest.raises(StageError, match="llm: .tiny-qwen-3.safetensors. is a Qwen3 4B text encoder, not the "
                                         "Qwen2.5-VL 7B .* Fix: choose the Qwen2.5-VL 7B"):
        nodes["DS_LoadTextEncoders"].execute(family="qwenimage", llm="tiny-qwen-3.safetensors", dtype="fp32")
    with pytest.raises(StageError, match="llm: .tiny-qwen-2.5-vl.safetensors. is a Qwen2.5-VL 7B text encoder, not "
                                         r"the Qwen3 \(klein: qwen_3_4b / 8b\) or Mistral 3 Small \(dev"):
        nodes["DS_LoadTextEncoders"].execute(family="flux2", llm="tiny-qwen-2.5-vl.safetensors", dtype="fp32")


@pytest.mark.parametrize("cfg, batch, width, height", [(1.0, 1, 64, 64), (3.0, 2, 96, 64)])
def test_qwen_image_controlnet_matches_the_pipeline(nodes, models_root, qwen_graph, cfg, batch, width, height):
    """QwenImageControlNetPipeline (InstantX's layout, the union one too: it takes no mode): the control image's
    VAE posterior sampled with the run's generator before the noise, normalised per channel, packed; true CFG
    reuses the positive call's ControlNet residuals; strength and an end window."""
    from test_controlnet import SEED as CONTROL_SEED
    from test_controlnet import control_image, run_graph

    net = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-qwen-image-controlnet", dtype="fp32")[0]
    image = control_image(height, width, seed=7)
    negative = qwen_graph.encode(NEGATIVE) if cfg > 1 else None
    positive, negative = nodes["DS_ApplyControlNet"].execute(
        positive=qwen_graph.encode(PROMPT), negative=negative, controlnet=net, image=image, strength=0.8,
        end_percent=0.75, vae=qwen_graph.vae)
    guider = nodes["DS_CFGGuider"].execute(positive=positive, cfg=cfg,
                                           **({"negative": negative} if negative is not None else {}))[0]
    ours = run_graph(qwen_graph, guider, width, height, batch)
    pipe = load_pipeline("QwenImageControlNetPipeline", models_root["qwen_image_folder"], controlnet=net.module)
    extra = {"negative_prompt": NEGATIVE, "true_cfg_scale": cfg} if cfg > 1 else {}
    ref = pipe(PROMPT, control_image=bchw(image).contiguous() * 2 - 1, controlnet_conditioning_scale=0.8,
               control_guidance_end=0.75, num_inference_steps=4, width=width, height=height,
               num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(CONTROL_SEED),
               output_type="pt", **extra).images
    assert torch.equal(ours, ref)


def test_one_qwen_image_controlnet_with_two_images_matches_the_multi_controlnet_pipeline(nodes, models_root,
                                                                                        qwen_graph):
    """QwenImageMultiControlNetModel takes one (union) ControlNet and several control images, their residuals added:
    Apply ControlNet twice with the same ControlNet."""
    from diffusers import QwenImageMultiControlNetModel
    from test_controlnet import SEED as CONTROL_SEED
    from test_controlnet import control_image, run_graph

    net = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-qwen-image-controlnet", dtype="fp32")[0]
    images = [control_image(seed=8), control_image(seed=9)]
    positive = qwen_graph.encode(PROMPT)
    for image, strength in zip(images, (0.7, 0.5)):
        positive, _ = nodes["DS_ApplyControlNet"].execute(positive=positive, controlnet=net, image=image,
                                                          strength=strength, vae=qwen_graph.vae)
    ours = run_graph(qwen_graph, nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0])
    pipe = load_pipeline("QwenImageControlNetPipeline", models_root["qwen_image_folder"],
                         controlnet=QwenImageMultiControlNetModel([net.module]))
    ref = pipe(PROMPT, control_image=[bchw(image).contiguous() * 2 - 1 for image in images],
               controlnet_conditioning_scale=[0.7, 0.5], num_inference_steps=4, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(CONTROL_SEED), output_type="pt").images
    assert torch.equal(ours, ref)


def test_qwen_image_inpainting_controlnet_is_refused(qwen_graph):
    """InstantX's inpainting ControlNet (extra_condition_channels: a mask and masked image with the control) needs
    QwenImageControlNetInpaintPipeline's inputs, which Apply ControlNet does not give."""
    from diffusers import QwenImageControlNetModel

    net = QwenImageControlNetModel.from_transformer(qwen_graph.denoiser.module, num_layers=1, attention_head_dim=16,
                                                    num_attention_heads=2, extra_condition_channels=68)
    problem = qwen_graph.denoiser.family.control_problem(qwen_graph.denoiser, net)
    assert "inpainting ControlNet" in problem
