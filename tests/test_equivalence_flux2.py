"""Flux.2 klein: our node graph against Flux2KleinPipeline (torch.equal, CPU fp32), from its diffusers folder and from
the split files ComfyUI users keep."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

SEED = 12
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


@pytest.fixture(scope="module")
def klein_graph(nodes):
    return Graph(nodes, "diffusers/tiny-flux2-klein")


@pytest.fixture(scope="module")
def klein_pipe(models_root):
    return load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])


def negative_embeds(pipe, text=NEGATIVE):
    """The pipeline guides away from "" only; another negative prompt is given to it as embeddings."""
    with torch.no_grad():
        return pipe.encode_prompt(text, device="cpu")[0]


def test_flux2_encode_matches_pipeline(klein_graph, klein_pipe):
    cond = klein_graph.encode(PROMPT)
    with torch.no_grad():
        embeds, _ = klein_pipe.encode_prompt(PROMPT, device="cpu")
    assert cond.embeds.shape == (1, 512, 48) and torch.equal(cond.embeds, embeds)


@pytest.mark.parametrize("width, height, batch, cfg", [(64, 64, 1, 4.0), (96, 64, 2, 1.0), (64, 96, 2, 3.5)])
def test_flux2_txt2img_matches_pipeline(klein_graph, klein_pipe, width, height, batch, cfg):
    latent = klein_graph.denoise(klein_graph.guider(PROMPT, NEGATIVE, cfg), klein_graph.default_scheduler,
                                 klein_graph.empty(width, height, batch), seed=SEED, steps=5)
    assert latent["samples"].shape == (batch, 128, height // 16, width // 16)  # core's Flux2 latent layout
    ref = klein_pipe(prompt=PROMPT, negative_prompt_embeds=negative_embeds(klein_pipe), guidance_scale=cfg,
                     num_inference_steps=5, width=width, height=height, num_images_per_prompt=batch,
                     generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(klein_graph.decode(latent)), ref)


def test_flux2_without_negative_guides_from_the_empty_prompt(klein_graph, klein_pipe, nodes):
    guider = nodes["DS_CFGGuider"].execute(positive=klein_graph.encode(PROMPT), cfg=4.0)[0]
    latent = klein_graph.denoise(guider, klein_graph.default_scheduler, klein_graph.empty(), seed=SEED, steps=4)
    ref = klein_pipe(prompt=PROMPT, guidance_scale=4.0, num_inference_steps=4, width=64, height=64,
                     generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(klein_graph.decode(latent)), ref)


def test_flux2_vae_round_trip_is_the_pipelines(klein_graph, klein_pipe):
    """VAE Encode gives the pipeline's image latents (posterior mode, 2x2 patches, batch-norm normalised): core's
    Flux2 LATENT; VAE Decode undoes it as the pipeline does before decoding."""
    from test_equivalence_sd15 import pictures

    pil, image = pictures(2, 64, 96, 3)
    latent = klein_graph.encode_image(image)["samples"]
    with torch.no_grad():
        ref = klein_pipe._encode_vae_image(klein_pipe.image_processor.preprocess(pil), generator=None)
    assert latent.shape == (2, 128, 4, 6) and torch.equal(latent, ref)


def test_flux2_img2img_matches_pipeline_from_the_noised_image(klein_graph, klein_pipe):
    """diffusers has no Flux.2 img2img pipeline (Flux2KleinInpaintPipeline also feeds the image as a reference). Our
    img2img (the img2img pipelines' strength: the last int(steps x denoise) steps, the image noised to the first of
    them) is compared with Flux2KleinPipeline run over those sigmas from the same noised latents; the shift (mu)
    keeps the full run's step count, as the pipeline computes it from num_inference_steps."""
    import numpy as np
    from diffusers.utils.torch_utils import randn_tensor

    torch.manual_seed(4)
    raw = klein_graph.encode_image(torch.rand(1, 64, 96, 3))
    steps, strength = 5, 0.6
    latent = klein_graph.denoise(klein_graph.guider(PROMPT, NEGATIVE, 4.0), klein_graph.default_scheduler, raw,
                                 seed=SEED, steps=steps, denoise=strength)
    generator = torch.Generator("cpu").manual_seed(SEED)
    noise = randn_tensor(raw["samples"].shape, generator=generator)
    scheduler = klein_pipe.scheduler
    klein_graph.denoiser.family.set_timesteps(scheduler, steps, raw["samples"])
    begin = int(max(steps - steps * strength, 0))  # the flow pipelines' strength rule
    noised = scheduler.scale_noise(raw["samples"], scheduler.timesteps[begin:begin + 1], noise)
    sigmas = np.linspace(1.0, 1 / steps, steps)[begin:]
    ref = klein_pipe(prompt=PROMPT, negative_prompt_embeds=negative_embeds(klein_pipe), guidance_scale=4.0,
                     num_inference_steps=steps, sigmas=sigmas, latents=noised, width=96, height=64,
                     output_type="pt").images
    assert torch.equal(bchw(klein_graph.decode(latent)), ref)


