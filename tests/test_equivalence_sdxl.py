"""SDXL: our node graph against StableDiffusionXLPipeline / StableDiffusionXLImg2ImgPipeline (torch.equal)."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline
from test_equivalence_sd15 import reference_scheduler

SEED = 77


@pytest.fixture(scope="module")
def sdxl_graph(nodes):
    return Graph(nodes, "diffusers/tiny-sdxl")


@pytest.fixture(scope="module")
def sdxl_pipe(models_root):
    return load_pipeline("StableDiffusionXLPipeline", models_root["sdxl_folder"])


def run_pipe(pipe, sampler, schedule, output_type, batch=1, width=64, height=64, rescale=0.0, **kwargs):
    pipe.scheduler = reference_scheduler(pipe, sampler, schedule, SEED)
    # negative_prompt "" (not None): ComfyUI encodes the empty prompt instead of zeroing it
    return pipe("a photo of a cat", negative_prompt="", num_inference_steps=4, width=width, height=height,
                num_images_per_prompt=batch, guidance_scale=6.0, guidance_rescale=rescale,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type=output_type, **kwargs).images


@pytest.mark.parametrize("sampler, schedule", [
    ("model default", "model default"),  # Euler, leading spacing, as SDXL base ships
    ("euler_ancestral", "normal"),
    ("dpmpp_2m_sde", "karras"),
    ("heun", "normal"),
])
def test_sdxl_txt2img_matches_pipeline(sdxl_graph, sdxl_pipe, sampler, schedule):
    latent, image = sdxl_graph.txt2img(prompt="a photo of a cat", negative="", sampler=sampler, schedule=schedule,
                                       seed=SEED, cfg=6.0)
    ref = run_pipe(sdxl_pipe, sampler, schedule, "latent")
    assert torch.equal(latent["samples"], ref / sdxl_pipe.vae.config.scaling_factor)
    assert torch.equal(bchw(image), run_pipe(sdxl_pipe, sampler, schedule, "pt"))


def test_sdxl_batch_non_square_rescale(sdxl_graph, sdxl_pipe):
    latent, image = sdxl_graph.txt2img(prompt="a photo of a cat", negative="", sampler="euler_ancestral",
                                       schedule="normal", seed=SEED, cfg=6.0, batch=2, width=96, height=64,
                                       rescale=0.5)
    ref = run_pipe(sdxl_pipe, "euler_ancestral", "normal", "pt", batch=2, width=96, height=64, rescale=0.5)
    assert torch.equal(bchw(image), ref)


def test_sdxl_size_conditioning_matches_pipeline(sdxl_graph, sdxl_pipe):
    sized = sdxl_graph.nodes["DS_SizeConditioning"].execute(
        conditioning=sdxl_graph.encode("a photo of a cat"), original_width=256, original_height=128, crop_left=16,
        crop_top=8, target_width=0, target_height=0)[0]
    guider = sdxl_graph.nodes["DS_CFGGuider"].execute(positive=sized, negative=sdxl_graph.encode(""), cfg=6.0)[0]
    latent = sdxl_graph.denoise(guider, sdxl_graph.scheduler("euler", "normal"), sdxl_graph.empty(), seed=SEED)
    ref = run_pipe(sdxl_pipe, "euler", "normal", "latent", original_size=(128, 256), crops_coords_top_left=(8, 16),
                   target_size=(64, 64))
    assert torch.equal(latent["samples"], ref / sdxl_pipe.vae.config.scaling_factor)
    plain, _ = sdxl_graph.txt2img(prompt="a photo of a cat", negative="", sampler="euler", schedule="normal",
                                  seed=SEED, cfg=6.0)
    assert not torch.equal(plain["samples"], latent["samples"])  # the size conditioning reaches the UNet


def test_sdxl_img2img_matches_pipeline(sdxl_graph, sdxl_pipe):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    torch.manual_seed(5)
    raw = sdxl_graph.encode_image(torch.rand(1, 64, 64, 3))
    guider = sdxl_graph.guider("a photo of a cat", "", cfg=6.0)
    latent = sdxl_graph.denoise(guider, sdxl_graph.scheduler("euler_ancestral", "normal"), raw, seed=SEED, steps=5,
                                denoise=0.6)
    pipe = StableDiffusionXLImg2ImgPipeline(**sdxl_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = reference_scheduler(sdxl_pipe, "euler_ancestral", "normal", SEED)
    ref = pipe("a photo of a cat", negative_prompt="", image=raw["samples"] * pipe.vae.config.scaling_factor,
               strength=0.6, num_inference_steps=5, guidance_scale=6.0, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(SEED)).images
    assert torch.equal(latent["samples"], ref / pipe.vae.config.scaling_factor)


def test_sdxl_weighted_and_long_prompts_run(sdxl_graph):
    cond = sdxl_graph.encode("a (photo:1.3) of a cat, " + "many details, " * 30)
    assert cond.embeds.shape[1] % 77 == 0 and cond.embeds.shape[1] > 77 and cond.pooled.shape == (1, 32)
    guider = sdxl_graph.nodes["DS_CFGGuider"].execute(positive=cond, negative=sdxl_graph.encode(""), cfg=5.0)[0]
    latent = sdxl_graph.denoise(guider, sdxl_graph.default_scheduler, sdxl_graph.empty(), steps=2)
    assert torch.isfinite(latent["samples"]).all()


def test_sdxl_prompt_into_sd15_unet_is_refused(sdxl_graph, sd1_graph):
    from diffusers_stages.engine.errors import StageError

    guider = sdxl_graph.guider("a cat", "")
    with pytest.raises(StageError, match="encoded by a Stable Diffusion XL text encoder, "
                                           "but the denoiser is Stable Diffusion 1.x/2.x"):
        sd1_graph.denoise(guider, sd1_graph.default_scheduler, sd1_graph.empty())
    with pytest.raises(StageError, match="Stable Diffusion 1.x/2.x takes no size conditioning"):
        sdxl_graph.nodes["DS_SizeConditioning"].execute(conditioning=sd1_graph.encode("a cat"))


def test_sdxl_single_file_matches_its_folder(nodes, sdxl_graph):
    """SDXL LDM checkpoint (conditioner.embedders.0 CLIP-L, .1 OpenCLIP-G) loads offline and matches the folder."""
    single = Graph(nodes, "checkpoints/tiny-sdxl.safetensors")
    assert single.default_scheduler == sdxl_graph.default_scheduler
    for sampler, schedule in (("model default", "model default"), ("dpmpp_2m", "karras")):
        folder_latent, folder_image = sdxl_graph.txt2img(sampler=sampler, schedule=schedule, seed=3, cfg=6.0)
        file_latent, file_image = single.txt2img(sampler=sampler, schedule=schedule, seed=3, cfg=6.0)
        assert torch.equal(folder_latent["samples"], file_latent["samples"])
        assert torch.equal(folder_image, file_image)


def test_fp16_vae_with_force_upcast_decodes_in_fp32_as_the_pipeline(nodes):
    """SDXL's VAE overflows in fp16; diffusers upcasts it for decode/encode when its config says force_upcast."""
    import copy
    import dataclasses

    graph = Graph(nodes, "diffusers/tiny-sdxl")
    half = dataclasses.replace(graph.vae, module=copy.deepcopy(graph.vae.module).half())
    full = dataclasses.replace(graph.vae, module=copy.deepcopy(half.module).float())
    assert half.module.config.force_upcast
    torch.manual_seed(3)
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    decode, encode = nodes["DS_VAEDecode"], nodes["DS_VAEEncode"]
    assert torch.equal(decode.execute(vae=half, samples=latent)[0], decode.execute(vae=full, samples=latent)[0])
    image = torch.rand(1, 64, 64, 3)
    assert torch.equal(encode.execute(vae=half, pixels=image)[0]["samples"],
                       encode.execute(vae=full, pixels=image)[0]["samples"])
    assert half.module.dtype == torch.float16  # back to half after the call
