"""SD3: our node graph against StableDiffusion3Pipeline and its img2img (torch.equal); T5 optional; SLG."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

SEED = 5
PROMPT = "a photo of a blue bird"


@pytest.fixture(scope="module")
def sd3_graph(nodes):
    return Graph(nodes, "diffusers/tiny-sd3")


@pytest.fixture(scope="module")
def sd3_pipe(models_root):
    return load_pipeline("StableDiffusion3Pipeline", models_root["sd3_folder"])


def run_pipe(pipe, output_type="pt", steps=4, batch=1, width=64, height=64, **kwargs):
    return pipe(PROMPT, negative_prompt="blurry", num_inference_steps=steps, guidance_scale=5.0, width=width,
                height=height, num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(SEED),
                output_type=output_type, **kwargs).images


def test_sd3_encode_matches_pipeline(sd3_graph, sd3_pipe):
    cond = sd3_graph.encode(PROMPT)
    with torch.no_grad():
        embeds, _, pooled, _ = sd3_pipe.encode_prompt(PROMPT, PROMPT, PROMPT, device="cpu",
                                                      do_classifier_free_guidance=False)
    assert torch.equal(sd3_graph.denoiser.family.sequence(sd3_graph.denoiser, cond, cond.embeds), embeds)
    assert torch.equal(cond.pooled, pooled)


@pytest.mark.parametrize("batch, width, height", [(1, 64, 64), (2, 96, 64)])
def test_sd3_txt2img_matches_pipeline(sd3_graph, sd3_pipe, batch, width, height):
    latent, image = sd3_graph.txt2img(prompt=PROMPT, negative="blurry", sampler="model default",
                                      schedule="model default", seed=SEED, cfg=5.0, batch=batch, width=width,
                                      height=height)
    ref = run_pipe(sd3_pipe, batch=batch, width=width, height=height)
    assert torch.equal(bchw(image), ref)


def test_sd3_skip_layer_guidance_matches_pipeline(sd3_graph, sd3_pipe):
    guider = sd3_graph.guider(PROMPT, "blurry", cfg=5.0)
    slg = sd3_graph.nodes["DS_SkipLayerGuidance"].execute(guider=guider, layers="1, 2", scale=2.8,
                                                          start_percent=0.0, end_percent=0.5)[0]
    latent = sd3_graph.denoise(slg, sd3_graph.default_scheduler, sd3_graph.empty(), seed=SEED, steps=10)
    ref = run_pipe(sd3_pipe, steps=10, skip_guidance_layers=[1, 2], skip_layer_guidance_scale=2.8,
                   skip_layer_guidance_start=0.0, skip_layer_guidance_stop=0.5)
    assert torch.equal(bchw(sd3_graph.decode(latent)), ref)
    plain = sd3_graph.denoise(guider, sd3_graph.default_scheduler, sd3_graph.empty(), seed=SEED, steps=10)
    assert not torch.equal(plain["samples"], latent["samples"])  # the extra call changes the result


def test_sd3_img2img_matches_pipeline(sd3_graph, sd3_pipe):
    from diffusers import StableDiffusion3Img2ImgPipeline

    torch.manual_seed(8)
    raw = sd3_graph.encode_image(torch.rand(1, 64, 64, 3))
    latent = sd3_graph.denoise(sd3_graph.guider(PROMPT, "blurry", cfg=5.0), sd3_graph.default_scheduler, raw,
                               seed=SEED, steps=5, denoise=0.6)
    pipe = StableDiffusion3Img2ImgPipeline(**sd3_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    denoiser = sd3_graph.denoiser
    scaled = (raw["samples"] - denoiser.latent_shift) * denoiser.latent_scale  # as the pipeline scales its latents
    ref = pipe(PROMPT, negative_prompt="blurry", image=scaled, strength=0.6, num_inference_steps=5,
               guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(sd3_graph.decode(latent)), ref)


def test_sd3_without_t5_matches_pipeline(nodes, models_root):
    folder = os.path.join(models_root["root"], "diffusers", "tiny-sd3-no-t5")
    if not os.path.isdir(folder):
        shutil.copytree(models_root["sd3_folder"], folder,
                        ignore=shutil.ignore_patterns("text_encoder_3", "tokenizer_3"))
    graph = Graph(nodes, "diffusers/tiny-sd3-no-t5")
    assert len(graph.text_encoder.parts) == 2
    pipe = load_pipeline("StableDiffusion3Pipeline", models_root["sd3_folder"], text_encoder_3=None,
                         tokenizer_3=None)
    _, image = graph.txt2img(prompt=PROMPT, negative="blurry", sampler="model default", schedule="model default",
                             seed=SEED, cfg=5.0)
    assert torch.equal(bchw(image), run_pipe(pipe))


def test_sd3_refusals(sd3_graph, sd1_graph, nodes):
    with pytest.raises(StageError, match="not a multiple of 16"):
        nodes["DS_EmptyLatent"].execute(denoiser=sd3_graph.denoiser, width=64, height=72, batch_size=1)
    with pytest.raises(StageError, match="skip-layer guidance skips a DiT.s transformer blocks"):
        nodes["DS_SkipLayerGuidance"].execute(guider=sd1_graph.guider("a", ""), layers="1", scale=2.8)
    with pytest.raises(StageError, match="layers"):
        nodes["DS_SkipLayerGuidance"].execute(guider=sd3_graph.guider("a", ""), layers="seven", scale=2.8)
    with pytest.raises(StageError, match="encoded by a Stable Diffusion 3 text encoder, "
                                           "but the denoiser is Stable Diffusion 1.x/2.x"):
        sd1_graph.denoise(sd3_graph.guider("a", ""), sd1_graph.default_scheduler, sd1_graph.empty())


@pytest.mark.parametrize("sampler, scheduler_class, settings", [
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("uni_pc_bh2", "UniPCMultistepScheduler", {"solver_type": "bh2"}),
])
def test_sd3_multistep_flow_samplers_match_pipeline(sd3_graph, sd3_pipe, sampler, scheduler_class, settings):
    """DPM++ 2M and UniPC in diffusers' flow mode (use_flow_sigmas, flow_shift = the model's shift) as the pipeline's
    scheduler."""
    import diffusers

    latent, image = sd3_graph.txt2img(prompt=PROMPT, negative="blurry", sampler=sampler, schedule="model default",
                                      seed=SEED, cfg=5.0, steps=6)
    shipped = sd3_pipe.scheduler
    sd3_pipe.scheduler = getattr(diffusers, scheduler_class).from_config(
        shipped.config, use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shipped.config.shift,
        **settings)
    try:
        ref = run_pipe(sd3_pipe, steps=6)
    finally:
        sd3_pipe.scheduler = shipped
    assert torch.equal(bchw(image), ref)