def test_flux2_split_files_equal_the_folder(nodes, klein_graph):
    """flux-2-klein (BFL layout), qwen_3_4b and flux2-vae (BFL layout) as ComfyUI users keep them ≡ the folder;
    compared in fresh memory (see Graph.in_fresh_memory)."""
    from test_component_files import image, same_scheduler

    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-flux-2-klein.safetensors",
                                                                 dtype="fp32")
    text_encoder = nodes["DS_LoadTextEncoders"].execute(family="flux2", llm="tiny-flux2-qwen-3.safetensors",
                                                        dtype="fp32")[0]
    vae = nodes["DS_LoadVAE"].execute(vae_name="tiny-flux2-vae.safetensors", dtype="fp32")[0]
    split = Graph(nodes, None, (denoiser, text_encoder, vae, scheduler))
    assert same_scheduler(scheduler, klein_graph.default_scheduler)
    assert torch.equal(image(split.in_fresh_memory()), image(klein_graph.in_fresh_memory()))


@pytest.mark.parametrize("key", ["flux2_lora", "flux2_lora_ai_toolkit"])
def test_flux2_lora_matches_the_pipeline(nodes, models_root, klein_graph, key):
    import os

    from test_lora import with_loras

    graph = with_loras(klein_graph, (os.path.basename(models_root[key]), 0.8, 1.0))
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), cfg=3.0)[0]
    ours = bchw(graph.decode(graph.denoise(guider, graph.default_scheduler, graph.empty(), seed=SEED, steps=4)))
    pipe = load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])
    pipe.load_lora_weights(models_root[key], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[0.8])
    ref = pipe(prompt=PROMPT, guidance_scale=3.0, num_inference_steps=4, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)


def test_flux2_wiring_refused(klein_graph, nodes):
    z_image = Graph(nodes, "diffusers/tiny-z-image")
    with pytest.raises(StageError, match="encoded by a Z-Image text encoder, but the denoiser is Flux.2"):
        klein_graph.denoise(z_image.guider(PROMPT, NEGATIVE, 4.0), klein_graph.default_scheduler, klein_graph.empty())
    qwen_latent = Graph(nodes, "diffusers/tiny-qwen-image").empty()
    with pytest.raises(StageError, match="latent has shape 1x16x8x8, but this Flux.2 denoiser works on 128-channel"):
        klein_graph.denoise(klein_graph.guider(PROMPT, NEGATIVE, 4.0), klein_graph.default_scheduler, qwen_latent)
    with pytest.raises(StageError, match="clip_skip: .*Fix: set clip_skip to 0"):
        klein_graph.encode(PROMPT, clip_skip=1)



def test_flux2_skip_layer_guidance_equals_diffusers_guider_in_its_pipeline(nodes, models_root, klein_graph):
    """As for Flux.1 and Qwen-Image (test_guiders.guided_by): Flux2KleinPipeline with CFG, each step's prediction
    replaced by what diffusers' SkipLayerGuidance object makes of the same calls (positive, negative, then the
    positive with double block 0 and single block 1 skipped)."""
    from diffusers.guiders import SkipLayerGuidance
    from diffusers.hooks import LayerSkipConfig
    from test_guiders import STEPS, guided_by

    pipe = load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])
    guider = SkipLayerGuidance(guidance_scale=3.0, skip_layer_guidance_scale=2.0, skip_layer_guidance_start=0.0,
                               skip_layer_guidance_stop=1.0,
                               skip_layer_config=[LayerSkipConfig(indices=[0], fqn="transformer_blocks"),
                                                  LayerSkipConfig(indices=[1], fqn="single_transformer_blocks")])
    skipped = guided_by(pipe, guider, [pipe.transformer.transformer_blocks[0],
                                       pipe.transformer.single_transformer_blocks[1]])
    expected = pipe(prompt=PROMPT, negative_prompt_embeds=negative_embeds(pipe), guidance_scale=3.0,
                    num_inference_steps=STEPS, width=64, height=64, generator=torch.Generator("cpu").manual_seed(SEED),
                    output_type="pt").images
    assert any(skipped)
    cfg = nodes["DS_CFGGuider"].execute(positive=klein_graph.encode(PROMPT), negative=klein_graph.encode(NEGATIVE),
                                        cfg=3.0)[0]
    slg = nodes["DS_SkipLayerGuidance"].execute(guider=cfg, layers="0, single.1", scale=2.0, start_percent=0.0,
                                                end_percent=1.0)[0]
    image = klein_graph.decode(klein_graph.denoise(slg, klein_graph.default_scheduler, klein_graph.empty(), seed=SEED,
                                                   steps=STEPS))
    assert torch.equal(bchw(image), expected)


# ---- Flux.2 dev: Mistral 3 text encoder, guidance embedded, no CFG -----------------------------------------------
@pytest.fixture(scope="module")
def dev_graph(nodes):
    return Graph(nodes, "diffusers/tiny-flux2-dev")


@pytest.fixture(scope="module")
def dev_pipe(models_root):
    return load_pipeline("Flux2Pipeline", models_root["flux2_dev_folder"])


