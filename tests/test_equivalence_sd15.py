"""Our node graph against the diffusers SD pipelines, in one process: torch.equal on latents and images.

The reference schedulers are built here from diffusers directly (not through our mapping),
so these tests check both the loop and the ComfyUI-name -> diffusers mapping.
"""

from __future__ import annotations

import os

import diffusers
import pytest
import torch
from conftest import Graph, bchw, load_pipeline

SEED = 1234


def reference_scheduler(pipe, sampler: str, schedule: str, seed: int):
    """The diffusers scheduler a diffusers user would configure for a ComfyUI sampler/schedule."""
    base = dict(pipe.shipped_scheduler.config)  # tests swap pipe.scheduler; start from what the model ships
    if sampler == "model default":
        return pipe.shipped_scheduler.__class__.from_config(base)
    classes = {
        "euler": ("EulerDiscreteScheduler", {}),
        "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
        "heun": ("HeunDiscreteScheduler", {}),
        "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
        "lms": ("LMSDiscreteScheduler", {}),
        "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "dpmpp_sde": ("DPMSolverSDEScheduler", {"noise_sampler_seed": seed}),
        "ddim": ("DDIMScheduler", {"set_alpha_to_one": False}),
        "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
        "deis": ("DEISMultistepScheduler", {}),
    }
    schedules = {
        "normal": {"timestep_spacing": "linspace"},
        "karras": {"use_karras_sigmas": True, "timestep_spacing": "linspace"},
        "exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
        "simple": {"timestep_spacing": "trailing"},
        "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
    }
    name, settings = classes[sampler]
    return getattr(diffusers, name).from_config({**base, **settings, **schedules[schedule]})


def run_pipe(pipe, sampler="euler", schedule="normal", prompt="a photo of a cat", negative="blurry", steps=4,
             width=64, height=64, batch=1, cfg=7.5, rescale=0.0, seed=SEED, output_type="pt", **kwargs):
    pipe.scheduler = reference_scheduler(pipe, sampler, schedule, seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, negative_prompt=negative, num_inference_steps=steps, width=width, height=height,
                num_images_per_prompt=batch, guidance_scale=cfg, guidance_rescale=rescale, generator=generator,
                output_type=output_type, **kwargs).images


def assert_same_run(graph: Graph, pipe, **settings):
    latent, image = graph.txt2img(seed=SEED, **settings)
    ref_latents = run_pipe(pipe, output_type="latent", **settings)
    assert torch.equal(latent["samples"], ref_latents / pipe.vae.config.scaling_factor)
    ref_image = run_pipe(pipe, **settings)
    assert torch.equal(bchw(image), ref_image)
    assert image.std() > 0.01  # a real picture of noise, not a constant


@pytest.mark.parametrize("sampler, schedule", [
    ("model default", "model default"),  # PNDM, as the SD1.5 release ships it
    ("euler", "normal"),
    ("euler_ancestral", "normal"),  # ancestral: step noise from the seeded generator
    ("dpmpp_2m", "karras"),
    ("dpmpp_2m_sde", "karras"),  # SDE: step noise from the seeded generator
    ("dpmpp_sde", "normal"),  # SDE on a Brownian tree seeded by the seed
    ("ddim", "ddim_uniform"),
    ("uni_pc", "exponential"),
    ("heun", "simple"),
    ("dpm_2_ancestral", "normal"),
    ("lms", "normal"),
    ("deis", "normal"),
])
def test_txt2img_matches_pipeline(sd1_graph, sd1_pipe, sampler, schedule):
    assert_same_run(sd1_graph, sd1_pipe, sampler=sampler, schedule=schedule)


def test_guidance_rescale_batch_and_non_square(sd1_graph, sd1_pipe):
    assert_same_run(sd1_graph, sd1_pipe, sampler="euler_ancestral", schedule="normal", rescale=0.7, batch=2,
                    width=96, height=64)


def test_no_cfg_at_scale_one(sd1_graph, sd1_pipe):
    assert_same_run(sd1_graph, sd1_pipe, cfg=1.0)


def test_v_prediction_model(nodes, models_root):
    graph = Graph(nodes, "diffusers/tiny-sd2-v")
    pipe = load_pipeline("StableDiffusionPipeline", models_root["sd2_folder"])
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    for sampler, schedule in (("model default", "model default"), ("euler", "karras")):
        assert_same_run(graph, pipe, sampler=sampler, schedule=schedule, rescale=0.7)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_img2img_matches_pipeline(sd1_graph, sd1_pipe, sampler):
    from diffusers import StableDiffusionImg2ImgPipeline

    torch.manual_seed(7)
    image = torch.rand(1, 64, 96, 3)  # a ComfyUI IMAGE
    raw = sd1_graph.encode_image(image)
    guider = sd1_graph.guider("a photo of a cat", "blurry")
    latent = sd1_graph.denoise(guider, sd1_graph.scheduler(sampler, "normal"), raw, seed=SEED, steps=5, denoise=0.6)
    ours = sd1_graph.decode(latent)

    pipe = StableDiffusionImg2ImgPipeline(**sd1_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.shipped_scheduler = sd1_pipe.shipped_scheduler
    # Our VAE Encode gives the posterior's mode, as core ComfyUI does; the pipeline would sample the posterior
    # with the seed. So it gets the same encoded latents, scaled as it scales them itself.
    scaled = raw["samples"] * pipe.vae.config.scaling_factor
    for output_type in ("latent", "pt"):
        pipe.scheduler = reference_scheduler(sd1_pipe, sampler, "normal", SEED)
        ref = pipe("a photo of a cat", negative_prompt="blurry", image=scaled, strength=0.6, num_inference_steps=5,
                   guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(SEED),
                   output_type=output_type).images
        if output_type == "latent":
            assert torch.equal(latent["samples"], ref / pipe.vae.config.scaling_factor)
        else:
            assert torch.equal(bchw(ours), ref)


def pictures(count: int, height: int, width: int, seed: int):
    """(PIL pictures, the same as a ComfyUI IMAGE batch, as Load Image makes it from the file)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    return [Image.fromarray(p) for p in pixels], torch.from_numpy(pixels.astype(np.float32) / 255.0)


def test_vae_encode_is_posterior_mode(sd1_graph, sd1_pipe):
    """The posterior's mode of the picture exactly as the pipeline's image processor hands a PIL picture to the VAE
    (channels-last memory, as a ComfyUI IMAGE moved to channels-first: CPU convolutions round differently by memory
    layout, so the layout is kept, not made contiguous)."""
    pil, image = pictures(2, 64, 64, 3)
    ours = sd1_graph.encode_image(image)["samples"]
    with torch.no_grad():
        ref = sd1_pipe.vae.encode(sd1_pipe.image_processor.preprocess(pil)).latent_dist.mode()
    assert torch.equal(ours, ref)


def test_single_file_and_folder_give_identical_outputs(nodes, sd1_graph):
    single = Graph(nodes, "checkpoints/tiny-sd15.safetensors")
    for sampler, schedule in (("euler_ancestral", "normal"), ("dpmpp_2m", "karras")):
        folder_latent, folder_image = sd1_graph.txt2img(sampler=sampler, schedule=schedule, seed=5)
        file_latent, file_image = single.txt2img(sampler=sampler, schedule=schedule, seed=5)
        assert torch.equal(folder_latent["samples"], file_latent["samples"])
        assert torch.equal(folder_image, file_image)
    assert single.default_scheduler == sd1_graph.default_scheduler


def test_cfg_interval_matches_dynamic_cfg_recipe(sd1_graph, sd1_pipe):
    """CFG only in the first half of the steps == diffusers' documented dynamic-CFG callback."""
    latent = sd1_graph.denoise(sd1_graph.guider("a photo of a cat", "blurry", end=0.5),
                               sd1_graph.scheduler("euler", "normal"), sd1_graph.empty(), seed=SEED, steps=4)

    def stop_cfg_after_half(pipe, step, timestep, callback_kwargs):
        if step == 1:  # steps 0 and 1 of 4 are guided
            pipe._guidance_scale = 0.0
            callback_kwargs["prompt_embeds"] = callback_kwargs["prompt_embeds"].chunk(2)[-1]
        return callback_kwargs

    ref = run_pipe(sd1_pipe, output_type="latent", callback_on_step_end=stop_cfg_after_half,
                   callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert torch.equal(latent["samples"], ref / sd1_pipe.vae.config.scaling_factor)
    unguided_tail = sd1_graph.denoise(sd1_graph.guider("a photo of a cat", "blurry"),
                                      sd1_graph.scheduler("euler", "normal"), sd1_graph.empty(), seed=SEED, steps=4)
    assert not torch.equal(latent["samples"], unguided_tail["samples"])


def test_sd2_single_file_matches_its_folder(nodes):
    """SD2 layout: OpenCLIP text encoder with fused attention and the extra 24th-style block, v-prediction."""
    folder = Graph(nodes, "diffusers/tiny-sd2-v")
    single = Graph(nodes, "checkpoints/tiny-sd2-v.safetensors")
    assert dict(single.default_scheduler.config)["prediction_type"] == "v_prediction"  # auto: SD2 -> v
    for sampler, schedule in (("model default", "model default"), ("euler_ancestral", "normal")):
        folder_latent, folder_image = folder.txt2img(sampler=sampler, schedule=schedule, seed=9)
        file_latent, file_image = single.txt2img(sampler=sampler, schedule=schedule, seed=9)
        assert torch.equal(folder_latent["samples"], file_latent["samples"])
        assert torch.equal(folder_image, file_image)


def test_repo_id_loads_from_the_local_cache_offline(nodes, models_root, tmp_path, monkeypatch):
    """A repo id found in the Hugging Face cache loads with no network (HF_HUB_OFFLINE=1 in these tests)."""
    import shutil

    import huggingface_hub.constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sd15"
    shutil.copytree(models_root["sd1_folder"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    denoiser, text_encoder, vae, scheduler = nodes["DS_LoadModel"].execute(
        model="", repo_id="tiny-org/tiny-sd15", dtype="fp32")
    folder = Graph(nodes, "diffusers/tiny-sd15")
    pairs = ((denoiser.module, folder.denoiser.module), (vae.module, folder.vae.module),
             (text_encoder.modules[0], folder.text_encoder.modules[0]))
    for a, b in pairs:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert scheduler == folder.default_scheduler


def test_tiled_vae_decode(sd1_graph):
    """Tiled decoding (diffusers' tiled_decode, tiles of the VAE's sample size) for latents larger than a tile."""
    torch.manual_seed(11)
    latent = {"samples": torch.randn(1, 4, 24, 32)}  # 192x256 px: several 64 px tiles
    plain = sd1_graph.nodes["DS_VAEDecode"].execute(vae=sd1_graph.vae, samples=latent, tiled=False)[0]
    tiled = sd1_graph.nodes["DS_VAEDecode"].execute(vae=sd1_graph.vae, samples=latent, tiled=True)[0]
    assert tiled.shape == plain.shape == (1, 192, 256, 3)
    assert not torch.equal(tiled, plain)  # blended tile seams differ
    assert (tiled - plain).abs().mean() < 0.1  # but it is the same picture
    with torch.no_grad():
        expected = sd1_graph.vae.module.tiled_decode(latent["samples"], return_dict=False)[0]
    assert torch.equal(tiled, (expected / 2 + 0.5).clamp(0, 1).movedim(1, -1))


def test_guidance_distilled_unet_matches_pipeline(nodes, models_root, tmp_path):
    """An LCM-distilled UNet (time_cond_proj_dim) takes the guidance scale as an embedding, never a CFG batch."""
    from diffusers import LCMScheduler, UNet2DConditionModel

    from diffusers_stages.tiny.models import build_sd_pipeline

    pipe = build_sd_pipeline("sd1")
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(**{**pipe.unet.config, "time_cond_proj_dim": 32})
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    folder = os.path.join(models_root["root"], "diffusers", "tiny-sd15-lcm")
    if not os.path.isdir(folder):
        pipe.save_pretrained(folder, safe_serialization=True)
    pipe = load_pipeline("StableDiffusionPipeline", folder)
    graph = Graph(nodes, "diffusers/tiny-sd15-lcm")
    latent, image = graph.txt2img(sampler="model default", schedule="model default", seed=SEED, cfg=8.0)
    ref = pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=8.0, width=64,
               height=64, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(image), ref)
    from diffusers_stages.engine.errors import StageError

    apg = nodes["DS_APGGuider"].execute(positive=graph.encode("a cat"), negative=graph.encode("blurry"), cfg=8.0)[0]
    with pytest.raises(StageError, match="guider: AdaptiveProjectedGuidance guides with predictions besides the "
                                         "positive one, which this guidance-distilled model"):
        graph.denoise(apg, graph.default_scheduler, graph.empty())