def test_flux2_dev_encode_matches_pipeline(dev_graph, dev_pipe):
    """BFL's system message, the chat template, layers 10, 20 and 30 of Mistral 3 side by side."""
    cond = dev_graph.encode(PROMPT)
    with torch.no_grad():
        embeds, _ = dev_pipe.encode_prompt(PROMPT, device="cpu")
    assert cond.embeds.shape == (1, 512, 72) and torch.equal(cond.embeds, embeds)


@pytest.mark.parametrize("width, height, batch, guidance", [(64, 64, 1, None), (96, 64, 2, 2.5)])
def test_flux2_dev_txt2img_matches_pipeline(dev_graph, dev_pipe, nodes, width, height, batch, guidance):
    """Flux Guidance sets the embedded guidance (the pipeline's guidance_scale; without it, its default 4)."""
    positive = dev_graph.encode(PROMPT)
    if guidance is not None:
        positive = nodes["DS_FluxGuidance"].execute(conditioning=positive, guidance=guidance)[0]
    guider = nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0]
    latent = dev_graph.denoise(guider, dev_graph.default_scheduler, dev_graph.empty(width, height, batch), seed=SEED,
                               steps=4)
    ref = dev_pipe(prompt=PROMPT, guidance_scale=4.0 if guidance is None else guidance, num_inference_steps=4,
                   width=width, height=height, num_images_per_prompt=batch,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(dev_graph.decode(latent)), ref)


def test_flux2_dev_transformer_file_equals_the_folder(nodes, dev_graph):
    """flux2_dev (BFL layout, with the guidance embedding) with the folder's text encoder and VAE ≡ the folder."""
    from test_component_files import image, same_scheduler

    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-flux2-dev.safetensors",
                                                                 dtype="fp32")
    assert denoiser.module.config.guidance_embeds
    split = Graph(nodes, None, (denoiser, dev_graph.text_encoder, dev_graph.vae, scheduler))
    assert same_scheduler(scheduler, dev_graph.default_scheduler)
    assert torch.equal(image(split, cfg=1.0), image(dev_graph, cfg=1.0))


def test_flux2_dev_and_klein_prompts_do_not_mix(dev_graph, klein_graph, nodes):
    """Both are Flux.2, but their text encoders differ: a klein prompt into dev is refused by its width."""
    guider = nodes["DS_CFGGuider"].execute(positive=klein_graph.encode(PROMPT), cfg=1.0)[0]
    with pytest.raises(StageError, match="guider: the prompt embedding is 48 wide but this Flux2Transformer2DModel "
                                         "expects 72 .the text encoder of another Flux.2 model"):
        dev_graph.denoise(guider, dev_graph.default_scheduler, dev_graph.empty())


def test_flux2_dev_split_files_equal_the_folder(nodes, dev_graph):
    """flux2_dev (BFL layout) and mistral_3_small_flux2 (Llama-style names, pruned to the 30 layers Flux.2 reads, its
    tekken tokenizer inside: the folder's tokenizer is used) with the folder's VAE ≡ the folder (the VAE file is
    klein's test); in fresh memory."""
    from test_component_files import image

    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-flux2-dev.safetensors",
                                                                 dtype="fp32")
    text_encoder = nodes["DS_LoadTextEncoders"].execute(family="flux2", llm="tiny-mistral-3-small-flux2.safetensors",
                                                        dtype="fp32")[0]
    assert len(text_encoder.parts[0].module.layers) == 30  # pruned: hidden state 30 is layer 29's output, not normed
    split = Graph(nodes, None, (denoiser, text_encoder, dev_graph.vae, scheduler))
    assert torch.equal(split.encode(PROMPT).embeds, dev_graph.encode(PROMPT).embeds)
    assert torch.equal(image(split, cfg=1.0), image(dev_graph, cfg=1.0))


def test_flux2_mistral_tokenizer_missing_offline_says_where_to_put_one(models_root):
    from safetensors.torch import load_file

    from diffusers_stages.engine.errors import InputError
    from diffusers_stages.engine.text_files import mistral3_part

    with pytest.raises(InputError, match="no Mistral tokenizer was found .*models/text_encoders/mistral_tokenizer"):
        mistral3_part(load_file(models_root["flux2_dev_mistral"]), torch.float32, [], "llm")


def test_flux2_dev_lora_matches_the_pipeline(nodes, models_root, dev_graph):
    """An ai-toolkit LoRA (BFL names) on Flux.2 dev, through Flux2Pipeline's load_lora_weights."""
    import os

    from test_lora import with_loras

    graph = with_loras(dev_graph, (os.path.basename(models_root["flux2_dev_lora_ai_toolkit"]), 0.7, 1.0))
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), cfg=1.0)[0]
    ours = bchw(graph.decode(graph.denoise(guider, graph.default_scheduler, graph.empty(96, 64, 2), seed=SEED,
                                           steps=4)))
    pipe = load_pipeline("Flux2Pipeline", models_root["flux2_dev_folder"])
    pipe.load_lora_weights(models_root["flux2_dev_lora_ai_toolkit"], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[0.7])
    ref = pipe(prompt=PROMPT, guidance_scale=4.0, num_inference_steps=4, width=96, height=64, num_images_per_prompt=2,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)
